"""The eager backend (impl ``"eager"``): materialises the [N, V] logits and lets autograd
differentiate them, as a user of plain PyTorch would. The baseline of the benchmarks; it is tested,
like every backend, against the independent float64 truth in ``tests/truth.py``.
"""

from __future__ import annotations

import torch

from .. import reference
from ..math import generalized_jsd
from .base import Grads, HeadBackend, JSDAndGrad, LossAndGrad, Stats, compute_dtype


def _logprobs(h, W, b, y, inv_tau, compute_entropy):
    """(lp, lse, ent or None) from the materialised logits, differentiable."""
    z = reference.logits(h, W, b, 1.0 / inv_tau)
    logp = torch.log_softmax(z, dim=-1)
    lp = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    lse = z.detach().gather(-1, y.unsqueeze(-1)).squeeze(-1) - lp.detach()
    ent = -(logp.exp() * logp).sum(-1) if compute_entropy else None
    return lp, lse, ent


def _leaves(h, W, b, need_weight_grad):
    return (h.detach().requires_grad_(), W.detach().requires_grad_(need_weight_grad),
            None if b is None else b.detach().requires_grad_(need_weight_grad))


def _grads(out, g_out, h, W, b, cd) -> Grads:
    inputs = [t for t in (h, W, b) if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(out, inputs, g_out, allow_unused=True, materialize_grads=True))
    pick = lambda t: next(got).to(cd) if t is not None and t.requires_grad else None  # noqa: E731
    return Grads(pick(h), pick(W), pick(b))


class EagerHead(HeadBackend):
    name = "eager"

    def stats(self, h, W, b, y, inv_tau, compute_entropy, teacher_hidden=None):
        with torch.no_grad():
            lp_t = None if teacher_hidden is None else _logprobs(teacher_hidden, W, b, y, inv_tau, False)[0]
            return Stats(*_logprobs(h, W, b, y, inv_tau, compute_entropy), lp_t)

    def backward(self, h, W, b, y, inv_tau, stats, g_lp, g_ent, need_weight_grad=True):
        h, W, b = _leaves(h, W, b, need_weight_grad)
        with torch.enable_grad():
            lp, _, ent = _logprobs(h, W, b, y, inv_tau, g_ent is not None)
            out, g_out = ([lp], [g_lp]) if g_ent is None else ([lp, ent], [g_lp, g_ent])
            return _grads(out, g_out, h, W, b, compute_dtype(h))

    def loss_and_grad(self, h, W, b, y, inv_tau, compute_entropy, teacher_hidden, terms, need_grad,
                      need_weight_grad=True):
        """One autograd graph over the materialised logits: forward, per-token loss, backward."""
        with torch.no_grad():
            lp_t = None if teacher_hidden is None else _logprobs(teacher_hidden, W, b, y, inv_tau, False)[0]
        h, W, b = _leaves(h, W, b, need_weight_grad)
        with torch.enable_grad():
            lp, lse, ent = _logprobs(h, W, b, y, inv_tau, compute_entropy)
            loss_t, g_lp, g_ent = terms(slice(0, h.shape[0]), lp.detach(), None if ent is None else ent.detach(),
                                           lp_t)
            grads = None
            if need_grad:
                out, g_out = ([lp], [g_lp]) if g_ent is None else ([lp, ent], [g_lp, g_ent])
                grads = _grads(out, g_out, h, W, b, compute_dtype(h))
        detach = lambda t: None if t is None else t.detach()  # noqa: E731
        return LossAndGrad(loss_t, Stats(lp.detach(), lse.detach(), detach(ent), lp_t), grads)

    def jsd_loss_and_grad(self, h, W, b, teacher_hidden, inv_tau, beta, weights, need_grad, need_weight_grad=True):
        with torch.no_grad():
            zt = reference.logits(teacher_hidden, W, b, 1.0 / inv_tau)
        h, W, b = _leaves(h, W, b, need_weight_grad)
        with torch.enable_grad():
            jsd = generalized_jsd(reference.logits(h, W, b, 1.0 / inv_tau), zt, beta)
            grads = _grads([(weights * jsd).sum()], None, h, W, b, compute_dtype(h)) if need_grad else None
        return JSDAndGrad(jsd.detach(), grads)
