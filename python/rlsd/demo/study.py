"""``rlsd study``: does RLSD beat GRPO on the demo task? Every arm (arms.py) from one warm start, paired
by seed. Each run is an ``rlsd train`` subprocess (experiment.py). Results: per-step metrics of every
run (``metrics.csv``), a summary (``summary.json``, ``summary.txt``), plots, and where the credit clip
acts on one batch (``clip_anatomy.json``), written to ``--out``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import statistics
import time
from typing import Optional

from ..data import write_jsonl
from ..metrics import read_jsonl
from .anatomy import anatomy_report
from .arms import ARMS, RL, STUDY_ARMS, arm_config, merge
from .experiment import HELDOUT_SEED, TRAIN_SEED, default_engine, run_jobs, write_job
from .task import make_split, response_tokens
from .shipped import shipped_warm_start
from .warmup import WarmupConfig, deterministic, warm_start

DIAGNOSTICS = ("reward_mean", "accuracy", "credit_clip_low_frac", "credit_clip_high_frac", "credit_clip_frac",
               "delta_mean", "delta_std", "entropy_mean", "ppo_clip_frac", "approx_kl", "response_len", "lam")


# ------------------------------------------------------------------------------------ analysis
def load_runs(runs_dir: str, arms, seeds: int) -> dict:
    """``runs[arm][seed] = [record, ...]`` for the runs that finished (a metrics.jsonl with a 'done' mark)."""
    runs = {}
    for arm in arms:
        for seed in range(seeds):
            d = os.path.join(runs_dir, arm, f"seed{seed}")
            if os.path.exists(os.path.join(d, "done")):
                runs.setdefault(arm, {})[seed] = read_jsonl(os.path.join(d, "metrics.jsonl"))
    return runs


def curve(records: list, key: str = "eval_accuracy") -> dict:
    return {r["step"]: r[key] for r in records if key in r}


def mean_se(xs: list) -> tuple:
    mu = statistics.fmean(xs)
    return mu, (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0)


def first_reach(points: dict, target: float):
    """First step whose value reaches ``target`` (None if none does)."""
    return next((s for s in sorted(points) if points[s] >= target - 1e-12), None)


def summarize(runs: dict, tail: int = 3) -> dict:
    """Final accuracy (mean of the last ``tail`` evaluations), differences from GRPO paired by seed
    (the seeds both finished) with standard errors, steps to reach GRPO's final accuracy, peak and
    end (rise then decline), and each diagnostic's mean over the run; each arm over its finished seeds."""
    out = {"tail": tail, "arms": {}}
    if not runs:
        return out
    curves = {a: {s: curve(r) for s, r in runs[a].items()} for a in runs}
    steps = sorted(set.intersection(*[set(c) for a in curves for c in curves[a].values()]))
    out["eval_steps"], out["final_steps"] = steps, steps[-tail:]
    final = {a: {s: statistics.fmean(c[t] for t in steps[-tail:]) for s, c in curves[a].items()} for a in curves}
    mean_curve = {a: {t: statistics.fmean(c[t] for c in curves[a].values()) for t in steps} for a in curves}
    grpo_final = statistics.fmean(final["grpo"].values()) if "grpo" in final else None
    for a in curves:
        seeds = sorted(curves[a])
        vals = [100 * v for v in final[a].values()]
        mu, se = mean_se(vals)
        peak_step = max(steps, key=lambda t: mean_curve[a][t])
        entry = {"seeds": seeds, "final_mean": mu, "final_se": se, "final_sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                 "start": 100 * mean_curve[a][steps[0]], "peak": 100 * mean_curve[a][peak_step], "peak_step": peak_step,
                 "end": 100 * mean_curve[a][steps[-1]], "curve": {t: 100 * v for t, v in mean_curve[a].items()}}
        if grpo_final is not None:
            entry["steps_to_grpo_final"] = first_reach(mean_curve[a], grpo_final)
            paired = [s for s in seeds if s in final["grpo"]]
            entry["steps_to_grpo_final_per_seed"] = [first_reach(curves[a][s], final["grpo"][s]) for s in paired]
            if a != "grpo" and paired:
                d = [100 * (final[a][s] - final["grpo"][s]) for s in paired]
                entry["diff_vs_grpo"], entry["diff_vs_grpo_se"] = mean_se(d)
                entry["wins_vs_grpo"], entry["ties_vs_grpo"] = sum(x > 0 for x in d), sum(x == 0 for x in d)
        for key in DIAGNOSTICS:
            xs = [r[key] for s in seeds for r in runs[a][s] if key in r and r["step"] > 0]
            if xs:
                entry[f"{key}_run_mean"] = statistics.fmean(xs)
        out["arms"][a] = entry
    return out


