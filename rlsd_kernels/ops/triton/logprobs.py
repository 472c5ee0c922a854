"""Triton kernels: fused linear (LM head) + log-softmax statistics and their backward.

Math: see ``rlsd_kernels/ops/CONTRACT.md``.  With z = h W^T + b (fp32 accumulation) and
s = z * inv_tau, the kernels compute per token row

    lse = logsumexp_v s,   lp = s[y] - lse,   ent = lse - sum_v p s

and, in the backward, dz = inv_tau * (g_lp (1[v=y] - p) - g_ent p (s - lse + ent)) followed by
dh = dz @ W, dW = dz^T @ h, db = sum_t dz.  The [N, V] logits are NEVER materialised: every
kernel works on [BLOCK_N, BLOCK_V] register tiles produced by a loop over H in BLOCK_H slices.

Forward (``linear_logprob_stats``): one kernel, grid = cdiv(N, BLOCK_N).  Each program owns a block
of rows and sweeps the vocabulary in BLOCK_V tiles with an online log-sum-exp.  The entropy is
accumulated in the numerically friendly form  T = sum_v e^{s-m} (s-m)  (rescaled as the running max
m moves: T' = a (T + (m - m') l), a = e^{m-m'}), so that ent = log l - T / l.  When a teacher hidden
state is given, every loaded W tile is used for both the student and the teacher dot products.

Backward (``linear_logprob_backward``): two kernels, no atomics, bitwise reproducible.
    - dh kernel, grid = cdiv(N, BLOCK_N): a program owns BLOCK_N rows of dh, sweeps the vocab tiles,
      recomputes the logits tile, forms dz and does dh[rows, hslice] += dz @ W[tile, hslice] for every
      H slice as a read-modify-write of rows only it owns (``tl.debug_barrier`` orders the RMW
      across the threads of the CTA).
    - dW/db kernel, grid = cdiv(V, BLOCK_V): a program owns BLOCK_V rows of dW (and db), sweeps the
      token blocks, recomputes the same tile, and does dW[tile, hslice] += dz^T @ h[rows, hslice].
  Cost: the logits are recomputed twice (4 GEMM-sized passes instead of 3).

Token blocks whose g_lp and g_ent are all zero are skipped (callers normally compact rows anyway).

Precision: fp32 inputs use ``input_precision="ieee"`` dots (no TF32); bf16/fp16
inputs use native tensor-core dots with fp32 accumulation, and dz is cast to the input dtype for
the two gradient GEMMs (as usual for bf16 training).  Under the Triton interpreter
(TRITON_INTERPRET=1) every tile is upcast to fp32 before ``tl.dot`` because the interpreter's bf16
dot silently returns garbage.

Mixed dtypes: h / teacher_hidden are cast to W.dtype (W, the big operand, is never copied).
Targets must be in [0, V); an out-of-range target gives a meaningless lp (no gather happens) but
does not affect lse / ent.  All outputs are float32.
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

from . import interpreted

__all__ = ["linear_logprob_stats", "linear_logprob_backward"]


# ----------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _load_tile(ptr, rows64, row_mask, stride, hcols, hmask, UPCAST: tl.constexpr):
    x = tl.load(
        ptr + rows64[:, None] * stride + hcols[None, :],
        mask=row_mask[:, None] & hmask[None, :],
        other=0.0,
    )
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _logits_tile(
    h_ptr, stride_hn, rows64, row_mask,
    w_ptr, stride_wv, cols64, col_mask,
    H,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """z tile [BLOCK_N, BLOCK_V] = h[rows] @ W[cols]^T (fp32 accumulation, no bias)."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    offs_h = tl.arange(0, BLOCK_H)
    for h0 in range(0, H, BLOCK_H):
        hcols = h0 + offs_h
        hmask = hcols < H
        x = _load_tile(h_ptr, rows64, row_mask, stride_hn, hcols, hmask, UPCAST)
        w = _load_tile(w_ptr, cols64, col_mask, stride_wv, hcols, hmask, UPCAST)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PREC)
    return acc


