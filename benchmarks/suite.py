"""The benchmark suite: `python -m benchmarks` (see benchmarks/README.md).

For every LM-head shape (a preset, or --hidden x --vocab) and token count, every provider computes
the same RLSD loss (or, with --kernel logprobs, the per-token log-probs and entropies with their
backward) from the same inputs (benchmarks/providers.py):
- time of forward, backward and forward+backward, all providers interleaved in one fresh process
  per case (benchmarks/timecase.py);
- peak memory above the inputs of one forward+backward: on the CPU one fresh process per provider
  and case (benchmarks/memprobe.py: the process's resident set); on CUDA in the timing process
  (the allocator's peak, reset before each provider), so a GPU run starts one process per case.
Providers that cannot run on the device get a row that says why; cases whose estimated memory does
not fit are reported as "out of memory (needs N GiB)" without being attempted.
Writes <results>/bench.csv, <results>/bench.md and <results>/{time,memory}_<series>.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

import rlsd_kernels
from benchmarks import measure, report
from benchmarks.inputs import PRESETS, GiB, MiB, Shape
from benchmarks.providers import EAGER, FLOOR, KERNELS, MODES, default_provider, default_selection, registry

DEFAULT_TOKENS = (512, 2048, 8192, 32768)
DEFAULT_MAX_TIME_TOKENS = 8192
LONG_TRACE = ("qwen2.5-0.5b", 32768)
GPU_TARGETS = (("qwen2.5-7b", 8192), ("llama-3-8b", 16384), ("qwen2.5-0.5b", 32768))  # (LM head, tokens)
QUICK = dict(series=[("quick", 64, 4096)], tokens=(256, 512), max_time_tokens=256, reps=1,
             mem_providers="default,eager")
FIT_FRACTION = 0.9  # a case runs if its estimated need is at most this share of the memory available


def _ints(s):
    return [int(v) for v in s.split(",") if v]


def parse(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (CUDA events, max_memory_allocated)")
    ap.add_argument("--kernel", default=KERNELS[0], choices=KERNELS,
                    help="rlsd_loss: the whole RLSD loss; logprobs: the log-prob + entropy primitive alone")
    ap.add_argument("--preset", default=None,
                    help=f"comma-separated LM heads: {', '.join(PRESETS)}, or 'all' (default: demo)")
    ap.add_argument("--hidden", type=_ints, help="comma-separated H (with --vocab: their product, instead of presets)")
    ap.add_argument("--vocab", type=_ints, help="comma-separated V")
    ap.add_argument("--tokens", type=_ints, help=f"comma-separated N (default {','.join(map(str, DEFAULT_TOKENS))})")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--providers", default="default",
                    help="comma-separated names, 'default' or 'all' (see --list)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: forward, backward, full")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per step (interleaved)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-time-tokens", type=int, default=None,
                    help=f"time only cases with N <= this (memory is probed at every N); 0: no limit "
                         f"(default: {DEFAULT_MAX_TIME_TOKENS} on the CPU, no limit on CUDA)")
    ap.add_argument("--mem-providers", default="all",
                    help="providers whose memory is probed: 'all', 'none', or names ('default' = the default impl, "
                         "'eager' and 'gemm-floor' = the kernel's own)")
    ap.add_argument("--mem-budget-gib", type=float, default=None,
                    help="memory a case may use (default: MemAvailable, or free device memory)")
    ap.add_argument("--long-trace", action="store_true",
                    help=f"only the long-trace demonstration: one {LONG_TRACE[1]}-token fwd+bwd at the "
                         f"{LONG_TRACE[0]} head with the default impl, and eager's estimate")
    ap.add_argument("--gpu-targets", action="store_true",
                    help="the GPU speed targets' cases instead of a sweep: "
                         + ", ".join(f"{p} head at {n} tokens" for p, n in GPU_TARGETS))
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny shapes, 1 rep (not figures to report)")
    ap.add_argument("--results", default="benchmarks/results", help="folder for bench.csv, bench.md, *.png")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--list", action="store_true", help="list providers and whether they run here, then exit")
    return ap.parse_args(argv)


def series_list(args):
    """[(name, H, V)]"""
    if args.quick:
        return QUICK["series"]
    if args.hidden or args.vocab:
        hs = args.hidden or [PRESETS["demo"][0]]
        vs = args.vocab or [PRESETS["demo"][1]]
        return [(f"H{h}-V{v}", h, v) for h in hs for v in vs]
    names = list(PRESETS) if args.preset == "all" else (args.preset or "demo").split(",")
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        sys.exit(f"unknown preset(s) {unknown}; known: {', '.join(PRESETS)}")
    return [(n, *PRESETS[n]) for n in names]


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def gib(b):
    return f"{b / GiB:.1f} GiB"


class Suite:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            sys.exit("--device cuda: no CUDA device visible to torch")
        self.kernel = args.kernel
        self.reg = {n: p for n, p in registry().items() if p.kernel == self.kernel}
        self.default = default_provider(self.device, self.kernel)
        self.selected = self._names(args.providers, default_selection(self.device, self.kernel))
        self.mem_selected = ([] if args.mem_providers == "none" else
                             self.selected if args.mem_providers == "all" else
                             self._names(args.mem_providers, self.selected))
        self.modes = [m for m in args.modes.split(",") if m]
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            sys.exit(f"unknown mode(s) {bad}; known: {', '.join(MODES)}")
        self.budget = (args.mem_budget_gib * GiB if args.mem_budget_gib is not None
                       else measure.available_bytes(self.device))
        self.reasons = {n: self.reg[n].unavailable(self.device) for n in self.selected}
        self.stamp = datetime.datetime.now().isoformat(timespec="seconds")
        self.dev_name = device_name(self.device)
        self.rows = []

    def _names(self, spec, default):
        if spec == "default":
            return list(default)
        if spec == "all":
            return list(self.reg)
        alias = {"default": self.default, "eager": EAGER[self.kernel], "gemm-floor": FLOOR[self.kernel]}
        names = [alias.get(n, n) for n in spec.split(",") if n]
        unknown = [n for n in names if n not in self.reg]
        if unknown:
            sys.exit(f"unknown provider(s) {unknown}; known: {', '.join(self.reg)}")
        return names

    # -- planning -----------------------------------------------------------------------------
    def fits(self, name, shape):
        """None if ``name`` fits at ``shape``, else the out-of-memory status."""
        need = shape.input_bytes() + self.reg[name].extra_bytes(shape)
        if need <= FIT_FRACTION * self.budget:
            return None
        return f"out of memory (needs {gib(need)}, {gib(self.budget)} available)"

    def status(self, name, shape):
        if self.reasons[name]:
            return f"not run: {self.reasons[name]}"
        return self.fits(name, shape) or "ok"

    # -- rows ---------------------------------------------------------------------------------
    def row(self, series, shape, name, mode, metric, status, values=None, **extra):
        cfg = dict(series=series, H=shape.H, V=shape.V, dtype=shape.dtype, B=shape.batch[0], T=shape.batch[1],
                   reps=extra.pop("reps", self.args.reps), lam=1.0, loss_agg="token-mean",
                   threads=torch.get_num_threads(), note=self.reg[name].note,
                   contract=self.reg[name].contract, **extra)
        r = dict(kernel_name=self.kernel, kernel_provider=name, kernel_operation_mode=mode, metric_name=metric,
                 metric_unit="ms" if metric == "time" else "MiB", x_name="N", x_label="tokens", x_value=shape.N,
                 status=status, extra_benchmark_config_str=json.dumps(cfg), device_name=self.dev_name,
                 timestamp=self.stamp, rlsd_kernels_version=rlsd_kernels.__version__,
                 provider_version=self.reg[name].version())
        if values:
            r.update(y_value_50=values["median"], y_value_20=values["p20"], y_value_80=values["p80"])
        self.rows.append(r)
        return r

    # -- jobs ---------------------------------------------------------------------------------
    def jobs(self):
        """[(description, callable)] in run order; rows for what is not run are added now."""
        a, out = self.args, []
        if a.long_trace:
            preset, N = LONG_TRACE
            shape = Shape(N, *PRESETS[preset], a.dtype)
            for name in (self.default, EAGER[self.kernel]):
                st = self.status(name, shape)
                if st == "ok":
                    out.append((f"long trace {name} {shape.label()}",
                                lambda n=name, s=shape: self.memory_job(preset, s, n, reps=1, long_trace=True)))
                else:
                    for metric in ("time", "memory"):
                        self.row(preset, shape, name, "full", metric, st, reps=1, long_trace=True)
            return out
        for series, shape in self.cases():
            N = shape.N
            if a.max_time_tokens and N > a.max_time_tokens:
                for name in self.selected:
                    for mode in self.modes:
                        self.row(series, shape, name, mode, "time",
                                 f"skipped: N above --max-time-tokens {a.max_time_tokens}")
            elif self.modes or self.in_process_memory:
                out.append((f"time {series} N={N}", lambda s=series, sh=shape: self.time_job(s, sh)))
            for name in self.selected:
                if name not in self.mem_selected:
                    self.row(series, shape, name, "full", "memory",
                             "skipped: " + ("--quick probes the default and eager only" if a.quick
                                            else "not in --mem-providers"))
                    continue
                st = self.status(name, shape)
                if st != "ok":
                    self.row(series, shape, name, "full", "memory", st)
                elif not self.in_process_memory:
                    out.append((f"memory {series} N={N} {name}",
                                lambda s=series, sh=shape, n=name: self.memory_job(s, sh, n)))
        return out

    @property
    def in_process_memory(self):
        """CUDA peaks are measured in the timing process (see the module docstring)."""
        return self.device.type == "cuda"

    def cases(self):
        """[(series, Shape)] in run order: the GPU targets, or every series x token count."""
        a = self.args
        if a.gpu_targets:
            return [(p, Shape(N, *PRESETS[p], a.dtype)) for p, N in GPU_TARGETS]
        tokens = QUICK["tokens"] if a.quick else (a.tokens or DEFAULT_TOKENS)
        return [(series, Shape(N, H, V, a.dtype)) for series, H, V in series_list(a) for N in tokens]

    def time_job(self, series, shape):
        run = [n for n in self.selected if self.status(n, shape) == "ok"]
        res = {"times": {}, "failed": {}}
        if run:
            spec = dict(providers=run, modes=self.modes, N=shape.N, H=shape.H, V=shape.V, dtype=shape.dtype,
                        device=self.args.device, reps=self.args.reps, warmup=self.args.warmup,
                        memory=self.in_process_memory)
            try:
                res = measure.run_child("benchmarks.timecase", spec)
            except measure.ChildFailed as e:
                res["failed"] = {n: str(e) for n in run}
        floor, eager = res["times"].get(FLOOR[self.kernel], {}), res["times"].get(EAGER[self.kernel], {})
        for name in self.selected:
            for mode in self.modes:
                t = res["times"].get(name, {}).get(mode)
                if t is None:
                    st = self.status(name, shape)
                    self.row(series, shape, name, mode, "time",
                             f"failed: {res['failed'][name]}" if name in res["failed"] else
                             st if st != "ok" else "failed: no result")
                    continue
                ms = {k: t[k] * 1e3 for k in ("median", "p20", "p80")}
                r = self.row(series, shape, name, mode, "time", "ok", ms)
                if mode in floor:
                    r["ratio_to_floor"] = round(t["median"] / floor[mode]["median"], 4)
                if mode in eager:
                    r["ratio_to_eager"] = round(t["median"] / eager[mode]["median"], 4)
        for name, peak in res.get("memory", {}).items():
            if name in self.mem_selected:
                mib = peak / MiB
                self.row(series, shape, name, "full", "memory", "ok", dict(median=mib, p20=mib, p80=mib))

    def memory_job(self, series, shape, name, reps=None, long_trace=False):
        extra = dict(long_trace=True) if long_trace else {}
        if reps is not None:
            extra["reps"] = reps
        try:
            res = measure.probe_memory(name, shape, "full", self.args.device)
        except measure.ChildFailed as e:
            for metric in ("memory", "time") if long_trace else ("memory",):
                self.row(series, shape, name, "full", metric, f"failed: {e}", **extra)
            return
        mib = res["peak_above_inputs"] / MiB
        self.row(series, shape, name, "full", "memory", "ok", dict(median=mib, p20=mib, p80=mib), **extra)
        if long_trace:
            ms = res["seconds"] * 1e3
            self.row(series, shape, name, "full", "time", "ok", dict(median=ms, p20=ms, p80=ms), **extra)

    def memory_ratios(self):
        """ratio_to_eager on memory rows, where eager's peak was measured in the same case."""
        def case(r):
            return json.loads(r["extra_benchmark_config_str"])["series"], r["x_value"]

        eager = {case(r): r["y_value_50"] for r in self.rows
                 if r["kernel_provider"] == EAGER[self.kernel] and r["metric_name"] == "memory" and r["status"] == "ok"}
        for r in self.rows:
            if r["metric_name"] == "memory" and r["status"] == "ok" and eager.get(case(r)):
                r["ratio_to_eager"] = round(r["y_value_50"] / eager[case(r)], 4)


