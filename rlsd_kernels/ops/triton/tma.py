"""The tiled kernels of ``logprobs.py`` with Hopper-style operand loads (impl ``"triton-tma"``).

Same math, grid and deterministic two-kernel backward as ``logprobs.py`` (whose jit helpers they
share); what differs is how the GEMM operands reach the tensor cores and the tile shape:

- the hidden-state and weight tiles are read through TMA tensor descriptors (``TensorDescriptor``
  made on the host; out-of-range rows and columns arrive as zeros, so no load masks), which Triton
  lowers to ``cp.async.bulk.tensor`` on sm_90 instead of Ampere's ``cp.async`` pointer loads;
- 128 x 128 logits tiles (8 warps: two warpgroups of wgmma m64n128k16) instead of 64 x 128
  (m64n64k16), halving the W re-reads per row and doubling the wgmma width; the gradient GEMMs
  write 128-wide (dh) and 64-wide (dW) column slices instead of 32-wide ones.

The fp32 accumulators of dh and dW are read and written with pointers as in ``logprobs.py``.
A descriptor needs 16-byte-aligned row strides (H a multiple of 8 in bf16/fp16, of 4 in fp32);
other shapes, float64 and the JSD go to the backends ``TritonTmaHead`` falls back on. What this
costs and what it should gain, term by term: benchmarks/NOTES.md, section 7 (predicted only: no
GPU has run it yet).
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

from . import interpreted
from .logprobs import _accumulate, _dot_prec, _dz_tile, _load_row_stats, _online_softmax, _prep, _store_stats

BLOCKS = (128, 128, 32)  # BLOCK_N, BLOCK_V, BLOCK_H; 0 spills on sm_90 (tests/test_codegen_sm90.py)
BLOCK_G = {"dh": 128, "dw": 64}  # the gradient GEMMs' output width (dW at 128 spills 20 B)
NUM_WARPS = 8
NUM_STAGES = {"forward": 4, "dh": 3, "dw": 3}  # forward + teacher + bias spills 20-40 B at 2-3 stages, 0 at 4


@triton.jit
def _tile(desc, r0, c0, UPCAST: tl.constexpr):
    x = desc.load([r0, c0])
    if UPCAST:  # the interpreter's bf16 dot is unreliable
        x = x.to(tl.float32)
    return x


@triton.jit
def _logits(h_desc, w_desc, r0, v0, H,
            BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
            UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    """z tile [BLOCK_N, BLOCK_V] = h[r0:] @ W[v0:]^T (fp32 accumulation, no bias)."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        acc = tl.dot(_tile(h_desc, r0, h0, UPCAST), tl.trans(_tile(w_desc, v0, h0, UPCAST)), acc,
                     input_precision=DOT_PREC)
    return acc


