import pytest

from rlsd.config import config_from_dict
from rlsd.demo.arms import ARMS, STUDY_ARMS
from rlsd.demo.arms import arm_config
from rlsd.demo.study import first_reach, summarize, summary_text


@pytest.mark.parametrize("arm", list(ARMS))
def test_every_arm_is_a_valid_config(tmp_path, arm):
    cfg = config_from_dict(arm_config(arm, 3, str(tmp_path / "m"), str(tmp_path), str(tmp_path / "r"), 50, 10, "hf"))
    cfg.validate()
    assert cfg.train.ppo_mini_batch_size == 4 and cfg.train.prompts_per_step == 16 and cfg.train.seed == 3
    a, t = cfg.algo, cfg.teacher
    if arm.startswith("rlsd-authors"):  # their example script: lam 0.5 -> 0 over 60 steps, re-sync every 20
        assert (a.loss.lam, a.lam_schedule, a.lam_warmup_steps, a.lam_decay_steps, a.loss.eps_w) == (0.5, "warmup-decay", 0, 60, 0.2)
        assert (t.sync, t.sync_every) == ("frozen", 20)
    if arm.startswith("rlsd-decay50"):
        assert (a.loss.lam, a.lam_schedule, a.lam_end, a.lam_decay_steps) == (0.5, "linear", 0.0, 50)
        assert (t.sync, t.sync_every) == ("frozen", 10)
    if arm.startswith("opsd"):
        assert a.name == "opsd" and cfg.train.lr == (5e-5 if arm == "opsd-lr5e-5" else 1e-5)
    if arm.startswith("rlsd-live"):
        assert cfg.algo.loss.lam == 1.0 and cfg.teacher.sync == "live"
        assert cfg.algo.loss.eps_w == (float(arm.split("eps")[1]) if "eps" in arm else 0.2)
    if arm.startswith("rlsd"):
        assert cfg.teacher.source == ("answer" if arm.endswith("answer") else "solution")
    assert (arm in STUDY_ARMS) == ("eps" not in arm and "decay50" not in arm and "lr5e-5" not in arm)


def fake_runs(curves: dict) -> dict:
    """runs[arm][seed] = records with eval_accuracy at each step and a constant diagnostic."""
    return {a: {s: [{"step": t, "eval_accuracy": v, **({"credit_clip_frac": 0.1} if t else {})}
                    for t, v in c.items()] for s, c in per_seed.items()} for a, per_seed in curves.items()}


def test_summary_pairs_by_seed_and_finds_the_step_to_reach_grpo():
    steps = (0, 10, 20, 30)
    grpo = {0: dict(zip(steps, (0.2, 0.3, 0.4, 0.5))), 1: dict(zip(steps, (0.2, 0.4, 0.5, 0.6)))}
    fast = {0: dict(zip(steps, (0.2, 0.5, 0.6, 0.7))), 1: dict(zip(steps, (0.2, 0.5, 0.7, 0.7)))}
    half = {1: dict(zip(steps, (0.2, 0.2, 0.2, 0.3)))}  # seed 0 unfinished: paired with grpo on seed 1 only
    s = summarize(fake_runs({"grpo": grpo, "fast": fast, "half": half}), tail=2)
    assert s["final_steps"] == [20, 30] and s["arms"]["half"]["seeds"] == [1]
    assert s["arms"]["half"]["diff_vs_grpo"] == pytest.approx(100 * (0.25 - 0.55))
    assert s["arms"]["half"]["diff_vs_grpo_se"] == 0.0 and s["arms"]["half"]["steps_to_grpo_final"] is None
    fast_e, grpo_e = s["arms"]["fast"], s["arms"]["grpo"]
    assert grpo_e["final_mean"] == pytest.approx(100 * (0.45 + 0.55) / 2)
    # paired differences: seed 0 +20, seed 1 +15 points -> mean 17.5, se 2.5
    assert fast_e["diff_vs_grpo"] == pytest.approx(17.5) and fast_e["diff_vs_grpo_se"] == pytest.approx(2.5)
    assert fast_e["wins_vs_grpo"] == 2 and fast_e["ties_vs_grpo"] == 0
    assert fast_e["steps_to_grpo_final"] == 10 and grpo_e["steps_to_grpo_final"] == 30
    assert fast_e["steps_to_grpo_final_per_seed"] == [10, 20]
    assert fast_e["credit_clip_frac_run_mean"] == pytest.approx(0.1)
    assert "fast" in summary_text(s, {"plain": 0.2, "answer": 0.9, "solution": 0.95})


