"""Row-chunked LM-head pass: BLAS GEMMs per chunk of rows, pluggable per-chunk epilogues.

For each chunk of ``n`` rows the [n, V] logits of the student (and, in the same step, the teacher)
are formed by one GEMM into a reused buffer, reduced to (lp, lse, ent) by ``row_stats``, turned
in place into dz by ``dlogits_`` once the per-token coefficients are known, and consumed by the
dh and dW GEMMs. Four GEMMs in all for a loss with a teacher; peak extra memory is the chunk
buffers (``chunk_bytes`` each) plus the float32 dW accumulator, never [N, V].

The epilogues here are plain PyTorch (the portable fallback, impl ``"chunked"``); ``ops/cpp.py``
supplies fused C++ ones with the same signatures (impl ``"cpp"``).
"""

from __future__ import annotations

import torch

from ..math import generalized_jsd
from .base import HeadBackend

CHUNK_BYTES = 64 << 20


def torch_row_stats(z, y, inv_tau: float, want_entropy: bool):
    """(lp, lse, ent or None) of softmax(z * inv_tau) per row; z is [n, V] float."""
    s = z * inv_tau
    lse = torch.logsumexp(s, dim=-1)
    lp = s.gather(1, y.unsqueeze(1)).squeeze(1) - lse
    ent = None
    if want_entropy:
        ent = lse - (torch.softmax(s, dim=-1) * s).sum(-1)
    return lp, lse, ent


def torch_dlogits_(z, y, lse, g_lp, g_ent, ent, inv_tau: float):
    """Overwrite z with dz = inv_tau (g_lp (onehot - p) - g_ent p (log p + ent))."""
    z.mul_(inv_tau).sub_(lse.unsqueeze(1))  # log p
    coef = g_lp.unsqueeze(1)
    if g_ent is not None:
        coef = (z + ent.unsqueeze(1)).mul_(g_ent.unsqueeze(1)).add_(coef)
    z.exp_().mul_(coef).mul_(-inv_tau)
    z.scatter_add_(1, y.unsqueeze(1), (inv_tau * g_lp).unsqueeze(1).to(z.dtype))


def compute_dtype(h):
    return torch.float64 if h.dtype == torch.float64 else torch.float32


