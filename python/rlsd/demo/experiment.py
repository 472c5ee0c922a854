"""``rlsd demo``: GRPO, OPSD and RLSD with the authors' settings (answer-only and worked-trace
privileged context) from the shipped warm start (shipped.py: the same weights on every machine),
for the same number of steps, on several seeds; a table and a plot of held-out accuracy against
step. The runs are the study's (arms.py): the demo's seeds 0-2 are the study's seeds 0-2, run for run.

Every run is a plain ``rlsd train CONFIG.yaml`` subprocess with one thread (two one-thread runs do
more work on two cores than one two-thread run); the configs, data and metrics stay in the output
directory, so any run can be repeated or changed by hand.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import yaml

from ..data import write_jsonl
from ..metrics import read_jsonl
from .arms import arm_config
from .task import make_split
from .shipped import shipped_warm_start
from .warmup import WarmupConfig, warm_start

HELDOUT_SEED, TRAIN_SEED = 12345, 777
METHODS = ("grpo", "opsd", "rlsd-authors-answer", "rlsd-authors-trace")


def _run(job, cores: queue.Queue) -> tuple:
    """One ``rlsd train`` subprocess with one thread, on a core of its own (vLLM binds its threads)."""
    cfg_path, log_path = job
    core = cores.get()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": core,
           "PYTHONPATH": os.pathsep.join(sys.path)}
    t0 = time.perf_counter()
    try:
        with open(log_path, "w") as log:
            code = subprocess.call([sys.executable, "-m", "rlsd.cli", "train", cfg_path], stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
    finally:
        cores.put(core)
    return cfg_path, code, time.perf_counter() - t0


def write_job(run_dir: str, cfg: dict) -> tuple:
    """A run's config.yaml (an earlier attempt's metrics removed): the (config, log) job of :func:`run_jobs`."""
    os.makedirs(run_dir, exist_ok=True)
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        os.remove(os.path.join(run_dir, "metrics.jsonl"))
    cfg_path = os.path.join(run_dir, "config.yaml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(cfg, f)
    return cfg_path, os.path.join(run_dir, "train.log")


def run_jobs(jobs: list, workers: int, log, root: str, resumable: bool) -> None:
    """``rlsd train`` for each job, ``workers`` at a time, one core each. ``resumable``: a finished run
    gets a ``done`` marker (skipped next time) and a failed one is logged; otherwise a failure raises."""
    cores = queue.Queue()
    for i in range(workers):
        cores.put(str(i % (os.cpu_count() or 1)))
    with ThreadPoolExecutor(workers) as pool:
        for cfg_path, code, secs in pool.map(lambda job: _run(job, cores), jobs):
            run_dir = os.path.dirname(cfg_path)
            log(f"  {os.path.relpath(run_dir, root)}: {'ok' if code == 0 else f'FAILED ({code})'} in {secs:.0f}s")
            if code == 0 and resumable:
                open(os.path.join(run_dir, "done"), "w").close()
            elif code != 0 and not resumable:
                raise RuntimeError(f"run failed, see {os.path.join(run_dir, 'train.log')}")


def default_engine() -> str:
    """vLLM where it is installed, else Hugging Face generate."""
    return "vllm" if importlib.util.find_spec("vllm") else "hf"


def eval_curve(run_dir: str) -> dict:
    return {r["step"]: r["eval_accuracy"] for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
            if "eval_accuracy" in r}


def mean_sd(xs: list) -> tuple:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(curves: dict, warm: float, tail: int) -> tuple:
    """(table text, summary dict). ``curves[method][seed] = {step: accuracy}``; the final score of a
    run is its mean accuracy over the last ``tail`` evaluations; differences from GRPO are paired by seed."""
    methods = list(curves)
    steps = sorted(set.intersection(*[set(c) for m in methods for c in curves[m].values()]))
    head = f"{'step':>5} | " + " | ".join(f"{m:>18}" for m in methods)
    lines = ["Held-out greedy accuracy (%), mean +- sd over seeds", head, "-" * len(head)]
    for s in steps:
        cells = [mean_sd([100 * c[s] for c in curves[m].values()]) for m in methods]
        lines.append(f"{s:>5} | " + " | ".join(f"{mu:>10.1f} +- {sd:>4.1f}" for mu, sd in cells))
    tail = min(tail, len(steps))
    final = {m: {seed: statistics.fmean(c[s] for s in steps[-tail:]) for seed, c in curves[m].items()}
             for m in methods}
    summary = {}
    lines += ["", f"Final = mean over the last {tail} evaluations (steps {steps[-tail]}-{steps[-1]}); "
              f"warm start {100 * warm:.1f}%", f"{'method':>17} | {'final':>14} | {'gain vs warm':>14} | "
              f"{'paired diff vs grpo (mean +- se)':>32}"]
    for m in methods:
        vals = [100 * v for v in final[m].values()]
        mu, sd = mean_sd(vals)
        entry = {"final_mean": mu, "final_sd": sd, "gain_vs_warm": mu - 100 * warm}
        diff = ""
        if "grpo" in final and m != "grpo":
            d = [100 * (final[m][s] - final["grpo"][s]) for s in final[m] if s in final["grpo"]]
            dmu, dsd = mean_sd(d)
            se = dsd / len(d) ** 0.5
            entry.update(diff_vs_grpo=dmu, diff_vs_grpo_se=se)
            diff = f"{dmu:+.1f} +- {se:.1f}"
        summary[m] = entry
        lines.append(f"{m:>17} | {mu:>6.1f} +- {sd:>4.1f} | {mu - 100 * warm:>+14.1f} | {diff:>32}")
    return "\n".join(lines), summary


def plot_curves(curves: dict, warm: float, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, runs in curves.items():
        steps = sorted(set.intersection(*[set(c) for c in runs.values()]))
        stats = [mean_sd([100 * c[s] for c in runs.values()]) for s in steps]
        mu = [a for a, _ in stats]
        sd = [b for _, b in stats]
        ax.plot(steps, mu, label=m)
        ax.fill_between(steps, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)], alpha=0.15)
    ax.axhline(100 * warm, color="grey", ls=":", label="warm start")
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out greedy accuracy (%)")
    ax.set_title(f"3-number sums, {len(next(iter(curves.values())))} seeds (mean +- sd)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(out_dir: str = "rlsd-demo", cache_dir: str = "~/.cache/rlsd", quick: bool = False, seeds=None,
             steps=None, workers: int = 2, engine: str = "hf", methods=METHODS, retrain: bool = False,
             log=print) -> dict:
    """The demo's runs from the shipped warm start (``retrain``: one trained here, cached), a table
    and a plot in ``out_dir``."""
    t0 = time.perf_counter()
    engine = engine or default_engine()
    seeds = seeds or (2 if quick else 3)
    steps = steps or (30 if quick else 50)
    eval_every = 10
    out_dir = os.path.abspath(out_dir)
    data_dir = os.path.join(out_dir, "data")
    os.makedirs(data_dir, exist_ok=True)

    heldout = make_split(200, HELDOUT_SEED)
    train = make_split(5000, TRAIN_SEED, exclude={e.prompt for e in heldout})
    write_jsonl(os.path.join(data_dir, "eval.jsonl"), [e.to_row() for e in heldout])
    write_jsonl(os.path.join(data_dir, "train.jsonl"), [e.to_row() for e in train])

    import torch
    torch.set_num_threads(1)
    if retrain:
        model_dir, info = warm_start(os.path.expanduser(cache_dir), heldout, WarmupConfig(), log=log)
    else:
        model_dir, info = shipped_warm_start()
    warm = info["accuracy"]["plain"]
    log(f"warm start: {model_dir} (step {info['step']}, fingerprint {info['fingerprint'][:16]}): held-out greedy "
        f"accuracy {100 * warm:.1f}% ({100 * info['accuracy']['answer']:.1f}% with the answer in context, "
        f"{100 * info['accuracy']['solution']:.1f}% with the trace)")

    jobs = []
    for seed in range(seeds):
        for method in methods:
            run_dir = os.path.join(out_dir, "runs", method, f"seed{seed}")
            jobs.append(write_job(run_dir, arm_config(method, seed, model_dir, data_dir, run_dir, steps, eval_every,
                                                      engine)))
    log(f"{len(jobs)} runs ({len(methods)} methods x {seeds} seeds x {steps} steps), {workers} at a time, "
        f"rollouts with {engine}")
    run_jobs(jobs, workers, log, out_dir, resumable=False)

    curves = {m: {s: eval_curve(os.path.join(out_dir, "runs", m, f"seed{s}")) for s in range(seeds)}
              for m in methods}
    table, summary = summarize(curves, warm, tail=3)
    plot_curves(curves, warm, os.path.join(out_dir, "demo.png"))
    minutes = (time.perf_counter() - t0) / 60
    log("\n" + table + f"\n\nplot: {os.path.join(out_dir, 'demo.png')}; total time {minutes:.1f} min")
    result = {"warm_start": info, "summary": summary, "curves": curves, "minutes": minutes,
              "seeds": seeds, "steps": steps}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, "table.txt"), "w") as f:
        f.write(table + "\n")
    return result