def summary_text(summary: dict, warm: dict) -> str:
    arms = summary["arms"]
    if not arms:
        return "no arm finished on a common seed"
    steps = summary["eval_steps"]
    lines = [f"warm start: {100 * warm['plain']:.1f}% held-out greedy accuracy ({100 * warm['answer']:.1f}% with "
             f"the answer in context, {100 * warm['solution']:.1f}% with the trace)",
             "", "held-out greedy accuracy (%), mean over each arm's seeds",
             f"{'step':>5} | " + " | ".join(f"{a:>17}" for a in arms)]
    for t in steps:
        lines.append(f"{t:>5} | " + " | ".join(f"{arms[a]['curve'][t]:>17.1f}" for a in arms))
    lines += ["", f"final = mean of the evaluations at steps {summary['final_steps']}; differences paired by seed",
              f"{'arm':>17} | {'n':>2} | {'final (+- se)':>13} | {'vs grpo (+- se)':>15} | {'W/T/L':>5} | "
              f"{'reach grpo final':>16} | {'peak (step)':>11} | {'clip lo/hi %':>12} | {'delta m/sd':>11} | "
              f"{'entropy':>7} | {'ppo clip %':>10}"]
    for a, e in arms.items():
        n = len(e["steps_to_grpo_final_per_seed"]) if "steps_to_grpo_final_per_seed" in e else 0
        diff = f"{e['diff_vs_grpo']:+.1f} +- {e['diff_vs_grpo_se']:.1f}" if "diff_vs_grpo" in e else ""
        wins = (f"{e['wins_vs_grpo']}/{e['ties_vs_grpo']}/{n - e['wins_vs_grpo'] - e['ties_vs_grpo']}"
                if "wins_vs_grpo" in e else "")
        clip = (f"{100 * e['credit_clip_low_frac_run_mean']:.1f}/{100 * e['credit_clip_high_frac_run_mean']:.1f}"
                if "credit_clip_low_frac_run_mean" in e else "")
        delta = (f"{e['delta_mean_run_mean']:+.2f}/{e['delta_std_run_mean']:.2f}"
                 if "delta_std_run_mean" in e else (f"{e['delta_mean_run_mean']:+.2f}" if "delta_mean_run_mean" in e else ""))
        ent = f"{e['entropy_mean_run_mean']:.3f}" if "entropy_mean_run_mean" in e else ""
        ppo = f"{100 * e['ppo_clip_frac_run_mean']:.2f}" if "ppo_clip_frac_run_mean" in e else ""
        reach = e.get("steps_to_grpo_final")
        lines.append(f"{a:>17} | {len(e['seeds']):>2} | {e['final_mean']:>6.1f} +- {e['final_se']:.1f} | {diff:>15} | {wins:>5} | "
                     f"{'-' if reach is None else reach:>16} | {e['peak']:>5.1f} ({e['peak_step']:>2}) | {clip:>12} | "
                     f"{delta:>11} | {ent:>7} | {ppo:>10}")
    return "\n".join(lines)


def write_metrics_csv(runs: dict, path: str) -> None:
    keys = ("eval_accuracy",) + DIAGNOSTICS
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("arm", "seed", "step") + keys)
        for a in runs:
            for s, records in sorted(runs[a].items()):
                for r in records:
                    w.writerow([a, s, r["step"]] + [r.get(k, "") for k in keys])