@triton.jit
def _dz_tile(
    acc, b_ptr, cols64, col_mask, row_mask, y, lse, g_lp, g_ent, ent, inv_tau,
    HAS_BIAS: tl.constexpr, HAS_ENT: tl.constexpr,
):
    """dz tile (fp32) from the raw logits tile; zero outside the valid rows / columns."""
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols64, mask=col_mask, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    s = acc * inv_tau
    valid = row_mask[:, None] & col_mask[None, :]
    d = tl.where(valid, s - lse[:, None], 0.0)
    p = tl.where(valid, tl.exp(d), 0.0)
    onehot = tl.where(cols64[None, :] == y[:, None], 1.0, 0.0)
    dz = g_lp[:, None] * (onehot - p)
    if HAS_ENT:
        dz = dz - g_ent[:, None] * p * (d + ent[:, None])
    dz = tl.where(valid, dz * inv_tau, 0.0)
    return dz


@triton.jit
def _online_softmax(acc, b_ptr, cols64, col_mask, y, inv_tau, m, l, t, tgt,
                    HAS_BIAS: tl.constexpr, COMPUTE_ENT: tl.constexpr):
    """One vocabulary tile of the online statistics of s = (acc + b) * inv_tau per row: the running
    max m, sum-exp l, entropy term t = sum_v e^{s-m} (s-m) (rescaled as m moves:
    t' = a (t + (m - m') l), a = e^{m-m'}) and the target's s. Returns the updated (m, l, t, tgt)."""
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + cols64, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    s = tl.where(col_mask[None, :], acc * inv_tau, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    alpha = tl.exp(m - m_new)
    d = s - m_new[:, None]
    e = tl.exp(d)  # 0 on masked columns
    if COMPUTE_ENT:
        t = alpha * (t + (m - m_new) * l) + tl.sum(e * tl.where(col_mask[None, :], d, 0.0), axis=1)  # no 0 * -inf
    l = l * alpha + tl.sum(e, axis=1)
    tgt += tl.sum(tl.where(cols64[None, :] == y[:, None], s, 0.0), axis=1)
    return m_new, l, t, tgt


@triton.jit
def _store_stats(lp_ptr, lse_ptr, ent_ptr, lpt_ptr, rows64, row_mask, m, l, t, tgt, m_t, l_t, tgt_t,
                 HAS_TEACHER: tl.constexpr, COMPUTE_ENT: tl.constexpr):
    """lse = m + log l, lp = tgt - lse, ent = log l - t / l and the teacher's lp, per row."""
    log_l = tl.log(l)
    lse = m + log_l
    tl.store(lse_ptr + rows64, lse, mask=row_mask)
    tl.store(lp_ptr + rows64, tgt - lse, mask=row_mask)
    if COMPUTE_ENT:
        tl.store(ent_ptr + rows64, log_l - t / l, mask=row_mask)
    if HAS_TEACHER:
        tl.store(lpt_ptr + rows64, tgt_t - (m_t + tl.log(l_t)), mask=row_mask)


# ----------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _linear_logprob_fwd_kernel(
    h_ptr, ht_ptr, w_ptr, b_ptr, y_ptr,
    lp_ptr, lse_ptr, ent_ptr, lpt_ptr,
    N, V, H,
    stride_hn, stride_htn, stride_wv,
    inv_tau,
    HAS_BIAS: tl.constexpr, HAS_TEACHER: tl.constexpr, COMPUTE_ENT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    y = tl.load(y_ptr + rows64, mask=row_mask, other=-1).to(tl.int64)

    offs_v = tl.arange(0, BLOCK_V)
    offs_h = tl.arange(0, BLOCK_H)

    m = tl.full((BLOCK_N,), -1.0e30, tl.float32)  # finite -inf: no inf-inf NaN
    l = tl.zeros((BLOCK_N,), tl.float32)
    t = tl.zeros((BLOCK_N,), tl.float32)
    tgt = tl.zeros((BLOCK_N,), tl.float32)
    m_t = tl.full((BLOCK_N,), -1.0e30, tl.float32)  # finite -inf: no inf-inf NaN
    l_t = tl.zeros((BLOCK_N,), tl.float32)
    tgt_t = tl.zeros((BLOCK_N,), tl.float32)

    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs_v
        col_mask = cols < V
        cols64 = cols.to(tl.int64)

        acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        acc_t = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            hcols = h0 + offs_h
            hmask = hcols < H
            w = _load_tile(w_ptr, cols64, col_mask, stride_wv, hcols, hmask, UPCAST)
            wt = tl.trans(w)
            x = _load_tile(h_ptr, rows64, row_mask, stride_hn, hcols, hmask, UPCAST)
            acc = tl.dot(x, wt, acc, input_precision=DOT_PREC)
            if HAS_TEACHER:
                xt = _load_tile(ht_ptr, rows64, row_mask, stride_htn, hcols, hmask, UPCAST)
                acc_t = tl.dot(xt, wt, acc_t, input_precision=DOT_PREC)

        m, l, t, tgt = _online_softmax(acc, b_ptr, cols64, col_mask, y, inv_tau, m, l, t, tgt, HAS_BIAS,
                                       COMPUTE_ENT)
        if HAS_TEACHER:  # the same W tiles
            m_t, l_t, _, tgt_t = _online_softmax(acc_t, b_ptr, cols64, col_mask, y, inv_tau, m_t, l_t, l_t, tgt_t,
                                                 HAS_BIAS, False)

    _store_stats(lp_ptr, lse_ptr, ent_ptr, lpt_ptr, rows64, row_mask, m, l, t, tgt, m_t, l_t, tgt_t, HAS_TEACHER,
                 COMPUTE_ENT)


# ----------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------


@triton.jit
def _load_row_stats(y_ptr, lse_ptr, glp_ptr, gent_ptr, ent_ptr, rows64, row_mask, HAS_ENT: tl.constexpr):
    y = tl.load(y_ptr + rows64, mask=row_mask, other=-1).to(tl.int64)
    lse = tl.load(lse_ptr + rows64, mask=row_mask, other=0.0).to(tl.float32)
    g_lp = tl.load(glp_ptr + rows64, mask=row_mask, other=0.0).to(tl.float32)
    if HAS_ENT:
        g_ent = tl.load(gent_ptr + rows64, mask=row_mask, other=0.0).to(tl.float32)
        ent = tl.load(ent_ptr + rows64, mask=row_mask, other=0.0).to(tl.float32)
    else:
        g_ent = tl.zeros_like(g_lp)
        ent = tl.zeros_like(g_lp)
    active = tl.max(tl.abs(g_lp) + tl.abs(g_ent), axis=0) != 0.0
    return y, lse, g_lp, g_ent, ent, active


@triton.jit
def _accumulate(out_ptr, rows64, row_mask, stride, hcols, H, a, b, DOT_PREC: tl.constexpr):
    """out[rows, hcols] += a @ b: a float32 read-modify-write of rows only this program owns."""
    ptrs = out_ptr + rows64[:, None] * stride + hcols[None, :]
    mask = row_mask[:, None] & (hcols < H)[None, :]
    tl.store(ptrs, tl.dot(a, b, tl.load(ptrs, mask=mask, other=0.0), input_precision=DOT_PREC), mask=mask)


@triton.jit
def _linear_logprob_bwd_dh_kernel(
    h_ptr, w_ptr, b_ptr, y_ptr, lse_ptr, glp_ptr, gent_ptr, ent_ptr, dh_ptr,
    N, V, H,
    stride_hn, stride_wv, stride_dhn,
    inv_tau,
    HAS_BIAS: tl.constexpr, HAS_ENT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Grid over token blocks; dh rows are owned by one program (deterministic RMW)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows64 = rows.to(tl.int64)
    y, lse, g_lp, g_ent, ent, active = _load_row_stats(
        y_ptr, lse_ptr, glp_ptr, gent_ptr, ent_ptr, rows64, row_mask, HAS_ENT)
    if active:
        offs_v = tl.arange(0, BLOCK_V)
        offs_h = tl.arange(0, BLOCK_H)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + offs_v
            col_mask = cols < V
            cols64 = cols.to(tl.int64)
            acc = _logits_tile(h_ptr, stride_hn, rows64, row_mask, w_ptr, stride_wv, cols64, col_mask,
                               H, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, DOT_PREC)
            dz = _dz_tile(acc, b_ptr, cols64, col_mask, row_mask, y, lse, g_lp, g_ent, ent, inv_tau,
                          HAS_BIAS, HAS_ENT)
            for h0 in range(0, H, BLOCK_H):
                hcols = h0 + offs_h
                hmask = hcols < H
                w = _load_tile(w_ptr, cols64, col_mask, stride_wv, hcols, hmask, UPCAST)
                _accumulate(dh_ptr, rows64, row_mask, stride_dhn, hcols, H, dz.to(w.dtype), w, DOT_PREC)
            # the next vocab tile re-reads what this CTA just stored (possibly from other threads)
            tl.debug_barrier()


@triton.jit
def _linear_logprob_bwd_dw_kernel(
    h_ptr, w_ptr, b_ptr, y_ptr, lse_ptr, glp_ptr, gent_ptr, ent_ptr, dw_ptr, db_ptr,
    N, V, H,
    stride_hn, stride_wv, stride_dwv,
    inv_tau,
    HAS_BIAS: tl.constexpr, HAS_ENT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Grid over vocab blocks; dW rows / db entries are owned by one program (deterministic RMW)."""
    pid = tl.program_id(0)
    cols = pid * BLOCK_V + tl.arange(0, BLOCK_V)
    col_mask = cols < V
    cols64 = cols.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_h = tl.arange(0, BLOCK_H)
    db = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + offs_n
        row_mask = rows < N
        rows64 = rows.to(tl.int64)
        y, lse, g_lp, g_ent, ent, active = _load_row_stats(
            y_ptr, lse_ptr, glp_ptr, gent_ptr, ent_ptr, rows64, row_mask, HAS_ENT)
        if active:
            acc = _logits_tile(h_ptr, stride_hn, rows64, row_mask, w_ptr, stride_wv, cols64, col_mask,
                               H, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, DOT_PREC)
            dz = _dz_tile(acc, b_ptr, cols64, col_mask, row_mask, y, lse, g_lp, g_ent, ent, inv_tau,
                          HAS_BIAS, HAS_ENT)
            if HAS_BIAS:
                db += tl.sum(dz, axis=0)
            for h0 in range(0, H, BLOCK_H):
                hcols = h0 + offs_h
                hmask = hcols < H
                x = _load_tile(h_ptr, rows64, row_mask, stride_hn, hcols, hmask, UPCAST)
                _accumulate(dw_ptr, cols64, col_mask, stride_dwv, hcols, H, tl.trans(dz.to(x.dtype)), x, DOT_PREC)
            tl.debug_barrier()
    if HAS_BIAS:
        tl.store(db_ptr + cols64, db, mask=col_mask)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _check_block(name: str, val: int) -> int:
    val = int(val)
    if val < 16 or val & (val - 1):
        raise ValueError(f"{name} must be a power of two >= 16 (tl.dot minimum), got {val}")
    return val


def _prep(h, W, b, y, teacher_hidden=None):
    if h.dim() != 2 or W.dim() != 2 or h.shape[1] != W.shape[1]:
        raise ValueError(f"expected h [N, H] and W [V, H], got {tuple(h.shape)} and {tuple(W.shape)}")
    N, H = h.shape
    V = W.shape[0]
    if y.shape != (N,):
        raise ValueError(f"expected y [N]={N}, got {tuple(y.shape)}")
    if b is not None and b.shape != (V,):
        raise ValueError(f"expected b [V]={V}, got {tuple(b.shape)}")
    if teacher_hidden is not None and teacher_hidden.shape != h.shape:
        raise ValueError(f"teacher_hidden must have the shape of h, got {tuple(teacher_hidden.shape)}")
    dev = h.device
    for name, t in (("W", W), ("b", b), ("y", y), ("teacher_hidden", teacher_hidden)):
        if t is not None and t.device != dev:
            raise ValueError(f"{name} is on {t.device}, h on {dev}")
    dtypes = {h.dtype, W.dtype} | ({teacher_hidden.dtype} if teacher_hidden is not None else set())
    for dt in dtypes:
        if dt not in _FLOAT_DTYPES:
            raise TypeError(f"unsupported dtype {dt}; expected float32/bfloat16/float16")
    dtype = W.dtype  # mixed inputs: hidden states are cast to the head's dtype (never copy W)
    h = h.to(dtype).contiguous()
    W = W.to(dtype).contiguous()
    if teacher_hidden is not None:
        teacher_hidden = teacher_hidden.to(dtype).contiguous()
    if b is not None:
        b = b.contiguous()
    y = y.to(torch.int64).contiguous()
    return h, W, b, y, teacher_hidden, N, V, H, dtype


def _dot_prec(dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # ignored by tl.dot for 16-bit inputs


def _blocks(N, H, block_n, block_v, block_h):
    # GPU defaults: 64 x 128 logits tile, 32-wide H slices, 8 warps.  Checked offline with
    # triton.compile + ptxas -v (bf16, sm_80 and sm_90a): 0 register spills for every kernel (except
    # 96 B for the teacher forward on sm_80), <= 48 KB shared (bf16) / <= 96 KB (fp32, 3 stages).
    # BLOCK_H = 64 spills 300-800 B in the forward-with-teacher and dW kernels.
    dflt_n, dflt_v, dflt_h = 64, 128, 32
    bn = _check_block("block_n", block_n if block_n is not None else min(dflt_n, max(16, _next_pow2(N))))
    bv = _check_block("block_v", block_v if block_v is not None else dflt_v)
    bh = _check_block("block_h", block_h if block_h is not None else min(dflt_h, max(16, _next_pow2(H))))
    return bn, bv, bh


def _num_warps(num_warps, bn, bv, n_acc=1) -> int:
    return int(num_warps) if num_warps is not None else (8 if bn * bv * n_acc >= 64 * 128 else 4)


def linear_logprob_stats(
    h: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor | None,
    y: torch.Tensor,
    inv_tau: float = 1.0,
    compute_entropy: bool = False,
    teacher_hidden: torch.Tensor | None = None,
    *,
    block_n: int | None = None,
    block_v: int | None = None,
    block_h: int | None = None,
    num_warps: int | None = None,
):
    """Fused z = h W^T + b, s = z * inv_tau statistics, without materialising [N, V].

    Returns ``(lp, lse, ent_or_None, teacher_logprobs_or_None)``, all float32 [N]. ``teacher_hidden`` ([N, H],
    same head W / b / targets y / temperature) is processed in the same kernel, sharing W tile loads.
    """
    h, W, b, y, teacher_hidden, N, V, H, dtype = _prep(h, W, b, y, teacher_hidden)
    dev = h.device
    lp = torch.empty(N, device=dev, dtype=torch.float32)
    lse = torch.empty(N, device=dev, dtype=torch.float32)
    ent = torch.empty(N, device=dev, dtype=torch.float32) if compute_entropy else None
    lpt = torch.empty(N, device=dev, dtype=torch.float32) if teacher_hidden is not None else None
    if N == 0:
        return lp, lse, ent, lpt
    if V == 0:
        raise ValueError("empty vocabulary")
    bn, bv, bh = _blocks(N, H, block_n, block_v, block_h)
    has_t = teacher_hidden is not None
    grid = (triton.cdiv(N, bn),)
    _linear_logprob_fwd_kernel[grid](
        h, teacher_hidden if has_t else h, W, b if b is not None else lp, y,
        lp, lse, ent if ent is not None else lp, lpt if has_t else lp,
        N, V, H,
        h.stride(0), (teacher_hidden if has_t else h).stride(0), W.stride(0),
        float(inv_tau),
        HAS_BIAS=b is not None, HAS_TEACHER=has_t, COMPUTE_ENT=bool(compute_entropy),
        BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh,
        UPCAST=interpreted(), DOT_PREC=_dot_prec(dtype),
        num_warps=_num_warps(num_warps, bn, bv, 2 if has_t else 1),
    )
    return lp, lse, ent, lpt


def linear_logprob_backward(
    h: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor | None,
    y: torch.Tensor,
    inv_tau: float,
    lse: torch.Tensor,
    g_lp: torch.Tensor | None,
    g_ent: torch.Tensor | None = None,
    ent: torch.Tensor | None = None,
    *,
    need_weight_grad: bool = True,
    block_n: int | None = None,
    block_v: int | None = None,
    block_h: int | None = None,
    num_warps: int | None = None,
):
    """Gradients of L(lp, ent) w.r.t. h, W, b given g_lp = dL/dlp, g_ent = dL/dent (float32 [N]).

    ``lse`` (and ``ent`` when ``g_ent`` is given) are the forward statistics of the same inputs;
    if ``g_ent`` is given without ``ent``, the entropy is recomputed with the forward kernel.
    Returns ``(dh [N, H], dW [V, H], db [V] or None)`` in float32; with ``need_weight_grad=False``
    only dh is computed and ``(dh, None, None)`` is returned. Deterministic (module docstring).
    """
    h, W, b, y, _, N, V, H, dtype = _prep(h, W, b, y)
    dev = h.device
    if g_lp is None:
        g_lp = torch.zeros(N, device=dev, dtype=torch.float32)
    g_lp = g_lp.to(torch.float32).contiguous()
    lse = lse.to(torch.float32).contiguous()
    has_ent = g_ent is not None
    if has_ent:
        g_ent = g_ent.to(torch.float32).contiguous()
        if ent is None:
            ent = linear_logprob_stats(h, W, b, y, inv_tau, True, block_n=block_n, block_v=block_v,
                                       block_h=block_h)[2]
        ent = ent.to(torch.float32).contiguous()
    for name, t in (("lse", lse), ("g_lp", g_lp), ("g_ent", g_ent), ("ent", ent)):
        if t is not None and t.shape != (N,):
            raise ValueError(f"expected {name} [N]={N}, got {tuple(t.shape)}")
    dh = torch.zeros(N, H, device=dev, dtype=torch.float32)
    dW = torch.zeros(V, H, device=dev, dtype=torch.float32) if need_weight_grad else None
    db = torch.zeros(V, device=dev, dtype=torch.float32) if (b is not None and need_weight_grad) else None
    if N == 0 or V == 0:
        return dh, dW, db
    bn, bv, bh = _blocks(N, H, block_n, block_v, block_h)
    common = dict(
        HAS_BIAS=b is not None, HAS_ENT=has_ent,
        BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh,
        UPCAST=interpreted(), DOT_PREC=_dot_prec(dtype), num_warps=_num_warps(num_warps, bn, bv),
    )
    b_arg = b if b is not None else lse
    ge_arg = g_ent if has_ent else g_lp
    e_arg = ent if has_ent else lse
    _linear_logprob_bwd_dh_kernel[(triton.cdiv(N, bn),)](
        h, W, b_arg, y, lse, g_lp, ge_arg, e_arg, dh,
        N, V, H, h.stride(0), W.stride(0), dh.stride(0), float(inv_tau), **common)
    if need_weight_grad:
        _linear_logprob_bwd_dw_kernel[(triton.cdiv(V, bv),)](
            h, W, b_arg, y, lse, g_lp, ge_arg, e_arg, dW, db if db is not None else lse,
            N, V, H, h.stride(0), W.stride(0), dW.stride(0), float(inv_tau), **common)
    return dh, dW, db