@triton.jit
def _fwd_kernel(
    h_desc, ht_desc, w_desc, b_ptr, y_ptr,
    lp_ptr, lse_ptr, ent_ptr, lpt_ptr,
    N, V, H, inv_tau,
    HAS_BIAS: tl.constexpr, HAS_TEACHER: tl.constexpr, COMPUTE_ENT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Online log-sum-exp, target logit and entropy terms of the student (and the teacher, from the
    same W tiles) for one block of rows, sweeping the vocabulary (logprobs.py's forward)."""
    r0 = tl.program_id(0) * BLOCK_N
    rows = r0 + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    y = tl.load(y_ptr + rows64, mask=row_mask, other=-1).to(tl.int64)
    offs_v = tl.arange(0, BLOCK_V)

    m = tl.full((BLOCK_N,), -1.0e30, tl.float32)  # finite -inf: no inf-inf NaN
    l = tl.zeros((BLOCK_N,), tl.float32)
    t = tl.zeros((BLOCK_N,), tl.float32)
    tgt = tl.zeros((BLOCK_N,), tl.float32)
    m_t = tl.full((BLOCK_N,), -1.0e30, tl.float32)
    l_t = tl.zeros((BLOCK_N,), tl.float32)
    tgt_t = tl.zeros((BLOCK_N,), tl.float32)

    for v0 in range(0, V, BLOCK_V):
        cols64 = (v0 + offs_v).to(tl.int64)
        col_mask = cols64 < V
        acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        acc_t = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            wt = tl.trans(_tile(w_desc, v0, h0, UPCAST))
            acc = tl.dot(_tile(h_desc, r0, h0, UPCAST), wt, acc, input_precision=DOT_PREC)
            if HAS_TEACHER:
                acc_t = tl.dot(_tile(ht_desc, r0, h0, UPCAST), wt, acc_t, input_precision=DOT_PREC)
        m, l, t, tgt = _online_softmax(acc, b_ptr, cols64, col_mask, y, inv_tau, m, l, t, tgt, HAS_BIAS,
                                       COMPUTE_ENT)
        if HAS_TEACHER:
            m_t, l_t, _, tgt_t = _online_softmax(acc_t, b_ptr, cols64, col_mask, y, inv_tau, m_t, l_t, l_t, tgt_t,
                                                 HAS_BIAS, False)

    _store_stats(lp_ptr, lse_ptr, ent_ptr, lpt_ptr, rows64, row_mask, m, l, t, tgt, m_t, l_t, tgt_t, HAS_TEACHER,
                 COMPUTE_ENT)


@triton.jit
def _bwd_dh_kernel(
    h_desc, w_desc, wg_desc, b_ptr, y_ptr, lse_ptr, glp_ptr, gent_ptr, ent_ptr, dh_ptr,
    N, V, H, stride_dhn, inv_tau,
    HAS_BIAS: tl.constexpr, HAS_ENT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_G: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """dh for one block of rows (owned: deterministic read-modify-write), sweeping the vocabulary;
    the gradient GEMM dz @ W goes in BLOCK_G-wide column slices of dh (``wg_desc``: W in
    [BLOCK_V, BLOCK_G] tiles)."""
    r0 = tl.program_id(0) * BLOCK_N
    rows = r0 + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    y, lse, g_lp, g_ent, ent, active = _load_row_stats(y_ptr, lse_ptr, glp_ptr, gent_ptr, ent_ptr, rows64,
                                                       row_mask, HAS_ENT)
    if active:
        offs_v = tl.arange(0, BLOCK_V)
        offs_h = tl.arange(0, BLOCK_G)
        for v0 in range(0, V, BLOCK_V):
            cols64 = (v0 + offs_v).to(tl.int64)
            col_mask = cols64 < V
            acc = _logits(h_desc, w_desc, r0, v0, H, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, DOT_PREC)
            dz = _dz_tile(acc, b_ptr, cols64, col_mask, row_mask, y, lse, g_lp, g_ent, ent, inv_tau,
                          HAS_BIAS, HAS_ENT)
            for h0 in range(0, H, BLOCK_G):
                w = _tile(wg_desc, v0, h0, UPCAST)
                _accumulate(dh_ptr, rows64, row_mask, stride_dhn, h0 + offs_h, H, dz.to(w.dtype), w, DOT_PREC)
            tl.debug_barrier()  # the next vocab tile re-reads what this CTA just stored


@triton.jit
def _bwd_dw_kernel(
    h_desc, hg_desc, w_desc, b_ptr, y_ptr, lse_ptr, glp_ptr, gent_ptr, ent_ptr, dw_ptr, db_ptr,
    N, V, H, stride_dwv, inv_tau,
    HAS_BIAS: tl.constexpr, HAS_ENT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_G: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """dW (and db) for one block of vocabulary rows (owned), sweeping the token blocks; the
    gradient GEMM dz^T @ h goes in BLOCK_G-wide column slices (``hg_desc``: h in [BLOCK_N, BLOCK_G] tiles)."""
    v0 = tl.program_id(0) * BLOCK_V
    cols64 = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
    col_mask = cols64 < V
    offs_n = tl.arange(0, BLOCK_N)
    offs_h = tl.arange(0, BLOCK_G)
    db = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for r0 in range(0, N, BLOCK_N):
        rows64 = (r0 + offs_n).to(tl.int64)
        row_mask = rows64 < N
        y, lse, g_lp, g_ent, ent, active = _load_row_stats(y_ptr, lse_ptr, glp_ptr, gent_ptr, ent_ptr, rows64,
                                                           row_mask, HAS_ENT)
        if active:
            acc = _logits(h_desc, w_desc, r0, v0, H, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, DOT_PREC)
            dz = _dz_tile(acc, b_ptr, cols64, col_mask, row_mask, y, lse, g_lp, g_ent, ent, inv_tau,
                          HAS_BIAS, HAS_ENT)
            if HAS_BIAS:
                db += tl.sum(dz, axis=0)
            for h0 in range(0, H, BLOCK_G):
                x = _tile(hg_desc, r0, h0, UPCAST)
                _accumulate(dw_ptr, cols64, col_mask, stride_dwv, h0 + offs_h, H, tl.trans(dz.to(x.dtype)), x,
                            DOT_PREC)
            tl.debug_barrier()
    if HAS_BIAS:
        tl.store(db_ptr + cols64, db, mask=col_mask)


def supported(h: torch.Tensor, W: torch.Tensor) -> bool:
    """Whether the descriptors can be made: float32/bf16/fp16 and 16-byte-aligned rows of H."""
    dtype = W.dtype
    return dtype in (torch.float32, torch.bfloat16, torch.float16) and (h.shape[-1] * dtype.itemsize) % 16 == 0


def _descriptor(t, rows, cols=BLOCKS[2]):
    from triton.tools.tensor_descriptor import TensorDescriptor
    return TensorDescriptor.from_tensor(t, [rows, cols])


def _launch(kernel, stage, grid, *args, **constexprs):
    """``kernel`` (``stage``: "forward", "dh" or "dw") with the tile constants (``constexprs``: the rest)."""
    kernel[grid](*args, BLOCK_N=BLOCKS[0], BLOCK_V=BLOCKS[1], BLOCK_H=BLOCKS[2], UPCAST=interpreted(),
                 num_warps=NUM_WARPS, num_stages=NUM_STAGES[stage], **constexprs)


def linear_logprob_stats(h, W, b, y, inv_tau=1.0, compute_entropy=False, teacher_hidden=None):
    """As ``logprobs.linear_logprob_stats``: ``(lp, lse, ent or None, teacher lp or None)``, float32 [N]."""
    h, W, b, y, teacher_hidden, N, V, H, dtype = _prep(h, W, b, y, teacher_hidden)
    out = [torch.empty(N, device=h.device, dtype=torch.float32) for _ in range(4)]
    lp, lse, ent, lpt = out
    has_t = teacher_hidden is not None
    if N:
        h_desc = _descriptor(h, BLOCKS[0])
        _launch(_fwd_kernel, "forward", (triton.cdiv(N, BLOCKS[0]),), h_desc, _descriptor(teacher_hidden, BLOCKS[0]) if has_t
                else h_desc, _descriptor(W, BLOCKS[1]), lse if b is None else b, y, lp, lse, ent, lpt, N, V, H,
                float(inv_tau), HAS_BIAS=b is not None, HAS_TEACHER=has_t, COMPUTE_ENT=bool(compute_entropy),
                DOT_PREC=_dot_prec(dtype))
    return lp, lse, ent if compute_entropy else None, lpt if has_t else None


def linear_logprob_backward(h, W, b, y, inv_tau, lse, g_lp, g_ent=None, ent=None, *, need_weight_grad=True):
    """As ``logprobs.linear_logprob_backward`` (``ent`` is needed with ``g_ent``): ``(dh, dW or None,
    db or None)`` in float32, deterministic."""
    h, W, b, y, _, N, V, H, dtype = _prep(h, W, b, y)
    dev = h.device
    g_lp = g_lp.to(torch.float32).contiguous()
    lse = lse.to(torch.float32).contiguous()
    has_ent = g_ent is not None
    if has_ent:
        g_ent, ent = g_ent.to(torch.float32).contiguous(), ent.to(torch.float32).contiguous()
    dh = torch.zeros(N, H, device=dev, dtype=torch.float32)
    dW = torch.zeros(V, H, device=dev, dtype=torch.float32) if need_weight_grad else None
    db = torch.zeros(V, device=dev, dtype=torch.float32) if (b is not None and need_weight_grad) else None
    if N == 0:
        return dh, dW, db
    h_desc, w_desc = _descriptor(h, BLOCKS[0]), _descriptor(W, BLOCKS[1])
    b_arg, ge_arg, e_arg = (lse if b is None else b), (g_ent if has_ent else g_lp), (ent if has_ent else lse)
    common = dict(HAS_BIAS=b is not None, HAS_ENT=has_ent, DOT_PREC=_dot_prec(dtype))
    _launch(_bwd_dh_kernel, "dh", (triton.cdiv(N, BLOCKS[0]),), h_desc, w_desc, _descriptor(W, BLOCKS[1], BLOCK_G["dh"]),
            b_arg, y, lse, g_lp, ge_arg, e_arg, dh, N, V, H, dh.stride(0), float(inv_tau), BLOCK_G=BLOCK_G["dh"],
            **common)
    if need_weight_grad:
        _launch(_bwd_dw_kernel, "dw", (triton.cdiv(V, BLOCKS[1]),), h_desc, _descriptor(h, BLOCKS[0], BLOCK_G["dw"]), w_desc,
                b_arg, y, lse, g_lp, ge_arg, e_arg, dW, lse if db is None else db, N, V, H, dW.stride(0),
                float(inv_tau), BLOCK_G=BLOCK_G["dw"], **common)
    return dh, dW, db