def plot_study(runs: dict, summary: dict, path: str) -> None:
    """Accuracy (mean +- se over seeds) and the per-step diagnostics of each arm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("eval_accuracy", "held-out greedy accuracy"), ("credit_clip_low_frac", "credit clip low"),
              ("credit_clip_high_frac", "credit clip high"), ("delta_mean", "delta mean"),
              ("delta_std", "delta std"), ("entropy_mean", "entropy"), ("ppo_clip_frac", "PPO clip fraction"),
              ("reward_mean", "train reward"), ("response_len", "response length")]
    fig, axes = plt.subplots(3, 3, figsize=(15, 11))
    for ax, (key, title) in zip(axes.flat, panels):
        for i, a in enumerate(runs):  # one colour per arm in every panel, whichever metrics it logs
            per_seed = [curve(r, key) for r in runs[a].values()]
            steps = sorted(set.intersection(*[set(c) for c in per_seed])) if per_seed else []
            if not steps:
                continue
            stats = [mean_se([c[t] for c in per_seed]) for t in steps]
            scale = 100 if key == "eval_accuracy" else 1
            mu = [scale * m for m, _ in stats]
            se = [scale * e for _, e in stats]
            ax.plot(steps, mu, label=a, color=f"C{i}")
            ax.fill_between(steps, [m - e for m, e in zip(mu, se)], [m + e for m, e in zip(mu, se)], alpha=0.15,
                            color=f"C{i}")
        ax.set_title(title)
        ax.set_xlabel("RL step")
    axes.flat[0].legend(fontsize=7)
    n = sorted({len(r) for r in runs.values()})
    fig.suptitle(f"RLSD study: 3-number sums, {'-'.join(map(str, (n[0], n[-1]) if n[0] != n[-1] else n[:1]))} "
                 f"seeds per arm (mean +- se)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------- running
def run_study(out: str = "docs/study", runs_dir: str = "rlsd-demo/study", cache_dir: str = "~/.cache/rlsd",
              seeds: int = 8, steps: int = 50, eval_every: int = 10, workers: int = 2, engine: str = "hf",
              arms=STUDY_ARMS, warmup: Optional[WarmupConfig] = None, terms: int = 3, report_only: bool = False,
              log=print) -> dict:
    """The study: one warm start on ``terms``-number sums, then every arm x seed from it (finished
    runs are kept), a paired summary against GRPO, per-step metrics, plots and the clip anatomy in
    ``out``. The warm start is the shipped one (shipped.py) unless ``warmup`` asks for one trained
    here (always for ``terms`` != 3)."""
    t0 = time.perf_counter()
    engine = engine or default_engine()
    runs_dir, out = os.path.abspath(runs_dir), os.path.abspath(out)
    data_dir = os.path.join(runs_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    heldout = make_split(200, HELDOUT_SEED, k=terms)
    train = make_split(5000, TRAIN_SEED, k=terms, exclude={e.prompt for e in heldout})
    rollout = {"rollout": {"max_new_tokens": response_tokens(terms)}}
    write_jsonl(os.path.join(data_dir, "eval.jsonl"), [e.to_row() for e in heldout])
    write_jsonl(os.path.join(data_dir, "train.jsonl"), [e.to_row() for e in train])
    if warmup is None and terms == 3:
        model_dir, info = shipped_warm_start()
    else:
        warmup = dataclasses.replace(warmup or WarmupConfig(), terms=terms, max_new_tokens=response_tokens(terms))
        model_dir, info = warm_start(os.path.expanduser(cache_dir), heldout, warmup, log=log)
    log(f"warm start {model_dir}: {100 * info['accuracy']['plain']:.1f}% (fingerprint {info['fingerprint'][:16]})")
    if not report_only:
        _run_all(arms, seeds, steps, eval_every, workers, engine, model_dir, data_dir, runs_dir, rollout, log)
    runs = load_runs(runs_dir, arms, seeds)
    summary = summarize(runs)
    text = summary_text(summary, info["accuracy"])
    minutes = (time.perf_counter() - t0) / 60
    write_metrics_csv(runs, os.path.join(out, "metrics.csv"))
    if summary["arms"]:
        plot_study(runs, summary, os.path.join(out, "study.png"))
    result = {"warm_start": {k: info[k] for k in ("step", "accuracy", "curve", "fingerprint")},
              "settings": {"seeds": seeds, "steps": steps, "eval_every": eval_every, "workers": workers,
                           "engine": engine, "terms": terms, "arms": {a: ARMS[a] for a in arms},
                           "base": merge(RL, rollout)},
              "summary": summary, "minutes": minutes}
    final = os.path.join(runs_dir, "grpo", "seed0", "checkpoints", f"step_{steps:06d}", "model")
    models = {"warm start": model_dir, **({"grpo seed 0, last step": final} if os.path.isdir(final) else {})}
    with deterministic(), open(os.path.join(out, "clip_anatomy.json"), "w") as f:
        json.dump(anatomy_report(models, train[:64], max_new_tokens=response_tokens(terms)), f, indent=1)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    log("\n" + text + f"\n\nresults in {out}; {minutes:.1f} min")
    return result


def _run_all(arms, seeds, steps, eval_every, workers, engine, model_dir, data_dir, runs_dir, extra, log) -> None:
    """Seed-major order, so that whatever has finished forms whole seeds; finished runs are kept."""
    jobs = []
    for seed in range(seeds):
        for arm in arms:
            run_dir = os.path.join(runs_dir, arm, f"seed{seed}")
            if os.path.exists(os.path.join(run_dir, "done")):
                continue
            jobs.append(write_job(run_dir, arm_config(arm, seed, model_dir, data_dir, run_dir, steps, eval_every,
                                                      engine, extra)))
    log(f"{len(jobs)} runs to do ({len(arms)} arms x {seeds} seeds x {steps} steps), {workers} at a time, {engine}")
    run_jobs(jobs, workers, log, runs_dir, resumable=True)
