"""What the GPU path's Triton kernels compile to on a Hopper GPU, found without one.

Each kernel is compiled for ``GPUTarget("cuda", 90, 32)`` (PTX ``sm_90a``, a cubin through
Triton's bundled ``ptxas``) with the specialisation a launch at the given head would get (Triton's
own argument binder: dtypes for pointers, real ints for sizes, host tensor descriptors on
``meta`` tensors), and read back: registers, spill bytes and shared memory from ``ptxas -v`` and
the kernel's metadata, the wgmma shapes and TMA loads from the PTX, the SASS instructions from
Triton's bundled ``cuobjdump``. Static facts, not speed: only a GPU times a kernel.

    python -m benchmarks.codegen          # the table of benchmarks/NOTES.md, section 7
    python -m benchmarks.codegen --json   # the same as JSON (what tests/test_codegen_sm90.py reads)

Kernels are compiled, not interpreted: run it with TRITON_INTERPRET unset (:func:`in_subprocess`
does so for a process that interprets them).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import torch

SMEM_LIMIT = 232448  # bytes of shared memory one block may use on sm_90 (227 KB)
HEADS = {"Qwen2.5-7B": (8192, 152064, 3584), "Llama-3-8B": (16384, 128256, 4096),
         "Qwen2.5-0.5B": (32768, 151936, 896)}  # (tokens, vocabulary, hidden) of the README's H100 table


def toolchain() -> str | None:
    """The folder of Triton's bundled ptxas and cuobjdump, or None if they are missing."""
    try:
        import triton
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    ok = all(os.access(os.path.join(path, tool), os.X_OK) for tool in ("ptxas", "cuobjdump"))
    return path if ok else None


