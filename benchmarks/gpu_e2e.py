"""The end-to-end check on a CUDA machine, one command: ``python -m benchmarks.gpu_e2e --out DIR``.

Each part runs in its own process, its output in ``DIR/<part>.log``; ``DIR/summary.json`` and
``DIR/summary.md`` say what ran, how long it took and what it found (rewritten after every part).

- ``install``: pip's plan for this package's wheel in this Python (``--dry-run --report``, no index:
  ``DIR/pip_plan.json``), then the install; torch and triton must not be in the plan and keep their
  versions. The wheel is ``--wheel`` (default: the newest ``dist/rlsd_kernels-*.whl``, e.g. from
  ``make wheel``, else one built here); its dependencies other than torch come from ``--find-links``
  (ninja, where the image lacks it).
- ``kernel_tests``: the kernel library's tests (``tests/test_*.py`` but the packaging and benchmark
  ones) with ``TRITON_INTERPRET=0``, importing the installed package (``python -P``).
- ``rlsd_train``: ``rlsd train`` for ``--train-steps`` steps, HF engine, on a tiny model saved here.
- ``trl``: TRL's ``RLSDTrainer`` (rlsd_kernels.integrations.trl) for two steps on the tiny model of
  tests/integrations/test_trl.py.
- ``long_step``: ``benchmarks.long_step`` with all 24 layers of the Qwen2.5-0.5B architecture
  (bfloat16, gradient checkpointing, SDPA, live teacher) at 8k, 16k and 32k response tokens, fused
  head and eager head, then ``--fit``: the longest response each fits (``DIR/long_step/``). It runs
  from the checkout (``python -m``), so it imports the checkout's rlsd_kernels; the other parts import
  the installed one.

``--parts`` runs some of them (e.g. one call per part where a call's time is limited).

``--smoke`` is the same on the CPU at tiny sizes (the plan only, nothing installed; two kernel test
files; the long step on a tiny stand-in shape), for CI (tests/test_gpu_e2e.py).

On a machine without network: ``make wheel`` and ``pip download ninja -d dist`` beside it, carry
dist/, then ``python -m benchmarks.gpu_e2e --out $OUT --find-links dist``. A part whose imports the
image lacks fails with that ModuleNotFoundError in its row; the header lists the packages found.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("install", "kernel_tests", "rlsd_train", "trl", "long_step")
KEPT = ("torch", "triton")  # distributions the install must leave as they are
USED = ("transformers", "tokenizers", "trl", "accelerate", "datasets", "PyYAML", "pytest", "pytest-xdist", "ninja",
        "flash-attn", "vllm")  # what the parts import, as the image has them
NOT_KERNEL_TESTS = ("test_benchmarks.py", "test_bench_peers.py", "test_packaging.py", "test_gpu_e2e.py")


@dataclasses.dataclass
class Result:
    part: str
    status: str          # ok | failed | not run
    seconds: float = 0.0
    detail: str = ""     # one line: what it found, or why it failed


@dataclasses.dataclass
class Run:
    out: Path
    device: str
    smoke: bool
    wheel: str
    find_links: list
    train_steps: int
    timeout: int


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def sh(run: Run, part: str, cmd: list, env=None, cwd=ROOT, timeout=None) -> subprocess.CompletedProcess:
    """Run ``cmd``; its stdout and stderr go to ``OUT/<part>.log`` (appended)."""
    with open(run.out / f"{part}.log", "a") as log:
        log.write(f"$ {' '.join(map(str, cmd))}\n")
        log.flush()
        done = subprocess.run([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                              env={**os.environ, **(env or {})}, timeout=timeout or run.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {' '.join(map(str, cmd[:6]))} ... (see {part}.log)")
    return done


def python(run: Run) -> list:
    """This interpreter, not putting the working directory on sys.path where it can (3.11+: ``-P``), so
    that the installed package is the one imported."""
    return [sys.executable, "-P"] if sys.version_info >= (3, 11) else [sys.executable]


# -------------------------------------------------------------------------------------------- parts

def install(run: Run) -> str:
    wheel = run.wheel or next(iter(sorted(glob.glob(str(ROOT / "dist" / "rlsd_kernels-*.whl")))[-1:]), "")
    if not wheel:
        sh(run, "install", [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", ROOT,
                            "-w", run.out / "wheel"])
        (wheel,) = glob.glob(str(run.out / "wheel" / "rlsd_kernels-*.whl"))
    before = {d: version(d) for d in KEPT}
    links = [a for d in run.find_links for a in ("--find-links", d)]
    pip = [sys.executable, "-m", "pip", "install", "--no-index", *links]
    sh(run, "install", [*pip, "--dry-run", "--quiet", "--report", run.out / "pip_plan.json", wheel])
    plan = [(i["metadata"]["name"].lower(), i["metadata"]["version"])
            for i in json.loads((run.out / "pip_plan.json").read_text())["install"]]
    changed = [f"{n} {v}" for n, v in plan if n in KEPT or n.startswith("nvidia-")]
    if changed:
        raise RuntimeError(f"pip's plan would install {', '.join(changed)}")
    planned = ", ".join(f"{n} {v}" for n, v in plan)
    if run.smoke:
        return f"plan: {planned} (smoke: not installed); kept {before}"
    sh(run, "install", [*pip, "--quiet", wheel])
    after = {d: version(d) for d in KEPT}
    if after != before:
        raise RuntimeError(f"the install changed {before} to {after}")
    where = subprocess.run([*python(run), "-c", "import rlsd_kernels; print(rlsd_kernels.__file__)"], cwd=run.out,
                           capture_output=True, text=True, check=True).stdout.strip()
    return f"plan: {planned}; installed at {where}; kept {after}"


def kernel_tests(run: Run) -> str:
    files = [f for f in sorted(glob.glob(str(ROOT / "tests" / "test_*.py"))) if Path(f).name not in NOT_KERNEL_TESTS]
    if run.smoke:
        files = [str(ROOT / "tests" / name) for name in ("test_gpu.py", "test_errors.py")]  # test_gpu skips on the CPU
    workers = ["-n", "8"] if not run.smoke and importlib.util.find_spec("xdist") else []
    sh(run, "kernel_tests", [*python(run), "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, *files],
       env={"TRITON_INTERPRET": "1" if run.smoke else "0"})
    return last_line(run, "kernel_tests")


def rlsd_train(run: Run) -> str:
    import yaml
    from rlsd.data import write_jsonl
    from rlsd.demo.task import ALPHABET, make_split
    from rlsd.demo.tiny import char_tokenizer, tiny_qwen3
    work = run.out / "rlsd_train"
    tok = char_tokenizer(ALPHABET)
    model = tiny_qwen3(len(tok), hidden=64, layers=1, heads=1, head_dim=64, ffn=128, seed=0)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    examples = make_split(8, 0)
    for e in examples:  # a random model's last digit is 7 now and then: groups of mixed rewards
        e.answer = "7"
    write_jsonl(str(work / "train.jsonl"), [e.to_row() for e in examples])
    cfg = {"model": {"path": str(work / "model")}, "data": {"train": str(work / "train.jsonl")},
           "verifier": {"name": "exact", "options": {"pattern": r"(\d)\D*$"}},
           "rollout": {"engine": "hf", "n": 4, "max_new_tokens": 16},
           "teacher": {"source": "answer", "sync": "live", "template": "ans {reference}|{prompt}"}, "algo": {"name": "rlsd", "dynamic_sampling": False},
           "train": {"steps": run.train_steps, "prompts_per_step": 2, "lr": 1e-3, "device": run.device,
                     "output_dir": str(work / "run"), "progress": False}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    start = time.perf_counter()
    sh(run, "rlsd_train", [*python(run), "-m", "rlsd", "train", work / "config.yaml"], cwd=run.out)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    if len(steps) != run.train_steps:
        raise RuntimeError(f"{len(steps)} steps logged, {run.train_steps} asked")
    kept = sum(r["groups_kept"] for r in steps)
    return (f"{len(steps)} steps on {run.device} in {seconds:.1f} s (the whole process), {kept} groups trained on; "
            f"last loss {steps[-1]['loss']:.4g}")


def trl(run: Run) -> str:
    # run by path: its own folder on sys.path, not the checkout, so the installed package is imported
    sh(run, "trl", [sys.executable, Path(__file__).resolve(), "--trl-child", run.out / "trl", "--device", run.device])
    return last_line(run, "trl")


def trl_child(out: str, device: str) -> None:
    """Two RLSDTrainer steps (generation, the teacher from the dataset's ``privileged`` column)."""
    import torch
    sys.path[:0] = [str(ROOT / "tests" / "integrations"), str(ROOT / "tests")]  # test_trl imports privileged_cases
    from test_trl import char_tokenizer, config, dataset, reward_digits, tiny_qwen3
    from rlsd_kernels.integrations.trl import RLSDTrainer
    tok = char_tokenizer()
    model = tiny_qwen3(len(tok))
    args = config(Path(out), per_device_train_batch_size=2, learning_rate=1e-2, max_steps=2,
                  use_cpu=device == "cpu")
    trainer = RLSDTrainer(model, reward_digits, args=args, train_dataset=dataset(), processing_class=tok, lam=0.5)
    start = time.perf_counter()
    trainer.train()
    logged = [e for e in trainer.state.log_history if "rlsd/delta_mean" in e]
    where = next(model.parameters()).device
    if len(logged) != 2 or where.type != torch.device(device).type:
        raise SystemExit(f"{len(logged)} RLSD steps logged, model on {where}")
    print(f"2 steps on {where} in {time.perf_counter() - start:.1f} s; delta_mean {logged[-1]['rlsd/delta_mean']:.4g}")


def long_step(run: Run) -> str:
    results = run.out / "long_step"
    if run.smoke:
        sizes = ["--shape", "tiny", "--layers", "1", "--lengths", "64", "--dtype", "float32"]
    else:
        sizes = ["--layers", "24", "--lengths", "8192,16384,32768", "--dtype", "bfloat16", "--fit", "262144"]
    sh(run, "long_step", [sys.executable, "-m", "benchmarks.long_step", "--device", run.device, "--heads", "eager,fused",
                          *sizes, "--results", results])
    import csv
    with open(results / "long_step.csv") as f:
        rows = list(csv.DictReader(f))
    fits = {h: max((int(r["response_tokens"]) for r in rows if r["head"] == h and r["status"] == "ok"), default=0)
            for h in ("eager", "fused")}
    return f"{len(rows)} cases; longest ok response: " + ", ".join(f"{h} {n}" for h, n in fits.items())


def last_line(run: Run, part: str) -> str:
    lines = [ln for ln in (run.out / f"{part}.log").read_text().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------------- driver

def environment(run: Run) -> dict:
    import torch
    cuda = torch.cuda.is_available()
    with open(run.out / "pip_freeze.txt", "w") as f:
        subprocess.run([sys.executable, "-m", "pip", "freeze"], stdout=f, stderr=subprocess.DEVNULL, text=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return dict(python=platform.python_version(), torch=torch.__version__, triton=version("triton"),
                cuda_device=torch.cuda.get_device_name(0) if cuda else "none", cpu=cpu, device=run.device,
                smoke=run.smoke, started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                packages={d: version(d) for d in USED})


def write_summary(run: Run, env: dict, results: list) -> None:
    (run.out / "summary.json").write_text(json.dumps(dict(environment=env, parts=[dataclasses.asdict(r) for r in results]),
                                                     indent=1))
    lines = [f"End-to-end check ({'smoke, ' if run.smoke else ''}{env['device']}): {env['cuda_device']}, CPU "
             f"{env['cpu']}; Python {env['python']}, torch {env['torch']}, triton {env['triton']}; "
             f"started {env['started']}.", "",
             "Packages: " + ", ".join(f"{d} {v}" for d, v in env["packages"].items()) + ".", "",
             "| part | status | s | detail |", "|---|---|---|---|"]
    lines += [f"| {r.part} | {r.status} | {r.seconds:.1f} | {r.detail} |" for r in results]
    (run.out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_e2e", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="folder for every result and log")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, nothing installed (CI)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--wheel", default="", help="this package's wheel (default: dist/, else built here)")
    ap.add_argument("--find-links", action="append", default=[], help="folder of wheels the install may use")
    ap.add_argument("--train-steps", type=int, default=None, help="rlsd train steps (default 4, smoke 1)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per command")
    ap.add_argument("--trl-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = args.device or ("cpu" if args.smoke else "cuda")
    if args.trl_child:
        trl_child(args.trl_child, device)
        return 0
    if not args.out:
        ap.error("--out is required")
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts: unknown {unknown}; choose from {list(PARTS)}")
    run = Run(Path(args.out).resolve(), device, args.smoke, args.wheel, [str(Path(d).resolve()) for d in args.find_links],
              args.train_steps or (1 if args.smoke else 4), args.timeout)
    run.out.mkdir(parents=True, exist_ok=True)
    env, results = environment(run), []
    for name in parts:
        start = time.perf_counter()
        try:
            detail, status = globals()[name](run), "ok"
        except Exception as e:  # a failed part is reported and the next one still runs
            detail, status = f"{type(e).__name__}: {e}", "failed"
        results.append(Result(name, status, round(time.perf_counter() - start, 1), detail.replace("|", "/")))
        print(json.dumps(dataclasses.asdict(results[-1])), flush=True)
        write_summary(run, env, results)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
