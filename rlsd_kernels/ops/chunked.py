"""Chunked LM-head passes: GEMMs into reused buffers, pluggable epilogues, never [N, V].

Two algorithms, one class each; :class:`ChunkedHead` picks one per call.

:class:`RowSweep`, float32 / float64 (every CPU call): one sweep over chunks of ``n`` rows. The teacher's [n, V]
logits (if any) are formed and reduced to its target log-prob, then the student's logits are formed
in the same buffer and reduced to (lp, lse, ent) by ``row_stats``; once the per-token coefficients
are known, ``dlogits_`` turns the buffer into dz in place, and the dh and dW GEMMs consume it: four
GEMMs in all for a loss with a teacher, none repeated, dW accumulated over chunks.


:class:`VocabSweep`, bfloat16 / float16 on CUDA: the GEMMs run in that dtype on the tensor cores with float32 results,
in two sweeps. The statistics sweep goes over row chunks as above (teacher and student logits,
float32). The gradient sweep goes over blocks of ``w`` vocabulary rows: z = h W_blk^T [N, w] is
formed again, turned into dz (rounded to the input dtype, as in any bf16 backward), then
dh += dz W_blk (a float32 [N, H] accumulator) and dW_blk = dz^T h, written once with float32
accumulation inside the GEMM. Five GEMMs instead of four, but no [V, H] float32 accumulator is read
and rewritten once per row chunk (at the heads this targets that traffic costs more than the fifth
GEMM: benchmarks/NOTES.md, section 4), the per-token math runs once on all rows, and dW is rounded
once, as in plain PyTorch.

Peak extra memory: the chunk buffers (``chunk_bytes`` together) plus dW / dh, never [N, V].
Epilogues: plain PyTorch here (impl ``"chunked"``), fused C++ (``ops/cpp.py``, impl ``"cpp"``) or
Triton (``ops/triton/epilogue.py``, impl ``"triton"``), all with the signatures of
:func:`torch_row_stats` and :func:`torch_dlogits_`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..math import compute_dtype, generalized_jsd
from ..tokens import TokenTerms
from . import gemm
from .base import Grads, HeadBackend, HeadCall, JSDAndGrad, LossAndGrad, Stats, two_passes

CPU_CHUNK_BYTES = 64 << 20    # one float32 buffer of logits: fits the CPU's caches well enough
ALIGN = 128                   # chunk rows / vocabulary blocks come in multiples of this
CUDA_CHUNK_BYTES = 512 << 20  # >= ~880 rows (or vocabulary rows at N = 32k: ~2700) of float32 logits at V = 152k


def torch_row_stats(z, y, inv_tau: float, compute_entropy: bool):
    """(lp, lse, ent or None) of softmax(z * inv_tau) per row; z is [n, V] float."""
    s = z * inv_tau
    lse = torch.logsumexp(s, dim=-1)
    lp = s.gather(1, y.unsqueeze(1)).squeeze(1) - lse
    ent = None
    if compute_entropy:
        ent = lse - (torch.softmax(s, dim=-1) * s).sum(-1)
    return lp, lse, ent


def torch_dlogits_(z, y, lse, g_lp, g_ent, ent, inv_tau: float, out=None):
    """dz = inv_tau (g_lp (onehot - p) - g_ent p (log p + ent)), written over z (and copied to
    ``out``, of the GEMM dtype, when given). Targets outside [0, z.shape[1]) (another vocabulary
    block's or shard's) add no one-hot term."""
    z.mul_(inv_tau).sub_(lse.unsqueeze(1))  # log p
    coef = g_lp.unsqueeze(1)
    if g_ent is not None:
        coef = (z + ent.unsqueeze(1)).mul_(g_ent.unsqueeze(1)).add_(coef)
    z.exp_().mul_(coef).mul_(-inv_tau)
    inside = (y >= 0) & (y < z.shape[1])
    z.scatter_add_(1, y.clamp(0, z.shape[1] - 1).unsqueeze(1),
                   torch.where(inside, inv_tau * g_lp, 0.0).unsqueeze(1).to(z.dtype))
    if out is not None:
        out.copy_(z)


def aligned(n: int) -> int:
    """A chunk extent: >= 1, and a multiple of ALIGN when larger. The [N, w] blocks' row strides
    then stay 16-byte aligned, which cuBLAS's Hopper kernels need (misaligned, it falls back to
    SM75/SM80 kernels ~3x slower: benchmarks/NOTES.md, section 6)."""
    return max(1, n - n % ALIGN if n > ALIGN else n)


class Epilogues(NamedTuple):
    row_stats: Callable
    dlogits_: Callable


TORCH_EPILOGUES = Epilogues(torch_row_stats, torch_dlogits_)


@dataclasses.dataclass
class _Plan:
    """How one call runs: stats dtype, GEMM operands, rows per chunk and the reused buffer."""

    cd: torch.dtype                 # statistics / gradient dtype (float32, float64 for float64)
    W: torch.Tensor                 # the head in the GEMM dtype
    b: Optional[torch.Tensor]       # the bias in cd
    rows: int
    z: Optional[torch.Tensor]       # [rows, V] logits buffer, cd
    budget: int                     # bytes of chunk buffers


class RowSweep:
    """Float32 / float64 GEMMs: statistics, per-token loss, dz and dh / dW in one sweep over row
    chunks (module docstring)."""

    gemm_in_input_dtype = False  # the head is converted to the compute dtype for the GEMMs

    def __init__(self, head: "ChunkedHead"):
        self.head = head

    def plan(self, call: HeadCall, buffer=True) -> _Plan:
        return self.head._plan(call.h, call.W, call.b, self.gemm_in_input_dtype, buffer)

    def stats(self, call: HeadCall) -> Stats:
        return self.sweep(call.replace(need_grad=False), None).stats

    def backward(self, call: HeadCall, stats: Stats, g_lp, g_ent) -> Grads:
        head, plan = self.head, self.plan(call)
        dlogits_ = head._epilogues(plan.cd).dlogits_
        grads = head._new_grads(call, plan.cd)
        for sl in head._rows(call.h, plan):
            hc = head._operand(call.h, sl, plan)
            z = head._logits(hc, plan, hc.shape[0])
            dlogits_(z, call.y[sl], stats.lse[sl], g_lp[sl], None if g_ent is None else g_ent[sl],
                     None if stats.ent is None else stats.ent[sl], call.inv_tau)
            head._accumulate(z, hc, plan, sl, grads)
        return grads

    def loss_and_grad(self, call: HeadCall, terms: TokenTerms) -> LossAndGrad:
        if terms.needs_all_rows:
            return two_passes(self, call, terms)
        return self.sweep(call, terms)

    def sweep(self, call: HeadCall, terms: Optional[TokenTerms]) -> LossAndGrad:
        """Per chunk: teacher then student logits (one buffer), stats, and with ``terms`` the
        per-token loss, then (``call.need_grad``) dz, dh and dW."""
        head, plan = self.head, self.plan(call)
        epilogues = head._epilogues(plan.cd)
        h, y, teacher_hidden, inv_tau, compute_entropy = (call.h, call.y, call.teacher_hidden, call.inv_tau,
                                                          call.compute_entropy)
        need_grad = call.need_grad and terms is not None
        new = lambda: torch.empty(call.rows, dtype=plan.cd, device=h.device)  # noqa: E731
        lp, lse = new(), new()
        ent = new() if compute_entropy else None
        lp_t = new() if teacher_hidden is not None else None
        loss_t = new() if terms is not None else None
        grads = head._new_grads(call, plan.cd) if need_grad else None
        for sl in head._rows(h, plan):
            n = sl.stop - sl.start
            if teacher_hidden is not None:
                zt = head._logits(head._operand(teacher_hidden, sl, plan), plan, n)
                lp_t[sl] = epilogues.row_stats(zt, y[sl], inv_tau, False)[0]
            hc = head._operand(h, sl, plan)
            z = head._logits(hc, plan, n)
            lp[sl], lse[sl], e = epilogues.row_stats(z, y[sl], inv_tau, compute_entropy)
            if compute_entropy:
                ent[sl] = e
            if terms is None:
                continue
            loss_t[sl], g_lp, g_ent = terms(sl, lp[sl], e, None if lp_t is None else lp_t[sl])
            if need_grad:
                epilogues.dlogits_(z, y[sl], lse[sl], g_lp, g_ent, e, inv_tau)
                head._accumulate(z, hc, plan, sl, grads)
        return LossAndGrad(loss_t, Stats(lp, lse, ent, lp_t), grads)


class VocabSweep(RowSweep):
    """bf16 / fp16 tensor-core GEMMs with float32 results (CUDA): the statistics sweep over row
    chunks, the per-token math once, then the gradient sweep over vocabulary blocks (module
    docstring)."""

    gemm_in_input_dtype = True

    def loss_and_grad(self, call: HeadCall, terms: TokenTerms) -> LossAndGrad:
        return two_passes(self, call, terms)

    def backward(self, call: HeadCall, stats: Stats, g_lp, g_ent) -> Grads:
        """dW comes back in W's dtype (each block written once), dh and db in float32."""
        h, W, y, inv_tau = call.h, call.W, call.y, call.inv_tau
        plan = self.plan(call, buffer=False)
        N, V = h.shape[0], W.shape[0]
        w = min(V, aligned(plan.budget // max(1, N * (4 + W.element_size()))))
        z_buf = torch.empty(N * w, dtype=torch.float32, device=h.device)
        dz_buf = torch.empty(N * w, dtype=W.dtype, device=h.device)
        dh = torch.zeros(N, W.shape[1], dtype=torch.float32, device=h.device)
        dW = torch.empty_like(W) if call.need_weight_grad else None
        db = torch.empty(V, dtype=torch.float32, device=h.device) if (call.b is not None and dW is not None) else None
        dlogits_ = self.head._epilogues(torch.float32).dlogits_
        for v0 in range(0, V, w):
            v1 = min(v0 + w, V)
            Wb = W[v0:v1]
            z = gemm.logits(h, Wb, None if plan.b is None else plan.b[v0:v1], z_buf[: N * (v1 - v0)].view(N, v1 - v0))
            dz = dz_buf[: N * (v1 - v0)].view(N, v1 - v0)
            dlogits_(z, y - v0, stats.lse, g_lp, g_ent, stats.ent if g_ent is not None else None, inv_tau, dz)
            gemm.addmm_f32(dh, dz, Wb)
            if dW is not None:
                torch.mm(dz.t(), h, out=dW[v0:v1])
            if db is not None:
                torch.sum(dz, 0, dtype=torch.float32, out=db[v0:v1])
        return Grads(dh, dW, db)


class ChunkedHead(HeadBackend):
    """The chunk loop, parameterised by its two epilogues; each call runs :class:`RowSweep`, or
    :class:`VocabSweep` for CUDA bf16 / fp16 inputs."""

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

    def algorithm(self, call: HeadCall) -> RowSweep:
        """The algorithm of ``call``: chosen here, once."""
        return VocabSweep(self) if self.low_precision_gemms and gemm.low_precision(call.h) else RowSweep(self)

    # -- the backend interface ------------------------------------------------------------------
    def stats(self, call: HeadCall) -> Stats:
        return self.algorithm(call).stats(call)

    def backward(self, call: HeadCall, stats: Stats, g_lp, g_ent) -> Grads:
        return self.algorithm(call).backward(call, stats, g_lp, g_ent)

    def loss_and_grad(self, call: HeadCall, terms: TokenTerms) -> LossAndGrad:
        return self.algorithm(call).loss_and_grad(call, terms)

    def jsd_loss_and_grad(self, call: HeadCall, beta: float, weights) -> JSDAndGrad:
        """sum_t weights_t JSD_beta(p_T || p_S)_t and its gradient, chunk by chunk.

        The per-chunk gradient of :func:`generalized_jsd` with respect to the chunk's logits is taken
        by autograd on the [n, V] chunk (GEMMs in the compute dtype, one row sweep), then fed to the
        dh / dW GEMMs.
        """
        h, inv_tau, need_grad = call.h, call.inv_tau, call.need_grad
        cd = compute_dtype(h)
        plan = self._plan(h, call.W, call.b, False, buffer=False)
        jsd = torch.empty(h.shape[0], dtype=cd, device=h.device)
        grads = self._new_grads(call, cd) if need_grad else None
        for sl in self._rows(h, plan):
            hc = h[sl].to(cd)
            zt = F.linear(call.teacher_hidden[sl].to(cd), plan.W, plan.b)
            z = F.linear(hc, plan.W, plan.b).requires_grad_(need_grad)
            with torch.enable_grad():
                j = generalized_jsd(z * inv_tau, zt * inv_tau, beta)
                dz = torch.autograd.grad((j * weights[sl]).sum(), z)[0] if need_grad else None
            jsd[sl] = j.detach()
            if need_grad:
                self._accumulate(dz, hc, plan, sl, grads)
        return JSDAndGrad(jsd, grads)

    # -- pieces the algorithms share (and VocabParallel overrides) ------------------------------
    def _epilogues(self, dtype) -> Epilogues:
        return self.epilogues if dtype == torch.float32 else TORCH_EPILOGUES  # float64: exact torch ones

    def _plan(self, h, W, b, gemm_in_input_dtype: bool, buffer=True, vocab_size=None) -> _Plan:
        """Chunk rows from ``chunk_bytes`` (the device's default when None) for a vocabulary of
        ``vocab_size`` (by default W's), the GEMM operand of the head (W itself, or W in the
        compute dtype) and (``buffer``) the [rows, V] logits buffer."""
        cd = compute_dtype(h)
        V = W.shape[0] if vocab_size is None else vocab_size
        budget = self.chunk_bytes or (CUDA_CHUNK_BYTES if h.is_cuda else CPU_CHUNK_BYTES)
        rows = max(1, min(h.shape[0], aligned(budget // (V * torch.finfo(cd).bits // 8))))
        W_ = W if gemm_in_input_dtype else W.to(cd)
        b_ = None if b is None else b.to(cd)
        z = torch.empty(rows, W.shape[0], dtype=cd, device=h.device) if buffer else None
        return _Plan(cd, W_, b_, rows, z, budget)

    @staticmethod
    def _rows(h, plan):
        for start in range(0, h.shape[0], plan.rows):
            yield slice(start, min(start + plan.rows, h.shape[0]))

    @staticmethod
    def _operand(h, sl, plan):
        return h[sl].to(plan.W.dtype)

    @staticmethod
    def _logits(hc, plan, n):
        return gemm.logits(hc, plan.W, plan.b, plan.z[:n])

    @staticmethod
    def _new_grads(call: HeadCall, cd) -> Grads:
        """dh, dW, db buffers; dW and db are written (not added to) by the first chunk, and rows of
        h that no chunk visits (N = 0) leave them zero."""
        h, W, b, need_weight_grad = call.h, call.W, call.b, call.need_weight_grad
        dh = torch.empty(h.shape, dtype=cd, device=h.device)
        new = torch.zeros if h.shape[0] == 0 else torch.empty
        dW = new(W.shape, dtype=cd, device=h.device) if need_weight_grad else None
        db = new(W.shape[0], dtype=cd, device=h.device) if (b is not None and need_weight_grad) else None
        return Grads(dh, dW, db)

    def _accumulate(self, dz, hc, plan, sl, grads: Grads):
        gemm.backward(dz, hc, plan.W, grads, sl, first=sl.start == 0)
