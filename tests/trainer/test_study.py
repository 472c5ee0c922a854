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
    if arm.startswith("rlsd-paper"):
        a, t = cfg.algo, cfg.teacher
        assert (a.lam, a.lam_schedule, a.lam_end, a.lam_decay_steps) == (0.5, "linear", 0.0, 50)
        assert (t.sync, t.sync_every) == ("frozen", 10)
    if arm.startswith("rlsd-live"):
        assert cfg.algo.lam == 1.0 and cfg.teacher.sync == "live"
        assert cfg.algo.eps_w == (float(arm.split("eps")[1]) if "eps" in arm else 0.2)
    if arm.startswith("rlsd"):
        assert cfg.teacher.source == ("answer" if arm.endswith("answer") else "solution")
    assert (arm in STUDY_ARMS) == ("eps" not in arm)


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
    assert fast_e["wins_vs_grpo"] == 2
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