def test_first_reach():
    assert first_reach({0: 0.1, 10: 0.5, 20: 0.4}, 0.45) == 10
    assert first_reach({0: 0.1, 10: 0.2}, 0.45) is None


def test_demo_runs_are_study_runs():
    """The demo runs seeds of the study's arms (both build their configs with arms.arm_config)."""
    from rlsd.demo.arms import STUDY_ARMS
    from rlsd.demo.experiment import METHODS
    assert set(METHODS) <= set(STUDY_ARMS)


def test_demo_summary_with_fewer_evaluations_than_its_tail():
    from rlsd.demo.experiment import summarize as demo_summary
    table, summary = demo_summary({"grpo": {0: {0: 0.5, 2: 0.6}}, "opsd": {0: {0: 0.5, 2: 0.4}}}, 0.5, tail=3)
    assert summary["opsd"]["diff_vs_grpo"] == pytest.approx(-10.0) and "steps 0-2" in table


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_harder_sums_fit_their_response_budget_and_the_model(k):
    """--terms k: the longest worked solution of a k-number sum (and EOS) fits response_tokens(k),
    and the longest teacher context plus that budget fits the tiny model's positions."""
    import random

    from rlsd.demo.task import TEMPLATES, make_problem, response_tokens
    from rlsd.demo.tiny import char_tokenizer
    from rlsd.demo.task import ALPHABET

    tok = char_tokenizer(ALPHABET)
    problems = [make_problem(random.Random(s), k) for s in range(300)]
    longest = max(len(tok(e.solution)["input_ids"]) + 1 for e in problems)
    assert longest <= response_tokens(k) and response_tokens(3) == 32
    context = max(len(tok(TEMPLATES["solution"].format(reference=e.solution, prompt=e.prompt))["input_ids"])
                  for e in problems)
    assert context + response_tokens(k) <= 128  # tiny_qwen3's max_len


def test_study_runs_take_the_harder_sums_budget(tmp_path):
    from rlsd.demo.task import response_tokens

    extra = {"rollout": {"max_new_tokens": response_tokens(4)}}
    cfg = config_from_dict(arm_config("grpo", 0, str(tmp_path / "m"), str(tmp_path), str(tmp_path / "r"), 50, 10,
                                      "hf", extra))
    assert cfg.rollout.max_new_tokens == 44 and cfg.rollout.n == 8


def regime_records(points: dict, clip=None) -> list:
    """metrics.jsonl records with eval_accuracy at the given steps (and a constant clip diagnostic)."""
    return [{"step": t, "eval_accuracy": v, **({"credit_clip_frac": clip, "credited_frac": 0.5} if clip and t else {})}
            for t, v in points.items()]


def test_run_scores_final_auc_reach_and_both_clip_denominators():
    from rlsd.demo.regimes import run_scores, threshold
    assert threshold(0.4) == pytest.approx(0.6)
    records = regime_records({0: 0.4, 5: 0.5, 10: 0.7, 15: 0.8, 20: 0.8}, clip=0.04)
    s = run_scores(records, 0.6, steps=20, tail=2)
    assert s.final == pytest.approx(80.0) and s.reach == 10
    # trapezoids: (0.45 + 0.6 + 0.75 + 0.8) * 5 / 20
    assert s.auc == pytest.approx(100 * (0.45 + 0.6 + 0.75 + 0.8) / 4)
    assert s.clip_credited == pytest.approx(4.0) and s.clip_all == pytest.approx(2.0)
    assert run_scores(records, 0.9, 20, 2).reach is None and run_scores(records, 0.9, 20, 2).clip_credited == 4.0
    with pytest.raises(ValueError, match="evaluations at steps 0 and 30"):
        run_scores(records, 0.6, steps=30, tail=2)


def test_paired_interval_and_minimum_detectable_effect():
    from scipy import stats
    from rlsd.demo.regimes import paired
    d = [1.0, 2.0, 0.0, 1.0, -1.0, 0.0, 3.0, 2.0]
    p = paired(d)
    se = stats.tstd(d) / 8 ** 0.5
    assert p.mean == pytest.approx(1.0) and p.hi - p.mean == pytest.approx(stats.t.ppf(0.975, 7) * se)
    assert p.mde == pytest.approx((2.3646 + 0.8960) * se, rel=1e-3)
    assert (p.wins, p.ties, p.losses) == (5, 2, 1)
    assert p.p == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)