def list_providers(suite):
    print(f"device {suite.device} ({suite.dev_name}); kernel {suite.kernel}; default: {suite.default}")
    default = set(default_selection(suite.device, suite.kernel))
    for name, p in suite.reg.items():
        why = p.unavailable(suite.device)
        print(f"  {name:22s} {'default' if name in default else '       '}  "
              f"{'runs' if why is None else 'not run: ' + why}  {p.version() or 'not installed'}  "
              f"{'; '.join(filter(None, (p.note, p.contract)))}")


def main(argv=None):
    args = parse(argv)
    if args.max_time_tokens is None:
        args.max_time_tokens = 0 if args.device.startswith("cuda") else DEFAULT_MAX_TIME_TOKENS
    if args.quick:
        args.reps, args.max_time_tokens = QUICK["reps"], QUICK["max_time_tokens"]
        args.mem_providers = QUICK["mem_providers"] if args.mem_providers == "all" else args.mem_providers
    suite = Suite(args)
    if args.list:
        list_providers(suite)
        return suite
    os.makedirs(args.results, exist_ok=True)
    print(f"device: {suite.dev_name}; torch {torch.__version__}; default impl {suite.default}; "
          f"memory budget {gib(suite.budget)}", flush=True)
    jobs = suite.jobs()
    from tqdm import tqdm

    bar = tqdm(jobs, unit="case", dynamic_ncols=True, file=sys.stderr)
    for desc, job in bar:
        bar.set_description(desc)
        job()
    bar.close()

    stem = "long_trace" if args.long_trace else "bench" if args.kernel == KERNELS[0] else f"bench_{args.kernel}"
    csv_path = os.path.join(args.results, f"{stem}.csv")
    suite.memory_ratios()
    order = {n: i for i, n in enumerate(dict.fromkeys([*suite.selected, *suite.reg]))}
    suite.rows.sort(key=lambda r: (json.loads(r["extra_benchmark_config_str"])["series"], r["x_value"],
                                   r["metric_name"] != "time", order[r["kernel_provider"]],
                                   MODES.index(r["kernel_operation_mode"])))
    report.write_csv(suite.rows, csv_path)
    rows = report.read_csv(csv_path)
    text = report.markdown(rows, suite.default, order=suite.selected)
    checks = report.checks(rows, suite.default)
    if checks:
        text += "\n### Checks (issue 3)\n\n" + "\n".join(f"- {c}" for c in checks) + "\n"
    floor = ("the 4 GEMMs of the shape (student and teacher logits in fwd, dL/dhidden and dL/dweight in bwd)"
             if args.kernel == "rlsd_loss" else "the 3 GEMMs of the shape (logits in fwd, dL/dhidden and dL/dweight in bwd)")
    text = (f"Device: {suite.dev_name}, torch {torch.__version__}, {suite.stamp}. Kernel: {args.kernel}. "
            f"GEMM floor: {floor}.\n" + text + report.contracts(rows))
    md_path = os.path.join(args.results, f"{stem}.md")
    with open(md_path, "w") as f:
        f.write(text)
    written = [] if args.no_plots or args.long_trace else report.plots(rows, args.results)
    print(text)
    print(f"wrote {csv_path}, {md_path}" +
          (f", {len(written)} plots" if written else ""))
    return suite
