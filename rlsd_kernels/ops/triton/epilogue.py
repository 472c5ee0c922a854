"""Triton epilogues of the chunk loop (``ops/chunked.py``): the two passes over a float32 [n, V]
logits chunk that the GEMMs leave in memory (math: ``ops/CONTRACT.md``).

``row_stats``: one program per row streams the row in BLOCK_V tiles with an online log-sum-exp;
with s = z * inv_tau, running max m, l = sum e^{s-m} and T = sum e^{s-m} (s - m) (both rescaled by
a = e^{m-m'} when the max moves: T' = a (T + (m - m') l)), lse = m + log l, ent = log l - T / l,
and lp = s_y - lse from one load of the target's logit.

``dlogits_``: elementwise over (row, tile), dz = inv_tau (g_lp (1[v=y] - p) - g_ent p (s - lse + ent)),
written over z or, when ``out`` is given, to ``out`` in its dtype (the bf16 operand of the gradient
GEMMs). Both read each logit once: memory-bound passes of n V 4 bytes (and n V (4 + 2) for dz).
"""

from __future__ import annotations

import torch

import triton
import triton.language as tl

BLOCK_V = 4096


@triton.jit
def _row_stats_kernel(z_ptr, y_ptr, lp_ptr, lse_ptr, ent_ptr, V, stride_z, inv_tau,
                      COMPUTE_ENT: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * stride_z
    offs = tl.arange(0, BLOCK_V)
    m = -float("inf")
    l = 0.0
    t = 0.0
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        s = tl.load(base + cols, mask=cols < V, other=-float("inf")) * inv_tau
        m_new = tl.maximum(m, tl.max(s, 0))
        a = tl.exp(m - m_new)
        e = tl.where(cols < V, tl.exp(s - m_new), 0.0)
        if COMPUTE_ENT:
            shift = tl.where(l > 0, m - m_new, 0.0)  # 0 before the first tile (l = 0, m = -inf)
            t = a * (t + shift * l) + tl.sum(tl.where(cols < V, e * (s - m_new), 0.0), 0)
        l = a * l + tl.sum(e, 0)
        m = m_new
    y = tl.load(y_ptr + row)
    lse = m + tl.log(l)
    tl.store(lse_ptr + row, lse)
    tl.store(lp_ptr + row, tl.load(base + y) * inv_tau - lse)
    if COMPUTE_ENT:
        tl.store(ent_ptr + row, tl.log(l) - t / l)


@triton.jit
def _dlogits_kernel(z_ptr, out_ptr, y_ptr, lse_ptr, glp_ptr, gent_ptr, ent_ptr, V, stride_z, stride_out,
                    inv_tau, HAS_ENT: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    inside = cols < V
    d = tl.load(z_ptr + row * stride_z + cols, mask=inside, other=0.0) * inv_tau - tl.load(lse_ptr + row)
    p = tl.exp(d)
    g_lp = tl.load(glp_ptr + row)
    dz = g_lp * (tl.where(cols == tl.load(y_ptr + row), 1.0, 0.0) - p)
    if HAS_ENT:
        dz -= tl.load(gent_ptr + row) * p * (d + tl.load(ent_ptr + row))
    tl.store(out_ptr + row * stride_out + cols, (dz * inv_tau).to(out_ptr.dtype.element_ty), mask=inside)


def row_stats(z, y, inv_tau: float, compute_entropy: bool):
    """(lp, lse, ent or None), float32 [n], of softmax(z * inv_tau); z [n, V] float32, rows contiguous."""
    n, V = z.shape
    lp = torch.empty(n, dtype=torch.float32, device=z.device)
    lse = torch.empty_like(lp)
    ent = torch.empty_like(lp) if compute_entropy else None
    if n:
        _row_stats_kernel[(n,)](z, y, lp, lse, lp if ent is None else ent, V, z.stride(0), float(inv_tau),
                                COMPUTE_ENT=bool(compute_entropy), BLOCK_V=BLOCK_V, num_warps=8)
    return lp, lse, ent


def dlogits_(z, y, lse, g_lp, g_ent, ent, inv_tau: float, out=None):
    """dz over z, or into ``out`` ([n, V], any float dtype) when given."""
    n, V = z.shape
    out = z if out is None else out
    if n:
        has_ent = g_ent is not None
        _dlogits_kernel[(n, triton.cdiv(V, BLOCK_V))](
            z, out, y, lse, g_lp.float().contiguous(), g_ent.float().contiguous() if has_ent else lse,
            ent if has_ent else lse, V, z.stride(0), out.stride(0), float(inv_tau),
            HAS_ENT=has_ent, BLOCK_V=BLOCK_V, num_warps=8)