class ChunkedHead(HeadBackend):
    """The chunk loop, parameterised by its two epilogues."""

    def __init__(self, name, row_stats=torch_row_stats, dlogits_=torch_dlogits_, chunk_bytes=CHUNK_BYTES):
        self.name = name
        self.row_stats = row_stats
        self.dlogits_ = dlogits_
        self.chunk_bytes = chunk_bytes

    # -- pieces -------------------------------------------------------------------------------
    def _epilogues(self, dtype):
        if dtype == torch.float32:
            return self.row_stats, self.dlogits_
        return torch_row_stats, torch_dlogits_  # float64: the exact torch epilogues

    def _setup(self, h, W, b, vocab_size=None):
        """Compute dtype, W and b in it, and rows per chunk (``chunk_bytes`` of logits for a
        vocabulary of ``vocab_size``, by default W's)."""
        cd = compute_dtype(h)
        V = W.shape[0] if vocab_size is None else vocab_size
        rows = max(1, min(h.shape[0], self.chunk_bytes // (V * torch.finfo(cd).bits // 8)))
        return cd, W.to(cd), None if b is None else b.to(cd), rows

    @staticmethod
    def _logits(hc, W, b, out):
        if b is None:
            return torch.mm(hc, W.t(), out=out)
        return torch.addmm(b, hc, W.t(), out=out)

    @staticmethod
    def _new_grads(h, W, b, cd, need_weight_grad):
        """dh, dW, db buffers; dW and db are written (not added to) by the first chunk, and rows of
        h that no chunk visits (N = 0) leave them zero."""
        dh = torch.empty(h.shape, dtype=cd, device=h.device)
        new = torch.zeros if h.shape[0] == 0 else torch.empty
        dW = new(W.shape, dtype=cd, device=h.device) if need_weight_grad else None
        db = new(W.shape[0], dtype=cd, device=h.device) if (b is not None and need_weight_grad) else None
        return dh, dW, db

    @staticmethod
    def _accumulate(dz, hc, W, sl, grads):
        dh, dW, db = grads
        torch.mm(dz, W, out=dh[sl])
        first = sl.start == 0
        if dW is not None:
            torch.mm(dz.t(), hc, out=dW) if first else dW.addmm_(dz.t(), hc)
        if db is not None:
            torch.sum(dz, 0, out=db) if first else db.add_(dz.sum(0))

    # -- the backend interface ------------------------------------------------------------------
    def stats(self, h, W, b, y, inv_tau, want_entropy, h_teacher=None):
        _, lp, lse, ent, lp_t, _ = self._sweep(h, W, b, y, inv_tau, want_entropy, h_teacher, None, False, False)
        return lp, lse, ent, lp_t

    def backward(self, h, W, b, y, inv_tau, lse, ent, g_lp, g_ent, need_weight_grad=True):
        cd, W_, b_, rows = self._setup(h, W, b)
        _, dlogits_ = self._epilogues(cd)
        grads = self._new_grads(h, W, b, cd, need_weight_grad)
        buf = torch.empty(rows, W.shape[0], dtype=cd, device=h.device)
        for start in range(0, h.shape[0], rows):
            sl = slice(start, min(start + rows, h.shape[0]))
            hc = h[sl].to(cd)
            z = self._logits(hc, W_, b_, buf[: hc.shape[0]])
            dlogits_(z, y[sl], lse[sl], g_lp[sl], None if g_ent is None else g_ent[sl],
                     None if ent is None else ent[sl], inv_tau)
            self._accumulate(z, hc, W_, sl, grads)
        return grads

    def loss_and_grad(self, h, W, b, y, inv_tau, want_entropy, h_teacher, token_fn, need_grad,
                      need_weight_grad=True):
        loss_t, lp, _, ent, lp_t, grads = self._sweep(h, W, b, y, inv_tau, want_entropy, h_teacher,
                                                      token_fn, need_grad, need_weight_grad)
        return loss_t, lp, ent, lp_t, grads

    def _sweep(self, h, W, b, y, inv_tau, want_entropy, h_teacher, token_fn, need_grad, need_weight_grad):
        """One sweep: per chunk, student and teacher logits, stats, per-token loss, dz, dh and dW."""
        cd, W_, b_, rows = self._setup(h, W, b)
        row_stats, dlogits_ = self._epilogues(cd)
        N, V = h.shape[0], W.shape[0]
        new = lambda: torch.empty(N, dtype=cd, device=h.device)  # noqa: E731
        lp, lse = new(), new()
        ent = new() if want_entropy else None
        lp_t = new() if h_teacher is not None else None
        loss_t = new() if token_fn is not None else None
        grads = self._new_grads(h, W, b, cd, need_weight_grad) if need_grad else None
        buf = torch.empty(rows, V, dtype=cd, device=h.device)
        buf_t = torch.empty(rows, V, dtype=cd, device=h.device) if h_teacher is not None else None
        for start in range(0, N, rows):
            sl = slice(start, min(start + rows, N))
            hc = h[sl].to(cd)
            n = hc.shape[0]
            z = self._logits(hc, W_, b_, buf[:n])
            lp[sl], lse[sl], e = row_stats(z, y[sl], inv_tau, want_entropy)
            if want_entropy:
                ent[sl] = e
            if h_teacher is not None:
                zt = self._logits(h_teacher[sl].to(cd), W_, b_, buf_t[:n])
                lp_t[sl], _, _ = row_stats(zt, y[sl], inv_tau, False)
            if token_fn is None:
                continue
            loss_t[sl], g_lp, g_ent = token_fn(sl, lp[sl], e, None if lp_t is None else lp_t[sl])
            if need_grad:
                dlogits_(z, y[sl], lse[sl], g_lp, g_ent, e, inv_tau)
                self._accumulate(z, hc, W_, sl, grads)
        return loss_t, lp, lse, ent, lp_t, grads

    def jsd_loss_and_grad(self, h, h_teacher, W, b, inv_tau, beta, weights, need_grad, need_weight_grad=True):
        """sum_t weights_t JSD_beta(p_T || p_S)_t and its gradient, chunk by chunk.

        The per-chunk gradient of :func:`generalized_jsd` with respect to the chunk's logits is taken
        by autograd on the [n, V] chunk, then fed to the same dh / dW GEMMs.
        -> (per-token JSD [N], grads or None)
        """
        cd, W_, b_, rows = self._setup(h, W, b)
        N, V = h.shape[0], W.shape[0]
        jsd = torch.empty(N, dtype=cd, device=h.device)
        grads = self._new_grads(h, W, b, cd, need_weight_grad) if need_grad else None
        buf_t = torch.empty(rows, V, dtype=cd, device=h.device)
        for start in range(0, N, rows):
            sl = slice(start, min(start + rows, N))
            hc = h[sl].to(cd)
            zt = self._logits(h_teacher[sl].to(cd), W_, b_, buf_t[: hc.shape[0]])
            z = self._logits(hc, W_, b_, None).requires_grad_(need_grad)
            with torch.enable_grad():
                j = generalized_jsd(z * inv_tau, zt * inv_tau, beta)
                dz = torch.autograd.grad((j * weights[sl]).sum(), z)[0] if need_grad else None
            jsd[sl] = j.detach()
            if need_grad:
                self._accumulate(dz, hc, W_, sl, grads)
        return jsd, grads