def test_holm_adjustment():
    """Holm on three p-values: sorted 0.01, 0.02, 0.04 -> 0.03, 0.04, 0.04 (monotone), capped at 1."""
    from rlsd.demo.regimes import holm
    assert holm({"a": 0.04, "b": 0.01, "c": 0.02}) == pytest.approx({"a": 0.04, "b": 0.03, "c": 0.04})
    assert holm({"a": 0.6, "b": 0.5}) == pytest.approx({"a": 1.0, "b": 1.0})
    assert holm({"a": 0.03}) == pytest.approx({"a": 0.03})


def test_regime_summary_pairs_by_seed_and_censors_unreached_runs():
    from rlsd.demo.regimes import summarize_strength
    up = {0: 0.4, 5: 0.7, 10: 0.8}
    flat = {0: 0.4, 5: 0.4, 10: 0.5}
    runs = {"grpo": {0: regime_records(flat), 1: regime_records(flat), 2: regime_records(up)},
            "rlsd-authors-trace": {0: regime_records(up, clip=0.02), 1: regime_records(up, clip=0.02),
                                   2: regime_records(up, clip=0.02)}}
    reg = summarize_strength(runs, 0.4, steps=10, eval_every=5, tail=1)
    assert reg["threshold"] == pytest.approx(60.0)
    e = reg["arms"]["rlsd-authors-trace"]
    assert e.vs_grpo["final"].mean == pytest.approx(100 * 0.3 * 2 / 3)
    assert (e.vs_grpo["final"].wins, e.vs_grpo["final"].ties) == (2, 1)
    # grpo seeds 0 and 1 never reach 60%: censored at steps + eval_every = 15; rlsd reaches it at 5
    assert e.vs_grpo["reach"].mean == pytest.approx((-10 - 10 + 0) / 3)
    assert reg["arms"]["grpo"].reached == 1 and e.reached == 3 and e.clip_all == pytest.approx(1.0)


