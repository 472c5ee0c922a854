"""``rlsd train CONFIG.yaml | eval CONFIG.yaml | demo | study | filter-traces IN OUT | plot METRICS OUT``."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _options(items) -> dict:
    from .config import parse_value
    return {key: parse_value(value) for key, _, value in (item.partition("=") for item in items or [])}


def cmd_train(args) -> int:
    import torch.distributed as dist
    from .config import load_config
    from .loop import Trainer
    cfg = load_config(args.config, args.set)
    trainer = Trainer(cfg)
    if args.resume is not None:
        step = trainer.resume(args.resume)
        print(f"resumed at step {step}", file=sys.stderr)
    trainer.train()
    trainer.engine.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def cmd_eval(args) -> int:
    from .config import load_config
    from .loop import Trainer
    overrides = list(args.set or [])
    if args.checkpoint:
        from .checkpoint import verify_checkpoint
        verify_checkpoint(args.checkpoint)  # never evaluate a partial or damaged checkpoint
        overrides.append(f"model.path={os.path.join(args.checkpoint, 'model')}")
    cfg = load_config(args.config, overrides + ["model.lora=null"])
    cfg.rollout.engine = args.engine or cfg.rollout.engine
    trainer = Trainer(cfg, train_examples=[])
    print(json.dumps(trainer.evaluate()))
    trainer.engine.close()
    return 0


def cmd_demo(args) -> int:
    if args.retrain_warm_start:  # the three methods from a warm start trained here
        from .demo.experiment import run_demo
        run_demo(out_dir=args.out, cache_dir=args.cache, quick=args.quick, seeds=args.seeds, steps=args.steps,
                 workers=args.workers, engine=args.engine, retrain=True)
        return 0
    from .demo.regimes import run_clearest
    run_clearest(out=args.out, quick=args.quick, seeds=args.seeds, steps=args.steps, workers=args.workers,
                 engine=args.engine)
    return 0


def cmd_gym_data(args) -> int:
    from .data import write_jsonl
    from .gym_tasks import gym_examples
    examples = gym_examples(args.task, args.size, args.seed)
    write_jsonl(args.out, [e.to_row() for e in examples])
    with_solution = sum(e.solution is not None for e in examples)
    print(f"{len(examples)} {args.task} examples (seed {args.seed}; {with_solution} with a worked solution as the "
          f"privileged context) -> {args.out}")
    return 0


def cmd_study(args) -> int:
    from .demo.arms import ARMS, STUDY_ARMS
    from .demo.warmup import WarmupConfig
    unknown = [a for a in args.arms or [] if a not in ARMS]
    if unknown:
        raise SystemExit(f"rlsd study: unknown arms {unknown}; choose from {list(ARMS)}")
    if args.regimes:
        from .demo.regimes import REGIME_ARMS, STRENGTHS, run_regimes
        if args.terms != 3 or args.warm_steps or args.retrain_warm_start:
            raise SystemExit("rlsd study --regimes: runs from the shipped 3-number-sum warm starts only "
                             "(no --terms, --warm-steps or --retrain-warm-start)")
        bad = [w for w in args.strengths or [] if w not in STRENGTHS]
        if bad:
            raise SystemExit(f"rlsd study: unknown warm starts {bad}; choose from {list(STRENGTHS)}")
        run_regimes(out=args.out or "docs/study/regimes", runs_dir=args.runs or "rlsd-demo/regimes",
                    seeds=args.seeds, steps=args.steps or 20, eval_every=args.eval_every or 2, workers=args.workers,
                    engine=args.engine, arms=tuple(args.arms or REGIME_ARMS),
                    strengths=tuple(args.strengths or STRENGTHS), report_only=args.report_only)
        return 0
    from .demo.study import run_study
    retrain = args.retrain_warm_start or args.warm_steps or args.terms != 3  # else: the shipped warm start
    warmup = WarmupConfig(**({"steps": args.warm_steps} if args.warm_steps else {})) if retrain else None
    suffix = "" if args.terms == 3 else f"terms{args.terms}"  # runs of other sums are never reused
    args.out = args.out or os.path.join("docs/study", suffix)
    args.runs = args.runs or ("rlsd-demo/study" + (f"-{suffix}" if suffix else ""))
    run_study(out=args.out, runs_dir=args.runs, cache_dir=args.cache, seeds=args.seeds, steps=args.steps or 50,
              eval_every=args.eval_every or 10, workers=args.workers, engine=args.engine,
              arms=tuple(args.arms or STUDY_ARMS), warmup=warmup, terms=args.terms, report_only=args.report_only)
    return 0


def cmd_filter_traces(args) -> int:
    from .traces import filter_traces_file
    total, kept, reasons = filter_traces_file(args.src, args.dst, args.verifier, _options(args.option), args.field)
    print(json.dumps({"rows": total, "kept": kept, "rejected": dict(reasons)}))
    return 0


def cmd_plot(args) -> int:
    from .metrics import plot_metrics
    print(plot_metrics(args.metrics, args.png))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlsd", description="GRPO / OPSD / RLSD training on verifiable tasks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML config")
    t.add_argument("config")
    t.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. train.lr=1e-5")
    t.add_argument("--resume", nargs="?", const="", default=None,
                   help="continue from a checkpoint (default: the latest in the output dir)")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="held-out accuracy of a model or checkpoint")
    e.add_argument("config")
    e.add_argument("--checkpoint", default="", help="a checkpoint directory (step_N)")
    e.add_argument("--engine", choices=["hf", "vllm"], default=None)
    e.add_argument("--set", nargs="*", metavar="KEY=VALUE")
    e.set_defaults(fn=cmd_eval)

    d = sub.add_parser("demo", help="the embedded demo: RLSD against GRPO where the study separates them "
                                    "(the shipped middle warm start, 8 seeds x 40 steps, ~8 min on 2 cores)")
    d.add_argument("--quick", action="store_true", help="fewer seeds and steps (3 x 20)")
    d.add_argument("--out", default="rlsd-demo")
    d.add_argument("--cache", default=os.environ.get("RLSD_CACHE", os.path.expanduser("~/.cache/rlsd")))
    d.add_argument("--seeds", type=int, default=None)
    d.add_argument("--steps", type=int, default=None)
    d.add_argument("--workers", type=int, default=2, help="parallel runs (one thread each)")
    d.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                   help="rollouts (hf: on the training model; no engine start-up per run)")
    d.add_argument("--retrain-warm-start", action="store_true",
                   help="GRPO, OPSD and RLSD from a warm start trained here (cached) instead of the comparison")
    d.set_defaults(fn=cmd_demo)

    g = sub.add_parser("gym-data", help="write a reasoning-gym task's examples as training rows (JSONL)")
    g.add_argument("task", help="a reasoning-gym task, e.g. gsm_symbolic, basic_arithmetic, chain_sum")
    g.add_argument("--size", type=int, default=1000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    g.set_defaults(fn=cmd_gym_data)

    s = sub.add_parser("study", help="GRPO vs OPSD vs RLSD (the authors' settings and lam = 1), many seeds, paired")
    s.add_argument("--out", default=None,
                   help="summary, per-step metrics and plots (default docs/study, docs/study/terms<k> for --terms k)")
    s.add_argument("--runs", default=None, help="the runs, finished ones kept and reused (default rlsd-demo/study, "
                                                "rlsd-demo/study-terms<k> for --terms k)")
    s.add_argument("--cache", default=os.environ.get("RLSD_CACHE", os.path.expanduser("~/.cache/rlsd")))
    s.add_argument("--seeds", type=int, default=8)
    s.add_argument("--steps", type=int, default=None, help="default 50 (--regimes: 20)")
    s.add_argument("--eval-every", type=int, default=None, help="default 10 (--regimes: 2)")
    s.add_argument("--workers", type=int, default=2, help="parallel runs (one thread each)")
    s.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                   help="rollouts (hf: on the training model; no engine start-up per run)")
    s.add_argument("--arms", nargs="*", help="arms to run and compare (default: the six of the study; "
                                             "--regimes: grpo, rlsd-authors-trace, rlsd-live-trace, opsd, opsd-lr5e-5)")
    s.add_argument("--regimes", action="store_true",
                   help="the regime map: every arm from each shipped warm start, weak to strong (default out "
                        "docs/study/regimes, runs rlsd-demo/regimes)")
    s.add_argument("--strengths", nargs="*", help="--regimes: the shipped warm starts to run (default all)")
    s.add_argument("--warm-steps", type=int, default=0,
                   help="train a warm start of this many steps here (default: the shipped one)")
    s.add_argument("--retrain-warm-start", action="store_true",
                   help="train the demo's warm start here (cached) instead of loading the shipped one")
    s.add_argument("--terms", type=int, default=3, choices=range(2, 6), metavar="{2..5}",
                   help="numbers per sum (harder problems, longer traces; the warm start is trained on them)")
    s.add_argument("--report-only", action="store_true", help="summarise the finished runs, start none")
    s.set_defaults(fn=cmd_study)

    f = sub.add_parser("filter-traces", help="keep the JSONL rows whose trace the verifier accepts")
    f.add_argument("src")
    f.add_argument("dst")
    f.add_argument("--verifier", default="math")
    f.add_argument("--option", nargs="*", metavar="KEY=VALUE", help="verifier options")
    f.add_argument("--field", default="solution")
    f.set_defaults(fn=cmd_filter_traces)

    g = sub.add_parser("plot", help="PNG of the curves in a metrics.jsonl")
    g.add_argument("metrics")
    g.add_argument("png")
    g.set_defaults(fn=cmd_plot)
    return p


def main(argv=None) -> int:
    """Runs a command; a bad config, data file or checkpoint is one line on stderr and exit code 2."""
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"rlsd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
