"""The autograd wiring of every backend, in one place.

The losses compute their gradient during the forward sweep, while each chunk's logits are still in
memory, and hand it to autograd: :class:`SampledTokenLossFn` and :class:`JSDLossFn` save it and
scale it by the incoming gradient in backward (four GEMMs for a loss with a teacher, none repeated).
What they need besides the differentiable tensors comes in one frozen params object
(:class:`SampledLossParams`, :class:`JSDParams`); the per-token statistics come back as
non-differentiable outputs. ``fused_linear_logprobs`` returns per-token values whose upstream
gradient is not known in the forward, so its backward (:class:`LinearLogprobs`) recomputes each
chunk's logits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from .ops.base import Grads, HeadBackend, HeadCall, Stats
from .tokens import Rows, TokenTerms

Tensor = torch.Tensor


@dataclass(frozen=True)
class SampledLossParams:
    """A loss of per-token terms of the sampled tokens' log-probs, over ``rows`` of the batch."""

    backend: HeadBackend
    targets: Tensor                   # [B, T] token ids
    inv_tau: float
    teacher_hidden: Optional[Tensor]  # [B, T, H] or None
    rows: Rows
    terms: TokenTerms
    compute_entropy: bool
    need_grad: bool = False           # set by sampled_token_loss (grad mode is off inside forward)
    need_weight_grad: bool = False


@dataclass(frozen=True)
class JSDParams:
    """sum_t weights_t JSD_beta(p_T || p_S)_t over ``rows`` of the batch."""

    backend: HeadBackend
    teacher_hidden: Tensor            # [B, T, H]
    inv_tau: float
    beta: float
    weights: Tensor                   # [rows]
    rows: Rows
    need_grad: bool = False
    need_weight_grad: bool = False


def _with_needs(params, hidden, weight, bias):
    """``params`` with the gradients wanted, decided outside the Function."""
    needs = [t is not None and t.requires_grad for t in (hidden, weight, bias)]
    return dataclasses.replace(params, need_grad=torch.is_grad_enabled() and any(needs),
                               need_weight_grad=needs[1] or needs[2])


def _save_grads(ctx, grads: Optional[Grads], hidden, weight, bias, rows: Rows):
    """Saves the rows' dh in hidden's shape and every gradient in its input's dtype."""
    if grads is None:
        ctx.save_for_backward(None, None, None)
        return
    dh, dW, db = grads
    ctx.save_for_backward(rows.scatter(dh, hidden), None if dW is None else dW.to(weight.dtype),
                          None if db is None else db.to(bias.dtype))


def _scaled(ctx, grad):
    """The saved gradients times the incoming one, then None for the params."""
    grads = ctx.saved_tensors
    if not (grad.device.type == "cpu" and grad.item() == 1.0):  # loss.backward(): nothing to scale
        grads = tuple(None if g is None else g * grad.to(g.dtype) for g in grads)
    return (*grads, None)


class SampledTokenLossFn(torch.autograd.Function):
    """(loss, lp, lse, ent, teacher_logprobs): the scalar loss and the statistics over the rows."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, params: SampledLossParams):
        rows = params.rows
        call = HeadCall(rows.take(hidden), weight, bias, rows.take(params.targets.long()), params.inv_tau,
                        rows.take(params.teacher_hidden), params.compute_entropy, params.need_grad,
                        params.need_weight_grad)
        res = params.backend.loss_and_grad(call, params.terms)
        _save_grads(ctx, res.grads, hidden, weight, bias, rows)
        ctx.mark_non_differentiable(*[t for t in res.stats if t is not None])
        return (res.loss_t.sum(), *res.stats)

    @staticmethod
    def backward(ctx, grad, *_):
        return _scaled(ctx, grad)


class JSDLossFn(torch.autograd.Function):
    """(loss, per-token JSD over the rows)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, params: JSDParams):
        rows = params.rows
        call = HeadCall(rows.take(hidden), weight, bias, None, params.inv_tau, rows.take(params.teacher_hidden),
                        need_grad=params.need_grad, need_weight_grad=params.need_weight_grad)
        res = params.backend.jsd_loss_and_grad(call, params.beta, params.weights)
        _save_grads(ctx, res.grads, hidden, weight, bias, rows)
        ctx.mark_non_differentiable(res.jsd)
        return (params.weights * res.jsd).sum(), res.jsd

    @staticmethod
    def backward(ctx, grad, _):
        return _scaled(ctx, grad)


def sampled_token_loss(hidden, weight, bias, params: SampledLossParams):
    """-> (loss, Stats over the rows)."""
    loss, *stats = SampledTokenLossFn.apply(hidden, weight, bias, _with_needs(params, hidden, weight, bias))
    return loss, Stats(*stats)


def jsd_loss(hidden, weight, bias, params: JSDParams):
    """-> (loss, per-token JSD over the rows)."""
    return JSDLossFn.apply(hidden, weight, bias, _with_needs(params, hidden, weight, bias))


class LinearLogprobs(torch.autograd.Function):
    """(lp, ent) per row of ``hidden`` [N, H]; ent is an empty tensor unless ``compute_entropy``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, inv_tau, compute_entropy, backend: HeadBackend):
        stats = backend.stats(HeadCall(hidden, weight, bias, targets, inv_tau, compute_entropy=compute_entropy))
        ctx.save_for_backward(hidden, weight, bias, targets, stats.lse, stats.ent)
        ctx.inv_tau, ctx.backend = inv_tau, backend
        return stats.lp, stats.lp.new_empty(0) if stats.ent is None else stats.ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.to(lse.dtype).contiguous()
        g_ent = None if (ent is None or g_ent is None) else g_ent.to(lse.dtype).contiguous()
        call = HeadCall(hidden, weight, bias, targets, ctx.inv_tau, need_grad=True,
                        need_weight_grad=ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        dh, dW, db = ctx.backend.backward(call, Stats(None, lse, ent, None), g_lp, g_ent)
        cast = lambda g, like: None if (g is None or like is None) else g.to(like.dtype)  # noqa: E731
        return cast(dh, hidden), cast(dW, weight), cast(db, bias), None, None, None, None
