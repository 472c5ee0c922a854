"""The eager backend (impl ``"eager"``): materialises the [N, V] logits and lets autograd
differentiate them, as a user of plain PyTorch would. The baseline of the benchmarks; it is tested,
like every backend, against the independent float64 truth in ``tests/truth.py``.
"""

from __future__ import annotations

import torch

from ..math import compute_dtype, generalized_jsd
from .base import Grads, HeadBackend, HeadCall, JSDAndGrad, LossAndGrad, Stats


def logits(hidden, weight, bias, inv_tau):
    """(hidden W^T + b) * inv_tau, computed in the input dtype, returned in the compute dtype."""
    z = torch.nn.functional.linear(hidden, weight, bias)
    return z.to(compute_dtype(z)) * inv_tau


def _logprobs(h, W, b, y, inv_tau, compute_entropy):
    """(lp, lse, ent or None) from the materialised logits, differentiable."""
    z = logits(h, W, b, inv_tau)
    logp = torch.log_softmax(z, dim=-1)
    lp = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    lse = z.detach().gather(-1, y.unsqueeze(-1)).squeeze(-1) - lp.detach()
    ent = -(logp.exp() * logp).sum(-1) if compute_entropy else None
    return lp, lse, ent


def _teacher_logprobs(call: HeadCall):
    if call.teacher_hidden is None:
        return None
    with torch.no_grad():
        return _logprobs(call.teacher_hidden, call.W, call.b, call.y, call.inv_tau, False)[0]


def _leaves(call: HeadCall):
    wg = call.need_weight_grad
    return (call.h.detach().requires_grad_(), call.W.detach().requires_grad_(wg),
            None if call.b is None else call.b.detach().requires_grad_(wg))


def _grads(out, g_out, h, W, b, cd) -> Grads:
    inputs = [t for t in (h, W, b) if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(out, inputs, g_out, allow_unused=True, materialize_grads=True))
    pick = lambda t: next(got).to(cd) if t is not None and t.requires_grad else None  # noqa: E731
    return Grads(pick(h), pick(W), pick(b))


class EagerHead(HeadBackend):
    name = "eager"

    def stats(self, call):
        with torch.no_grad():
            return Stats(*_logprobs(call.h, call.W, call.b, call.y, call.inv_tau, call.compute_entropy),
                         _teacher_logprobs(call))

    def backward(self, call, stats, g_lp, g_ent):
        h, W, b = _leaves(call)
        with torch.enable_grad():
            lp, _, ent = _logprobs(h, W, b, call.y, call.inv_tau, g_ent is not None)
            out, g_out = ([lp], [g_lp]) if g_ent is None else ([lp, ent], [g_lp, g_ent])
            return _grads(out, g_out, h, W, b, compute_dtype(h))

    def loss_and_grad(self, call, terms):
        """One autograd graph over the materialised logits: forward, per-token loss (on all rows
        at once), backward."""
        lp_t = _teacher_logprobs(call)
        h, W, b = _leaves(call)
        with torch.enable_grad():
            lp, lse, ent = _logprobs(h, W, b, call.y, call.inv_tau, call.compute_entropy)
            loss_t, g_lp, g_ent = terms(slice(0, call.rows), lp.detach(), None if ent is None else ent.detach(),
                                        lp_t)
            grads = None
            if call.need_grad:
                out, g_out = ([lp], [g_lp]) if g_ent is None else ([lp, ent], [g_lp, g_ent])
                grads = _grads(out, g_out, h, W, b, compute_dtype(h))
        detach = lambda t: None if t is None else t.detach()  # noqa: E731
        return LossAndGrad(loss_t, Stats(lp.detach(), lse.detach(), detach(ent), lp_t), grads)

    def jsd_loss_and_grad(self, call, beta, weights):
        with torch.no_grad():
            zt = logits(call.teacher_hidden, call.W, call.b, call.inv_tau)
        h, W, b = _leaves(call)
        with torch.enable_grad():
            jsd = generalized_jsd(logits(h, W, b, call.inv_tau), zt, beta)
            grads = _grads([(weights * jsd).sum()], None, h, W, b, compute_dtype(h)) if call.need_grad else None
        return JSDAndGrad(jsd.detach(), grads)
