"""The autograd wiring of every backend, in one place.

The losses compute their gradient during the forward sweep, while each chunk's logits are still in
memory, and hand it to autograd (:class:`PrecomputedGradLoss`), which scales it by the incoming
gradient in backward: four GEMMs for a loss with a teacher, none repeated. ``fused_linear_logprobs``
returns per-token values whose upstream gradient is not known in the forward, so its backward
(:class:`LinearLogprobs`) recomputes each chunk's logits.
"""

from __future__ import annotations

import torch

from .math import aggregation_weights
from .ops.base import HeadBackend, Stats


class PrecomputedGradLoss(torch.autograd.Function):
    """A scalar loss whose gradients ``run()`` computed in the forward sweep; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, run):
        loss, dh, dW, db = run()
        ctx.save_for_backward(dh, dW, db)
        return loss

    @staticmethod
    def backward(ctx, grad):
        dh, dW, db = ctx.saved_tensors
        if grad.device.type == "cpu" and grad.item() == 1.0:  # loss.backward(): nothing to scale
            return dh, dW, db, None
        scale = lambda g: None if g is None else g * grad.to(g.dtype)  # noqa: E731
        return scale(dh), scale(dW), scale(db), None


class LinearLogprobs(torch.autograd.Function):
    """(lp, ent) per row of ``hidden`` [N, H]; ent is an empty tensor unless ``want_entropy``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, inv_tau, want_entropy, backend: HeadBackend):
        stats = backend.stats(hidden, weight, bias, targets, inv_tau, want_entropy)
        ctx.save_for_backward(hidden, weight, bias, targets, stats.lse, stats.ent)
        ctx.inv_tau, ctx.backend = inv_tau, backend
        return stats.lp, stats.lp.new_empty(0) if stats.ent is None else stats.ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.to(lse.dtype).contiguous()
        g_ent = None if (ent is None or g_ent is None) else g_ent.to(lse.dtype).contiguous()
        dh, dW, db = ctx.backend.backward(hidden, weight, bias, targets, ctx.inv_tau, Stats(None, lse, ent, None),
                                          g_lp, g_ent, ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        cast = lambda g, like: None if (g is None or like is None) else g.to(like.dtype)  # noqa: E731
        return cast(dh, hidden), cast(dW, weight), cast(db, bias), None, None, None, None


class Rows:
    """The token rows a fused loss works on: on the CPU only the unmasked ones (masked tokens cost
    no GEMM work; finding them is free there), on accelerators all of them (no host sync). With
    nothing masked, no row is copied."""

    def __init__(self, mask, device):
        self.flat_valid = mask.reshape(-1) != 0
        compact = device.type == "cpu" and not bool(self.flat_valid.all())
        self.index = torch.nonzero(self.flat_valid).squeeze(1) if compact else None

    def valid(self):
        """Which rows count (all of them once masked rows were dropped)."""
        if self.index is None:
            return self.flat_valid
        return torch.ones(self.index.shape[0], dtype=torch.bool, device=self.index.device)

    def take(self, t):
        if t is None:
            return None
        t = t.reshape(-1, *t.shape[2:])
        return t if self.index is None else t.index_select(0, self.index)

    def token(self, t, dtype):
        """A per-token input, flattened to the rows, zeroed where masked (so garbage can't leak)."""
        t = torch.where(self.flat_valid, t.reshape(-1).to(dtype), 0.0)
        return t if self.index is None else t.index_select(0, self.index)

    def scatter(self, rows_grad, like):
        if self.index is None:
            return rows_grad.reshape(like.shape).to(like.dtype)
        full = torch.zeros(like.shape[0] * like.shape[1], like.shape[2], dtype=like.dtype, device=like.device)
        return full.index_copy_(0, self.index, rows_grad.to(like.dtype)).view(like.shape)


def token_inputs(rows: Rows, mask, advantages, loss_agg, normalizer, dtype, **optional) -> dict:
    """The detached per-token inputs of the token math over the rows: ``agg`` (mask and the
    aggregation's normaliser), ``adv`` (broadcast from [B]) and the optional per-token tensors."""
    tok = {"agg": rows.token(aggregation_weights(mask, loss_agg, normalizer, dtype), dtype)}
    if advantages is not None:
        adv = advantages.unsqueeze(-1).expand(mask.shape) if advantages.dim() == 1 else advantages
        tok["adv"] = rows.token(adv, dtype)
    tok.update({k: rows.token(v, dtype) for k, v in optional.items() if v is not None})
    return tok


def token_fn(loss_of, tok: dict, with_entropy: bool):
    """``TokenFn`` of a chunk: its loss and the coefficients dL/dlp, dL/dent, by autograd over
    [n]-sized tensors through ``loss_of(lp, ent, tok)`` (the math of :mod:`rlsd_kernels.math`)."""

    def fn(rows, lp, ent, lp_teacher):
        t = {k: v[rows] for k, v in tok.items()}
        if lp_teacher is not None:
            t["lp_teacher"] = lp_teacher
        lp = lp.detach().requires_grad_()
        ent = ent.detach().requires_grad_() if with_entropy else None
        with torch.enable_grad():
            loss = loss_of(lp, ent, t)
            inputs = [lp] if ent is None else [lp, ent]
            grads = torch.autograd.grad(loss.sum(), inputs, allow_unused=True, materialize_grads=True)
        return loss.detach(), grads[0], (grads[1] if with_entropy else None)

    return fn


def precomputed_grad_loss(hidden, weight, bias, rows: Rows, sweep):
    """Runs ``sweep(need_grad, need_weight_grad) -> (loss, Grads over the rows or None)`` inside
    :class:`PrecomputedGradLoss`; the rows' dh goes back to hidden's shape, every gradient to its
    input's dtype."""
    needs = [t is not None and t.requires_grad for t in (hidden, weight, bias)]
    need_grad = torch.is_grad_enabled() and any(needs)

    def run():
        loss, grads = sweep(need_grad, needs[1] or needs[2])
        if not need_grad:
            return loss, None, None, None
        dh, dW, db = grads
        return (loss, rows.scatter(dh, hidden), None if dW is None else dW.to(weight.dtype),
                None if db is None else db.to(bias.dtype))

    return PrecomputedGradLoss.apply(hidden, weight, bias, run)


def sampled_token_loss(backend: HeadBackend, hidden, weight, bias, targets, inv_tau, teacher_hidden, rows: Rows,
                       tok: dict, loss_of, want_entropy: bool, with_entropy_grad: bool):
    """A loss of per-token terms of (lp, ent, lp_teacher): -> (loss, Stats over the rows)."""
    out = {}

    def sweep(need_grad, need_weight_grad):
        res = backend.loss_and_grad(rows.take(hidden), weight, bias, rows.take(targets.long()), inv_tau,
                                    want_entropy, rows.take(teacher_hidden),
                                    token_fn(loss_of, tok, with_entropy_grad), need_grad, need_weight_grad)
        out["stats"] = res.stats
        return res.loss_t.sum(), res.grads

    loss = precomputed_grad_loss(hidden, weight, bias, rows, sweep)
    return loss, out["stats"]


def jsd_loss(backend: HeadBackend, hidden, weight, bias, teacher_hidden, inv_tau, beta, weights, rows: Rows):
    """sum_t weights_t JSD_beta(p_T || p_S)_t: -> (loss, per-token JSD over the rows)."""
    out = {}

    def sweep(need_grad, need_weight_grad):
        res = backend.jsd_loss_and_grad(rows.take(hidden), weight, bias, rows.take(teacher_hidden), inv_tau, beta,
                                        weights, need_grad, need_weight_grad)
        out["jsd"] = res.jsd
        return (weights * res.jsd).sum(), res.grads

    loss = precomputed_grad_loss(hidden, weight, bias, rows, sweep)
    return loss, out["jsd"]