def test_shipped_warm_start_checks_its_sha256(tmp_path):
    import json
    from rlsd.demo.shipped import WarmStartError, closest, sha256_file, shipped_warm_start
    assert closest({50: 0.1, 100: 0.28, 150: 0.33, 200: 0.9}, {"a": 0.3, "b": 0.87}) == {"a": 100, "b": 200}
    (tmp_path / "weak").mkdir()
    (tmp_path / "weak" / "model.safetensors").write_bytes(b"weights")
    entry = {"step": 100, "accuracy": {"plain": 0.3}, "sha256": sha256_file(str(tmp_path / "weak" / "model.safetensors"))}
    (tmp_path / "manifest.json").write_text(json.dumps({"curve": {}, "config": {}, "warm_starts": {"weak": entry}}))
    path, info = shipped_warm_start("weak", str(tmp_path))
    assert path == str(tmp_path / "weak") and info["step"] == 100
    with pytest.raises(WarmStartError, match="unknown warm start 'w99'"):
        shipped_warm_start("w99", str(tmp_path))
    (tmp_path / "weak" / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(WarmStartError, match="sha256"):
        shipped_warm_start("weak", str(tmp_path))


def test_the_shipped_warm_starts_match_their_manifest():
    """Every checkpoint in the repository loads with the sha256 its manifest records."""
    from rlsd.demo.shipped import DEMO, TARGETS, manifest, shipped_warm_start
    m = manifest()
    assert set(m["warm_starts"]) == set(TARGETS) and DEMO in TARGETS
    for name in TARGETS:
        path, info = shipped_warm_start(name)
        assert abs(info["accuracy"]["plain"] - TARGETS[name]) < 0.15, name


def test_summary_counts_ties_apart_from_losses():
    steps = (0, 10)
    grpo = {0: {0: 0.2, 10: 0.5}, 1: {0: 0.2, 10: 0.5}}
    same = {0: {0: 0.2, 10: 0.5}, 1: {0: 0.2, 10: 0.4}}
    e = summarize(fake_runs({"grpo": grpo, "same": same}), tail=1)["arms"]["same"]
    assert (e["wins_vs_grpo"], e["ties_vs_grpo"]) == (0, 1)
    assert "0/1/1" in summary_text(summarize(fake_runs({"grpo": grpo, "same": same}), tail=1),
                                   {"plain": 0.2, "answer": 0.9, "solution": 0.95})


def test_regimes_command_reports_from_the_shipped_warm_starts(tmp_path):
    import json
    from rlsd.cli import main
    out = tmp_path / "out"
    assert main(["study", "--regimes", "--report-only", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["warm_starts"]) == {"weak", "middle", "good", "strong"} and summary["strengths"] == {}
    assert summary["settings"]["eval_every"] == 2 and summary["settings"]["steps"] == 20
    assert "opsd-lr5e-5" in summary["settings"]["arms"]
    with pytest.raises(SystemExit, match="unknown warm starts"):
        main(["study", "--regimes", "--strengths", "w99"])


def test_study_loads_the_shipped_warm_start_by_default(tmp_path):
    import json
    from rlsd.cli import main
    from rlsd.demo.shipped import DEMO, manifest
    out = tmp_path / "out"
    assert main(["study", "--report-only", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    warm = json.loads((out / "summary.json").read_text())["warm_start"]
    assert warm["fingerprint"] == manifest()["warm_starts"][DEMO]["fingerprint"]


def test_no_reach_difference_when_no_run_reaches_the_threshold():
    from rlsd.demo.regimes import summarize_strength
    flat = {0: 0.4, 5: 0.4, 10: 0.5}
    runs = {a: {s: regime_records(flat) for s in (0, 1)} for a in ("grpo", "opsd")}
    v = summarize_strength(runs, 0.4, steps=10, eval_every=5, tail=1)["arms"]["opsd"].vs_grpo
    assert set(v) == {"final", "auc"}


def test_run_jobs_marks_finished_runs_and_reports_failed_ones(tmp_path):
    """The demo's, study's and regime map's runner: a run whose config is refused fails; resumable
    runs are logged and left without a ``done`` marker (so they run again), others raise."""
    from rlsd.demo.experiment import run_jobs, write_job

    run_dir = tmp_path / "bad" / "seed0"
    (run_dir).mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("{}\n")  # an earlier attempt's
    job = write_job(str(run_dir), {"algo": {"name": "no-such-algorithm"}})
    assert not (run_dir / "metrics.jsonl").exists() and (run_dir / "config.yaml").exists()
    lines = []
    run_jobs([job], 1, lines.append, str(tmp_path), resumable=True)
    assert lines and "bad/seed0: FAILED" in lines[0] and not (run_dir / "done").exists()
    with pytest.raises(RuntimeError, match="run failed"):
        run_jobs([job], 1, lines.append, str(tmp_path), resumable=False)


@pytest.mark.parametrize("starts", [1, 2, 4])
def test_regime_plot_has_no_empty_panel(tmp_path, monkeypatch, starts):
    """With one or two warm starts the differences and clip fractions are drawn per arm (arms on
    the x-axis, every panel drawn); with three or more, against the warm start's accuracy."""
    import dataclasses
    import matplotlib.figure
    from rlsd.demo.regimes import plot_regimes, summarize_strength
    up, flat = {0: 0.4, 5: 0.7, 10: 0.8}, {0: 0.4, 5: 0.5, 10: 0.6}
    runs = {"grpo": {s: regime_records(flat) for s in range(3)},
            "rlsd-authors-trace": {s: regime_records(up, clip=0.02) for s in range(3)}}
    strengths = {}
    for name in ["weak", "middle", "good", "strong"][:starts]:
        reg = summarize_strength(runs, 0.4, steps=10, eval_every=5, tail=1)
        reg["arms"] = {a: dataclasses.asdict(e) for a, e in reg["arms"].items()}
        strengths[name] = reg
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    plot_regimes({"strengths": strengths}, str(tmp_path / "r.png"))
    visible = [ax for ax in saved[0].axes if ax.axison]
    assert all(ax.has_data() for ax in visible)
    if starts < 3:
        assert len(visible) == starts + 2
        assert [t.get_text() for t in visible[starts].get_xticklabels()] == ["rlsd-authors-trace"]
    else:
        assert len(visible) == starts + 3 and visible[starts].get_xlabel() == "warm-start held-out accuracy (%)"
