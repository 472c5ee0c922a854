"""Where the GPU time of the fused RLSD loss goes: `python -m benchmarks.gpu_profile [--quick]`.

For each GPU target head (bf16, CUDA): the GEMM alone (bf16 and float32 results), the fused loss
with several memory budgets, its statistics and gradient sweeps apart, the tiled impls
(``triton-tiled``, ``triton-tma`` and the latter's forward and backward kernels apart),
`fused_linear_logprobs` forward + backward next to cut-cross-entropy's `linear_cross_entropy` (when installed), and the
ten costliest kernels of one fused step (torch.profiler). CUDA events, median of ``--reps`` after
a warm-up; peak = max allocated above the inputs. The notes in benchmarks/NOTES.md cite its output.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import rlsd_kernels as rk
from rlsd_kernels.ops import get_backend
from rlsd_kernels.ops.base import HeadCall

TARGETS = {"qwen2.5-7b-8k": (8192, 3584, 152064), "llama-3-8b-16k": (16384, 4096, 128256),
           "qwen2.5-0.5b-32k": (32768, 896, 151936)}
MiB = 1 << 20


def timed(fn, reps):
    """(median ms, peak MiB above what was allocated before) of fn()."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / MiB
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), peak


def inputs(N, H, V, T=1024):
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(N, H, generator=g, device="cuda").bfloat16()
    ht = (h.float() + 0.3 * torch.randn(N, H, generator=g, device="cuda")).bfloat16()
    w = (torch.randn(V, H, generator=g, device="cuda") / H ** 0.5 * 2).bfloat16()
    y = torch.randint(0, V, (N,), generator=g, device="cuda")
    adv = torch.randn(N // T, generator=g, device="cuda")
    return h, ht, w, y, adv, T


def cases(h, ht, w, y, adv, T):
    N, H = h.shape
    B = N // T
    mask = torch.ones(B, T, device="cuda")
    leaves = lambda: (h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_())  # noqa: E731

    def loss(budget=None, impl="auto"):
        def run():
            hh, ww = leaves()
            out, _ = rk.rlsd_loss(hh.view(B, T, H), ww, y.view(B, T), adv, mask, teacher_hidden=ht.view(B, T, H),
                                  memory_budget=budget, impl=impl)
            out.backward()
        return run

    backend, tma = get_backend("triton"), get_backend("triton-tma")
    call = HeadCall(h, w, None, y, 1.0, teacher_hidden=ht, need_grad=True, need_weight_grad=True)
    stats, tma_stats = backend.stats(call), tma.stats(call)
    g_lp = torch.randn(N, device="cuda") / N

    def logprobs():
        hh, ww = leaves()
        lp, _ = rk.fused_linear_logprobs(hh, ww, y)
        lp.backward(g_lp)

    def cce():
        from cut_cross_entropy import linear_cross_entropy
        hh, ww = leaves()
        (-linear_cross_entropy(hh, ww, y, reduction="none", impl="cce")).backward(g_lp)

    z32 = torch.empty(N, w.shape[0], dtype=torch.float32, device="cuda") if N * w.shape[0] * 4 < 24 << 30 else None
    out = {
        "gemm h W^T (bf16 out)": lambda: h @ w.T,
        "rlsd loss, default budget": loss(),
        **{f"rlsd loss, budget {b >> 20} MiB": loss(b) for b in (256 << 20, 1 << 30, 2 << 30)},
        "statistics sweep (student + teacher)": lambda: backend.stats(call),
        "gradient sweep": lambda: backend.backward(call, stats, g_lp, None),
        "fused_linear_logprobs fwd+bwd": logprobs,
        "rlsd loss, impl triton-tiled": loss(impl="triton-tiled"),
        "rlsd loss, impl triton-tma": loss(impl="triton-tma"),
        "triton-tma forward (student + teacher)": lambda: tma.stats(call),
        "triton-tma backward (dh and dW kernels)": lambda: tma.backward(call, tma_stats, g_lp, None),
    }
    if z32 is not None:
        out["gemm h W^T (fp32 out)"] = lambda: torch.mm(h, w.T, out_dtype=torch.float32, out=z32)
    try:
        import cut_cross_entropy  # noqa: F401
        out["cce linear_cross_entropy fwd+bwd"] = cce
    except ImportError:
        pass
    return out, loss()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_profile", description=__doc__)
    ap.add_argument("targets", nargs="*", default=list(TARGETS))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a smoke run)")
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args(argv)
    shapes = {"quick": (2048, 256, 8192)} if args.quick else {k: TARGETS[k] for k in args.targets}
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    for name, (N, H, V) in shapes.items():
        x = inputs(N, H, V, T=min(1024, N))
        floor_ms = None
        table, step = cases(*x)
        print(f"\n## {name}: N={N} H={H} V={V} bf16", flush=True)
        for label, fn in table.items():
            try:
                ms, peak = timed(fn, args.reps)
            except Exception as ex:  # noqa: BLE001 (a row that failed says why)
                print(f"{label:40s} ERROR {type(ex).__name__}: {str(ex)[:300]}", flush=True)
                continue
            if label.startswith("gemm h W^T (bf16"):
                floor_ms = 4 * ms
            ratio = f"{ms / floor_ms:6.2f}x floor" if floor_ms and "gemm" not in label else ""
            print(f"{label:40s} {ms:9.2f} ms {peak:9.0f} MiB {ratio}", flush=True)
            torch.cuda.empty_cache()
        if args.no_profile:
            continue
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70),
              flush=True)
        del x, table, step
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
