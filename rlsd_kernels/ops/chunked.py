"""Row-chunked LM-head pass: one GEMM per chunk of rows into a reused buffer, pluggable epilogues.

For each chunk of ``n`` rows the teacher's [n, V] logits (if any) are formed and reduced to its
target log-prob, then the student's logits are formed in the same buffer and reduced to
(lp, lse, ent) by ``row_stats``; once the per-token coefficients are known, ``dlogits_`` turns the
buffer into dz, and the dh and dW GEMMs consume it. Four GEMMs in all for a loss with a teacher,
none repeated; peak extra memory is the chunk buffers (``chunk_bytes`` together) plus the dW
accumulator, never [N, V].

GEMM precision: float32 and float64 inputs are multiplied in their dtype. On CUDA, bfloat16 and
float16 inputs are multiplied in their dtype on the tensor cores with float32 results (logits, dh
and the dW accumulator are float32); dz is rounded to the input dtype for the two gradient GEMMs,
as in any bf16 backward. Elsewhere low-precision inputs are computed in float32.

Epilogues: plain PyTorch here (impl ``"chunked"``), fused C++ (``ops/cpp.py``, impl ``"cpp"``) or
Triton (``ops/triton/epilogue.py``, impl ``"triton"``), all with the signatures of
:func:`torch_row_stats` and :func:`torch_dlogits_`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, NamedTuple, Optional

import torch

from ..math import generalized_jsd
from . import gemm
from .base import Grads, HeadBackend, JSDAndGrad, LossAndGrad, Stats, compute_dtype

CPU_CHUNK_BYTES = 64 << 20    # one float32 buffer of logits: fits the CPU's caches well enough
CUDA_CHUNK_BYTES = 512 << 20  # logits + dz buffers: >= ~600 rows at V = 152k, large enough for full-speed GEMMs


def torch_row_stats(z, y, inv_tau: float, want_entropy: bool):
    """(lp, lse, ent or None) of softmax(z * inv_tau) per row; z is [n, V] float."""
    s = z * inv_tau
    lse = torch.logsumexp(s, dim=-1)
    lp = s.gather(1, y.unsqueeze(1)).squeeze(1) - lse
    ent = None
    if want_entropy:
        ent = lse - (torch.softmax(s, dim=-1) * s).sum(-1)
    return lp, lse, ent


def torch_dlogits_(z, y, lse, g_lp, g_ent, ent, inv_tau: float, out=None):
    """dz = inv_tau (g_lp (onehot - p) - g_ent p (log p + ent)), written over z (and copied to
    ``out``, of the GEMM dtype, when given)."""
    z.mul_(inv_tau).sub_(lse.unsqueeze(1))  # log p
    coef = g_lp.unsqueeze(1)
    if g_ent is not None:
        coef = (z + ent.unsqueeze(1)).mul_(g_ent.unsqueeze(1)).add_(coef)
    z.exp_().mul_(coef).mul_(-inv_tau)
    z.scatter_add_(1, y.unsqueeze(1), (inv_tau * g_lp).unsqueeze(1).to(z.dtype))
    if out is not None:
        out.copy_(z)


class Epilogues(NamedTuple):
    row_stats: Callable
    dlogits_: Callable


TORCH_EPILOGUES = Epilogues(torch_row_stats, torch_dlogits_)


@dataclasses.dataclass
class _Plan:
    """How one call runs: stats dtype, GEMM operands, rows per chunk and the reused buffers."""

    cd: torch.dtype                 # statistics / gradient dtype (float32, float64 for float64)
    W: torch.Tensor                 # the head in the GEMM dtype
    b: Optional[torch.Tensor]       # the bias in cd
    rows: int
    z: torch.Tensor                 # [rows, V] logits buffer, cd
    dz: Optional[torch.Tensor]      # [rows, V] dz in the GEMM dtype when it differs from cd


class ChunkedHead(HeadBackend):
    """The chunk loop, parameterised by its two epilogues."""

    low_precision_gemms = True  # bf16/fp16 GEMMs on CUDA (subclasses whose epilogues can't, say no)

    def __init__(self, name, epilogues: Epilogues = TORCH_EPILOGUES, chunk_bytes: Optional[int] = None):
        self.name = name
        self.epilogues = epilogues
        self.chunk_bytes = chunk_bytes

    def with_memory_budget(self, budget_bytes):
        if budget_bytes is None:
            return self
        clone = copy.copy(self)
        clone.chunk_bytes = int(budget_bytes)
        return clone

    # -- pieces -------------------------------------------------------------------------------
    def _epilogues(self, dtype) -> Epilogues:
        return self.epilogues if dtype == torch.float32 else TORCH_EPILOGUES  # float64: exact torch ones

    def _plan(self, h, W, b, vocab_size=None) -> _Plan:
        """Chunk rows from ``chunk_bytes`` (the device's default when None) for a vocabulary of
        ``vocab_size`` (by default W's), and the buffers."""
        cd = compute_dtype(h)
        low = self.low_precision_gemms and gemm.low_precision(h)
        V = W.shape[0] if vocab_size is None else vocab_size
        per_row = V * (torch.finfo(cd).bits // 8 + (W.element_size() if low else 0))
        budget = self.chunk_bytes or (CUDA_CHUNK_BYTES if h.is_cuda else CPU_CHUNK_BYTES)
        rows = max(1, min(h.shape[0], budget // per_row))
        W_ = W if low else W.to(cd)
        b_ = None if b is None else b.to(cd)
        z = torch.empty(rows, W.shape[0], dtype=cd, device=h.device)
        dz = torch.empty(rows, W.shape[0], dtype=W.dtype, device=h.device) if low else None
        return _Plan(cd, W_, b_, rows, z, dz)

    def _rows(self, h, plan):
        for start in range(0, h.shape[0], plan.rows):
            yield slice(start, min(start + plan.rows, h.shape[0]))

    @staticmethod
    def _operand(h, sl, plan):
        return h[sl].to(plan.W.dtype)

    @staticmethod
    def _logits(hc, plan, n):
        return gemm.logits(hc, plan.W, plan.b, plan.z[:n])

    @staticmethod
    def _new_grads(h, W, b, cd, need_weight_grad) -> Grads:
        """dh, dW, db buffers; dW and db are written (not added to) by the first chunk, and rows of
        h that no chunk visits (N = 0) leave them zero."""
        dh = torch.empty(h.shape, dtype=cd, device=h.device)
        new = torch.zeros if h.shape[0] == 0 else torch.empty
        dW = new(W.shape, dtype=cd, device=h.device) if need_weight_grad else None
        db = new(W.shape[0], dtype=cd, device=h.device) if (b is not None and need_weight_grad) else None
        return Grads(dh, dW, db)

    def _dz(self, plan, z, y, lse, g_lp, g_ent, ent, inv_tau):
        """dz of the chunk in the GEMM dtype (in place in z unless a separate buffer exists)."""
        out = None if plan.dz is None else plan.dz[: z.shape[0]]
        self._epilogues(plan.cd).dlogits_(z, y, lse, g_lp, g_ent, ent, inv_tau, *(() if out is None else (out,)))
        return z if out is None else out

    def _accumulate(self, dz, hc, plan, sl, grads: Grads):
        gemm.backward(dz, hc, plan.W, grads, sl, first=sl.start == 0)

    # -- the backend interface ------------------------------------------------------------------
    def stats(self, h, W, b, y, inv_tau, want_entropy, h_teacher=None) -> Stats:
        return self._sweep(h, W, b, y, inv_tau, want_entropy, h_teacher, None, False, False).stats

    def backward(self, h, W, b, y, inv_tau, stats, g_lp, g_ent, need_weight_grad=True) -> Grads:
        plan = self._plan(h, W, b)
        grads = self._new_grads(h, W, b, plan.cd, need_weight_grad)
        for sl in self._rows(h, plan):
            hc = self._operand(h, sl, plan)
            z = self._logits(hc, plan, hc.shape[0])
            dz = self._dz(plan, z, y[sl], stats.lse[sl], g_lp[sl], None if g_ent is None else g_ent[sl],
                          None if stats.ent is None else stats.ent[sl], inv_tau)
            self._accumulate(dz, hc, plan, sl, grads)
        return grads

    def loss_and_grad(self, h, W, b, y, inv_tau, want_entropy, h_teacher, token_fn, need_grad,
                      need_weight_grad=True) -> LossAndGrad:
        return self._sweep(h, W, b, y, inv_tau, want_entropy, h_teacher, token_fn, need_grad, need_weight_grad)

    def _sweep(self, h, W, b, y, inv_tau, want_entropy, h_teacher, token_fn, need_grad,
               need_weight_grad) -> LossAndGrad:
        """One sweep: per chunk, teacher then student logits (one buffer), stats, per-token loss, dz,
        dh and dW."""
        plan = self._plan(h, W, b)
        row_stats = self._epilogues(plan.cd).row_stats
        N = h.shape[0]
        new = lambda: torch.empty(N, dtype=plan.cd, device=h.device)  # noqa: E731
        lp, lse = new(), new()
        ent = new() if want_entropy else None
        lp_t = new() if h_teacher is not None else None
        loss_t = new() if token_fn is not None else None
        grads = self._new_grads(h, W, b, plan.cd, need_weight_grad) if need_grad else None
        for sl in self._rows(h, plan):
            n = sl.stop - sl.start
            if h_teacher is not None:
                zt = self._logits(self._operand(h_teacher, sl, plan), plan, n)
                lp_t[sl] = row_stats(zt, y[sl], inv_tau, False)[0]
            hc = self._operand(h, sl, plan)
            z = self._logits(hc, plan, n)
            lp[sl], lse[sl], e = row_stats(z, y[sl], inv_tau, want_entropy)
            if want_entropy:
                ent[sl] = e
            if token_fn is None:
                continue
            loss_t[sl], g_lp, g_ent = token_fn(sl, lp[sl], e, None if lp_t is None else lp_t[sl])
            if need_grad:
                dz = self._dz(plan, z, y[sl], lse[sl], g_lp, g_ent, e, inv_tau)
                self._accumulate(dz, hc, plan, sl, grads)
        return LossAndGrad(loss_t, Stats(lp, lse, ent, lp_t), grads)

    def jsd_loss_and_grad(self, h, W, b, h_teacher, inv_tau, beta, weights, need_grad,
                          need_weight_grad=True) -> JSDAndGrad:
        """sum_t weights_t JSD_beta(p_T || p_S)_t and its gradient, chunk by chunk.

        The per-chunk gradient of :func:`generalized_jsd` with respect to the chunk's logits is taken
        by autograd on the [n, V] chunk (float32 GEMMs), then fed to the same dh / dW GEMMs.
        """
        cd = compute_dtype(h)
        plan = _Plan(cd, W.to(cd), None if b is None else b.to(cd), 0, None, None)
        plan.rows = self._plan(h, W, b).rows
        jsd = torch.empty(h.shape[0], dtype=cd, device=h.device)
        grads = self._new_grads(h, W, b, cd, need_weight_grad) if need_grad else None
        for sl in self._rows(h, plan):
            hc = h[sl].to(cd)
            zt = gemm.linear(h_teacher[sl].to(cd), plan.W, plan.b)
            z = gemm.linear(hc, plan.W, plan.b).requires_grad_(need_grad)
            with torch.enable_grad():
                j = generalized_jsd(z * inv_tau, zt * inv_tau, beta)
                dz = torch.autograd.grad((j * weights[sl]).sum(), z)[0] if need_grad else None
            jsd[sl] = j.detach()
            if need_grad:
                self._accumulate(dz, hc, plan, sl, grads)
        return JSDAndGrad(jsd, grads)