def compile_sm90(jitfn, args, constexprs):
    """``jitfn`` compiled for sm_90a as a launch with ``args`` / ``constexprs`` would specialise it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import MockTensor, create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(jitfn.signature, jitfn.params, backend)
    args = [MockTensor(a) if isinstance(a, torch.dtype) else a for a in args]
    bound, spec, opts = binder(*args, **constexprs)
    options, signature, consts, attrs = jitfn._pack_args(backend, constexprs, bound, spec, opts)
    return triton.compile(ASTSource(jitfn, signature, consts, attrs), target=target, options=options.__dict__)


@dataclass(frozen=True)
class Codegen:
    """What one compiled kernel uses and emits."""

    kernel: str
    registers: int
    spill_bytes: int      # stores + loads to local memory
    smem: int             # bytes of shared memory per block
    warps: int
    wgmma: dict           # shape -> count in the PTX, e.g. {"m64n128k16": 4}
    tma_loads: int        # cp.async.bulk.tensor in the PTX
    cp_async: int         # Ampere-style cp.async in the PTX
    sass: dict            # HGMMA, UTMALDG, LDGSTS, LDL/STL counts in the SASS

    @property
    def widest_wgmma(self) -> int:
        return max((int(re.search(r"n(\d+)", s).group(1)) for s in self.wgmma), default=0)

    def row(self) -> str:
        shapes = " ".join(f"{s} x{n}" for s, n in self.wgmma.items()) or "none"
        return (f"| {self.kernel} | {self.registers} | {self.spill_bytes} | {self.smem // 1024} KB | {self.warps} | "
                f"{shapes} | {self.tma_loads} | {self.cp_async} |")


def inspect(name: str, compiled) -> Codegen:
    bin_dir = toolchain()
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run([os.path.join(bin_dir, "ptxas"), "-v", "--gpu-name=sm_90a", src, "-o",
                              os.path.join(d, "k.cubin")], capture_output=True, text=True, check=True).stderr
        cubin = os.path.join(d, "c.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        sass = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
    stores, loads = map(int, re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
    ops = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass)
    counts = collections.Counter(ops)
    return Codegen(
        kernel=name, registers=int(re.search(r"Used (\d+) registers", log).group(1)), spill_bytes=stores + loads,
        smem=compiled.metadata.shared, warps=compiled.metadata.num_warps,
        wgmma=dict(collections.Counter(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx))),
        tma_loads=len(re.findall(r"cp\.async\.bulk\.tensor", ptx)),
        cp_async=len(re.findall(r"cp\.async\.c[ag]\.", ptx)),
        sass={k: counts[k] for k in ("HGMMA", "UTMALDG", "LDGSTS")} | {"LDL/STL": counts["LDL"] + counts["STL"]})


def kernels(head: tuple, dtype=torch.bfloat16, block_g: dict | None = None):
    """(name, jit function, args, constexprs) of every Triton kernel of the GPU path at ``head``
    (tokens, vocabulary, hidden), as the launchers specialise them with a bias and the entropy (the
    larger specialisations); ``block_g`` replaces entries
    of ``tma.BLOCK_G`` (the gradient GEMMs' widths)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    from rlsd_kernels.ops.triton import epilogue, logprobs, tma

    N, V, H = head
    f32, i64 = torch.float32, torch.int64

    def desc(rows, cols, block):
        return TensorDescriptor(torch.empty(rows, cols, dtype=dtype, device="meta"), [rows, cols], [cols, 1], block)

    bn, bv, bh = tma.BLOCKS
    g = dict(tma.BLOCK_G, **(block_g or {}))
    hd, wd = desc(N, H, [bn, bh]), desc(V, H, [bv, bh])
    hg, wg = desc(N, H, [bn, g["dw"]]), desc(V, H, [bv, g["dh"]])
    tma_c = dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh, UPCAST=False, DOT_PREC="tf32", num_warps=tma.NUM_WARPS)
    tiled_c = dict(BLOCK_N=64, BLOCK_V=128, BLOCK_H=32, UPCAST=False, DOT_PREC="tf32", num_warps=8)
    out = []
    for teacher in (False, True):
        out.append((f"triton-tma forward{' + teacher' if teacher else ''}", tma._fwd_kernel,
                    [hd, hd, wd, f32, i64, f32, f32, f32, f32, N, V, H, 1.0],
                    dict(HAS_BIAS=True, HAS_TEACHER=teacher, COMPUTE_ENT=True, num_stages=tma.NUM_STAGES["forward"],
                         **tma_c)))
    out.append(("triton-tma dh", tma._bwd_dh_kernel, [hd, wd, wg, f32, i64, f32, f32, f32, f32, f32, N, V, H, H, 1.0],
                dict(HAS_BIAS=True, HAS_ENT=True, BLOCK_G=g["dh"], num_stages=tma.NUM_STAGES["dh"], **tma_c)))
    out.append(("triton-tma dW", tma._bwd_dw_kernel,
                [hd, hg, wd, f32, i64, f32, f32, f32, f32, f32, f32, N, V, H, H, 1.0],
                dict(HAS_BIAS=True, HAS_ENT=True, BLOCK_G=g["dw"], num_stages=tma.NUM_STAGES["dw"], **tma_c)))
    out.append(("triton-tiled forward + teacher", logprobs._linear_logprob_fwd_kernel,
                [dtype, dtype, dtype, f32, i64, f32, f32, f32, f32, N, V, H, H, H, H, 1.0],
                dict(HAS_BIAS=True, HAS_TEACHER=True, COMPUTE_ENT=True, **tiled_c)))
    out.append(("triton-tiled dh", logprobs._linear_logprob_bwd_dh_kernel,
                [dtype, dtype, f32, i64, f32, f32, f32, f32, f32, N, V, H, H, H, H, 1.0],
                dict(HAS_BIAS=True, HAS_ENT=True, **tiled_c)))
    out.append(("triton-tiled dW", logprobs._linear_logprob_bwd_dw_kernel,
                [dtype, dtype, f32, i64, f32, f32, f32, f32, f32, f32, N, V, H, H, H, H, 1.0],
                dict(HAS_BIAS=True, HAS_ENT=True, **tiled_c)))
    out.append(("triton epilogue: row statistics", epilogue._row_stats_kernel,
                [f32, i64, f32, f32, f32, V, V, 1.0], dict(COMPUTE_ENT=True, BLOCK_V=epilogue.BLOCK_V, num_warps=8)))
    out.append(("triton epilogue: dz", epilogue._dlogits_kernel,
                [f32, dtype, i64, f32, f32, f32, f32, V, V, V, 1.0],
                dict(HAS_ENT=True, BLOCK_V=epilogue.BLOCK_V, num_warps=8)))
    return out


def report(head: tuple, block_g: dict | None = None) -> list:
    """[Codegen] of :func:`kernels` at ``head`` (``block_g`` as there)."""
    return [inspect(name, compile_sm90(fn, args, c)) for name, fn, args, c in kernels(head, block_g=block_g)]


def in_subprocess() -> dict:
    """{head name: [Codegen]} from ``python -m benchmarks.codegen --json`` in a process of its own
    (with TRITON_INTERPRET unset, so the kernels are compiled whatever this process does)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "benchmarks.codegen", "--json"], cwd=root, env=env,
                          capture_output=True, text=True, check=True)
    return {head: [Codegen(**row) for row in rows] for head, rows in json.loads(done.stdout).items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print {head: [rows]} as JSON")
    as_json = ap.parse_args().json
    if as_json:
        print(json.dumps({name: [dataclasses.asdict(r) for r in report(head)] for name, head in HEADS.items()}))
        return
    import triton

    print(f"triton {triton.__version__}, sm_90a, bf16; compiled on the CPU (no GPU)")
    for name, head in HEADS.items():
        print(f"\n{name}: N {head[0]}, V {head[1]}, H {head[2]}\n")
        print("| kernel | registers | spill bytes | shared memory | warps | wgmma | TMA loads | cp.async |")
        print("|---|---|---|---|---|---|---|---|")
        for row in report(head):
            print(row.row())


if __name__ == "__main__":
    main()
