"""The default benchmark: fused RLSD fwd+bwd against eager PyTorch and the GEMM floor.

    python -m benchmarks.fused_vs_eager [--reps 5] [--quick]

Time at N=2048, H=512, V=32768 (float32), medians of interleaved repetitions in one process;
peak memory above the inputs at N=8192, H=256, V=32768 in fresh subprocesses.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.inputs import Shape, make_inputs
from benchmarks.measure import peak_memory_in_subprocess, time_interleaved
from benchmarks.providers import gemm_floor_flops, providers
from benchmarks.suite import device_name
from rlsd_kernels import available_impls
from rlsd_kernels.ops import resolve_impl


def machine():
    return f"{device_name(torch.device('cpu'))}, torch {torch.__version__}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller shapes (a smoke run, not the reported figures)")
    args = ap.parse_args(argv)
    impls = [i for i in available_impls() if not i.startswith("triton")]  # the interpreter is not a benchmark
    default = f"rlsd-{resolve_impl('auto', torch.device('cpu'))}"
    time_shape = Shape(512, 256, 8192) if args.quick else Shape(2048, 512, 32768)
    mem_shape = Shape(1024, 128, 8192) if args.quick else Shape(8192, 256, 32768)

    print(f"machine: {machine()}; default impl: {default}")
    steps = {name: make(make_inputs(time_shape)) for name, make in providers(impls).items()}
    times = time_interleaved(steps, args.reps)
    floor = times["gemm-floor"]["median"]
    print(f"\nfwd+bwd time, {time_shape.label()}, median of {args.reps} "
          f"(GEMM floor {gemm_floor_flops(time_shape.N, time_shape.H, time_shape.V) / floor / 1e9:.0f} GFLOP/s)")
    print(f"| provider | median s | p20 s | p80 s | x GEMM floor | x eager |\n|---|---|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name}{' (default)' if name == default else ''} | {t['median']:.3f} | {t['p20']:.3f} | "
              f"{t['p80']:.3f} | {t['median'] / floor:.2f} | {t['median'] / times['eager']['median']:.2f} |")

    print(f"\npeak memory above inputs, fwd+bwd, {mem_shape.label()} (fresh process each)")
    print("| provider | MiB | x eager |\n|---|---|---|")
    mem = {name: peak_memory_in_subprocess(name, mem_shape) for name in providers(impls) if name != "gemm-floor"}
    for name, b in mem.items():
        print(f"| {name}{' (default)' if name == default else ''} | {b / 2**20:.0f} | {b / mem['eager']:.3f} |")


if __name__ == "__main__":
    main()
