"""The shipped warm starts: the same weights on every machine.

A supervised warm start (warmup.py) is deterministic on one CPU, but its float order differs from
one CPU to another, and its accuracy curve jumps, so the same 1200 steps ended at 86.5% on one
machine and 74.5% on another. The demo and the study therefore load weights from the repository:
snapshots of ONE supervised run at several held-out accuracies (weak to strong warm starts for the
regime map; the strongest is the demo's), each with the sha256 of its ``model.safetensors``,
checked on load. Regenerate them (on any machine: the accuracies will differ) with

    python -m rlsd.demo.shipped --steps 2400 --every 50 --stop-at 0.87

which trains the run (until the held-out accuracy first reaches ``--stop-at``, at most ``--steps``
steps), saves its weights at every evaluation, and ships the snapshot closest to each target
accuracy (``TARGETS``) into ``warmstarts/`` with ``manifest.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict

WARMSTARTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "warmstarts")
TARGETS = {"weak": 0.30, "middle": 0.55, "good": 0.75, "strong": 0.87}  # name: held-out accuracy aimed at
DEMO = "strong"  # the demo's warm start (and the study's)
COMMAND = "python -m rlsd.demo.shipped --steps {steps} --every {every} --stop-at {stop_at}"


class WarmStartError(RuntimeError):
    """A shipped warm start that is missing or whose weights do not match their sha256."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(root: str = WARMSTARTS) -> dict:
    path = os.path.join(root, "manifest.json")
    if not os.path.exists(path):
        raise WarmStartError(f"no shipped warm starts in {root} (regenerate: {COMMAND.format(steps=2400, every=50, stop_at=0.87)})")
    with open(path) as f:
        return json.load(f)


def shipped_warm_start(name: str = DEMO, root: str = WARMSTARTS) -> tuple:
    """(model directory, info) of the shipped warm start ``name``, its weights checked against the
    manifest's sha256; ``info`` has the keys of :func:`warmup.warm_start`'s."""
    m = manifest(root)
    if name not in m["warm_starts"]:
        raise WarmStartError(f"unknown warm start {name!r}; shipped: {sorted(m['warm_starts'])}")
    entry = m["warm_starts"][name]
    path = os.path.join(root, name)
    weights = os.path.join(path, "model.safetensors")
    if not os.path.exists(weights):
        raise WarmStartError(f"{weights} is missing")
    digest = sha256_file(weights)
    if digest != entry["sha256"]:
        raise WarmStartError(f"{weights}: sha256 {digest[:16]}... is not the manifest's {entry['sha256'][:16]}...")
    return path, {**entry, "name": name, "curve": m["curve"], "config": m["config"]}


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def closest(curve: dict, targets: dict) -> dict:
    """{name: the earliest step whose accuracy is closest to the target}; ``curve`` = {step: accuracy}."""
    return {name: min(sorted(curve), key=lambda s: abs(curve[s] - t)) for name, t in targets.items()}


def regenerate(steps: int, every: int, stop_at: float, work: str, root: str = WARMSTARTS, log=print) -> dict:
    """Train one warm-start run (at most ``steps`` steps, stopping at the first evaluation with
    accuracy >= ``stop_at``), snapshot it every ``every`` steps into ``work``, and :func:`ship`."""
    from .experiment import HELDOUT_SEED
    from .task import make_split
    from .warmup import WarmupConfig, deterministic, train_warm_start

    heldout = make_split(200, HELDOUT_SEED)
    cfg = WarmupConfig(steps=steps, eval_every=every)

    def save(step, model, tok, acc=0.0):
        d = os.path.join(work, f"step_{step:05d}")
        model.save_pretrained(d)
        tok.save_pretrained(d)
        return acc >= stop_at

    with deterministic():
        model, tok, info = train_warm_start(heldout, cfg, log, on_eval=save)
        save(info["step"], model, tok)
    return ship(work, cfg, COMMAND.format(steps=steps, every=every, stop_at=stop_at), root, log)


def ship(work: str, cfg, command: str, root: str = WARMSTARTS, log=print) -> dict:
    """Evaluate every snapshot ``work/step_N`` of one run (held-out greedy accuracy, plain and with
    the answer or the trace in context), copy the one closest to each of ``TARGETS`` into ``root``
    and write ``manifest.json``; returns the manifest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch

    from .experiment import HELDOUT_SEED
    from .task import make_split
    from .warmup import accuracy, deterministic, fingerprint, with_prefix
    from ..rollout.hf import HFEngine

    heldout = make_split(200, HELDOUT_SEED)

    def evaluate(path: str, sources=("plain",)) -> tuple:
        with deterministic():
            net = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            tok = AutoTokenizer.from_pretrained(path)
            engine = HFEngine(net, tok)
            return net, {src: accuracy(engine, tok, heldout if src == "plain" else
                                       [with_prefix(e, src) for e in heldout], cfg.max_new_tokens) for src in sources}

    snaps = sorted(int(d.split("_")[1]) for d in os.listdir(work) if d.startswith("step_"))
    curve = {step: evaluate(os.path.join(work, f"step_{step:05d}"))[1]["plain"] for step in snaps}
    picked = closest(curve, TARGETS)
    os.makedirs(root, exist_ok=True)
    out = {"command": command, "machine": _machine(), "config": asdict(cfg),
           "curve": {str(s): a for s, a in sorted(curve.items())}, "warm_starts": {}}
    for name, step in picked.items():
        dst = os.path.join(root, name)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(os.path.join(work, f"step_{step:05d}"), dst)
        net, acc = evaluate(dst, ("plain", "answer", "solution"))
        out["warm_starts"][name] = {"step": step, "target": TARGETS[name], "accuracy": acc,
                                    "sha256": sha256_file(os.path.join(dst, "model.safetensors")),
                                    "fingerprint": fingerprint(net)}
        log(f"{name}: step {step}, held-out {100 * acc['plain']:.1f}% (answer {100 * acc['answer']:.1f}%, "
            f"trace {100 * acc['solution']:.1f}%)")
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="regenerate the shipped warm starts from one supervised run")
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--every", type=int, default=50, help="evaluate and snapshot every this many steps")
    p.add_argument("--stop-at", type=float, default=0.87, help="stop at the first evaluation this accurate")
    p.add_argument("--work", default="rlsd-demo/warmstart-run", help="where the run's snapshots go")
    p.add_argument("--out", default=WARMSTARTS, help="where the shipped checkpoints and manifest.json go")
    p.add_argument("--ship-only", action="store_true",
                   help="no training: evaluate the snapshots already in --work and ship from them")
    args = p.parse_args(argv)
    if args.ship_only:
        from .warmup import WarmupConfig
        ship(args.work, WarmupConfig(steps=args.steps, eval_every=args.every),
             COMMAND.format(steps=args.steps, every=args.every, stop_at=args.stop_at), args.out)
    else:
        regenerate(args.steps, args.every, args.stop_at, args.work, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
