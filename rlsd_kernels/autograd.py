"""The losses' autograd, as ``torch.library`` custom ops: ``torch.compile`` traces a loss without a
graph break inside it.

Each op takes tensors and primitive scalars only: the backend by name (``ops.impl_key``), the memory
budget, and for the losses of per-token terms the token loss by name (``tokens.TOKEN_LOSSES``) with
its options encoded generically (``RLSDOptions.encoded``: the JSON of every field, so a new field
needs no schema edit). ``register_fake`` gives the compiler the outputs' shapes without running
the op; ``register_autograd`` gives the gradient.

- ``rlsd_kernels::sampled_token_loss`` and ``rlsd_kernels::jsd_loss`` form the gradient in the same
  sweep as the loss, while each chunk's logits are in memory, and return it as outputs; their
  backward only scales it by the incoming gradient (four GEMMs for a loss with a teacher, none
  repeated). The per-token statistics come back in the batch's [B, T] shape (zeros at the rows a
  CPU sweep skipped), so every shape is known before the op runs.
- ``rlsd_kernels::linear_logprobs`` returns per-token values whose upstream gradient is not known in
  the forward; its backward is the op ``rlsd_kernels::linear_logprobs_backward``, which forms each
  chunk's logits again.

The rows a sweep visits (``tokens.Rows``: on the CPU only the unmasked ones, found with a host
sync) are chosen inside the ops, where the compiler does not look.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from .math import compute_dtype
from .ops import select
from .ops.base import HeadCall, Stats
from .tokens import TOKEN_LOSSES, Rows, TokenInputs, TokenLoss, TokenTerms, token_inputs

Tensor = torch.Tensor
OPTIONAL = TokenInputs.optional_names()  # the order of the op's ``optional`` list
IMPLEMENTATIONS = {}
"""op -> its Python implementation (to look inside an op, e.g. from a TorchDispatchMode:
``torch.library.register_torch_dispatch``)."""


def _op(name: str):
    """Registers the decorated function as the custom op ``rlsd_kernels::<name>``, run with the
    autograd engine on inside it. A custom op runs below autograd (its inputs' gradient is its own
    ``register_autograd``), but the token terms' coefficients and the eager backend's logits are
    differentiated by autograd inside the op; ``torch.func.vjp`` would need no switch but fails
    inside a TorchDispatchMode's dispatch (e.g. ``FlopCounterMode``)."""
    def register(impl):
        @functools.wraps(impl)
        def with_autograd(*args, **kwargs):
            with torch._C._SetExcludeDispatchKeyGuard(torch._C.DispatchKey.AutogradFunctionality, False):
                return impl(*args, **kwargs)

        op = torch.library.custom_op(f"rlsd_kernels::{name}", with_autograd, mutates_args=())
        IMPLEMENTATIONS[op] = with_autograd
        return op
    return register


@dataclass(frozen=True)
class SampledLoss:
    """A loss of per-token terms of the sampled tokens' log-probs over a batch: everything but the
    differentiable tensors (hidden, weight, bias)."""

    loss: TokenLoss
    targets: Tensor                   # [B, T] token ids
    mask: Tensor                      # [B, T] of 0 and 1
    advantages: Optional[Tensor]      # [B] or [B, T]
    optional: dict                    # the optional [B, T] inputs by name (TokenInputs.optional_names())
    teacher_hidden: Optional[Tensor]  # [B, T, H]
    inv_tau: float
    loss_agg: str
    normalizer: object                # None, a number or a one-element tensor
    compute_entropy: bool
    impl: str                         # ops.impl_key
    memory_budget: Optional[int]


class TokenStats(NamedTuple):
    """Per-token statistics [B, T] of a loss (zeros where masked on the CPU)."""

    lp: Tensor
    ent: Optional[Tensor]
    teacher_logprobs: Optional[Tensor]  # of teacher_hidden, None when the teacher came as log-probs


def _needs(hidden, weight, bias):
    """(need_grad, need_weight_grad): the gradients wanted, decided outside the ops."""
    needs = [t is not None and t.requires_grad for t in (hidden, weight, bias)]
    return torch.is_grad_enabled() and any(needs), needs[1] or needs[2]


def _normalizer(value, device):
    """A number as a float64 0-d tensor (so a float64 loss divides by it unrounded)."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def _none(t):
    """An absent output is an empty tensor at the op's boundary."""
    return None if t.numel() == 0 and t.dim() == 1 else t


def _empty(like):
    return like.new_empty(0)


def _grads_out(grads, hidden, weight, bias, rows: Rows):
    """dh in hidden's shape, every gradient in its input's dtype (empty when not formed)."""
    if grads is None:
        return _empty(hidden), _empty(weight), _empty(weight)
    dh, dW, db = grads
    return (rows.scatter(dh, hidden.shape, hidden.dtype), _empty(weight) if dW is None else dW.to(weight.dtype),
            _empty(weight) if db is None else db.to(bias.dtype))


def _grads_fake(hidden, weight, bias, need_grad, need_weight_grad):
    if not need_grad:
        return _empty(hidden), _empty(weight), _empty(weight)
    return (torch.empty_like(hidden), torch.empty_like(weight) if need_weight_grad else _empty(weight),
            torch.empty_like(bias) if (need_weight_grad and bias is not None) else _empty(weight))


def _save_grads(ctx, inputs, output):
    """Saves the gradients (the last three outputs) and which inputs they belong to."""
    ctx.save_for_backward(*output[-3:])
    hidden, weight, bias = inputs[:3]
    ctx.shapes = [t.shape if t is not None else None for t in (hidden, weight, bias)]


def _scaled(ctx, grad, n_inputs):
    """The saved gradients times the incoming one (None where none was formed), then None for the
    other inputs."""
    out = []
    for g, shape in zip(ctx.saved_tensors, ctx.shapes):
        if shape is None or g.shape != shape:
            out.append(None)
        elif not torch.compiler.is_compiling() and grad.device.type == "cpu" and grad.item() == 1.0:
            out.append(g)  # loss.backward(): nothing to scale
        else:
            out.append(g * grad.to(g.dtype))
    return (*out, *([None] * (n_inputs - 3)))


# -- losses of per-token terms ---------------------------------------------------------------------

@_op("sampled_token_loss")
def _sampled_token_loss(
        hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor, mask: Tensor,
        advantages: Optional[Tensor], optional: list[Optional[Tensor]], teacher_hidden: Optional[Tensor],
        normalizer: Optional[Tensor], loss: str, options: str, loss_agg: str, inv_tau: float, compute_entropy: bool,
        impl: str, memory_budget: Optional[int], need_grad: bool, need_weight_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, lp, ent, teacher lp, dh, dW, db); ent, teacher lp and the gradients empty when absent."""
    backend = select(impl, hidden.device, weight, memory_budget)
    rows = Rows(mask, hidden.device)
    cd = compute_dtype(hidden)
    tok = token_inputs(mask, advantages, loss_agg, normalizer, cd, rows, **dict(zip(OPTIONAL, optional)))
    call = HeadCall(rows.take(hidden), weight, bias, rows.take(targets.long()), inv_tau, rows.take(teacher_hidden),
                    compute_entropy, need_grad, need_weight_grad)
    res = backend.loss_and_grad(call, TokenTerms(TOKEN_LOSSES[loss].decode(options), tok))
    full = lambda t: _empty(hidden) if t is None else rows.scatter(t, mask.shape, cd)  # noqa: E731
    st = res.stats
    return (res.loss_t.sum(), full(st.lp), full(st.ent), full(st.teacher_logprobs),
            *_grads_out(res.grads, hidden, weight, bias, rows))


@_sampled_token_loss.register_fake
def _(hidden, weight, bias, targets, mask, advantages, optional, teacher_hidden, normalizer, loss, options, loss_agg,
      inv_tau, compute_entropy, impl, memory_budget, need_grad, need_weight_grad):
    cd = compute_dtype(hidden)
    per_token = lambda present: hidden.new_empty(mask.shape if present else (0,), dtype=cd)  # noqa: E731
    return (hidden.new_empty((), dtype=cd), per_token(True), per_token(compute_entropy),
            per_token(teacher_hidden is not None), *_grads_fake(hidden, weight, bias, need_grad, need_weight_grad))


_sampled_token_loss.register_autograd(lambda ctx, grad, *_: _scaled(ctx, grad, 18), setup_context=_save_grads)


def sampled_token_loss(hidden, weight, bias, spec: SampledLoss):
    """-> (loss, TokenStats [B, T])."""
    need_grad, need_weight_grad = _needs(hidden, weight, bias)
    loss, lp, ent, lp_t, *_ = _sampled_token_loss(
        hidden, weight, bias, spec.targets, spec.mask, spec.advantages, [spec.optional.get(k) for k in OPTIONAL],
        spec.teacher_hidden, _normalizer(spec.normalizer, hidden.device), spec.loss.name, spec.loss.encoded,
        spec.loss_agg, spec.inv_tau, spec.compute_entropy, spec.impl, spec.memory_budget, need_grad, need_weight_grad)
    return loss, TokenStats(lp, _none(ent), _none(lp_t))


# -- the full-vocabulary JSD -----------------------------------------------------------------------

@_op("jsd_loss")
def _jsd_loss(
        hidden: Tensor, weight: Tensor, bias: Optional[Tensor], mask: Tensor, teacher_hidden: Tensor,
        token_weights: Optional[Tensor], normalizer: Optional[Tensor], loss_agg: str, inv_tau: float, beta: float,
        impl: str, memory_budget: Optional[int], need_grad: bool, need_weight_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss = sum_t agg_t w_t JSD_t, JSD [B, T], dh, dW, db)."""
    backend = select(impl, hidden.device, weight, memory_budget)
    rows = Rows(mask, hidden.device)
    cd = compute_dtype(hidden)
    tok = token_inputs(mask, None, loss_agg, normalizer, cd, rows, token_weights=token_weights)
    weights = tok.agg if tok.token_weights is None else tok.agg * tok.token_weights
    call = HeadCall(rows.take(hidden), weight, bias, None, inv_tau, rows.take(teacher_hidden), need_grad=need_grad,
                    need_weight_grad=need_weight_grad)
    res = backend.jsd_loss_and_grad(call, beta, weights)
    return ((weights * res.jsd).sum(), rows.scatter(res.jsd, mask.shape, cd),
            *_grads_out(res.grads, hidden, weight, bias, rows))


@_jsd_loss.register_fake
def _(hidden, weight, bias, mask, teacher_hidden, token_weights, normalizer, loss_agg, inv_tau, beta, impl,
      memory_budget, need_grad, need_weight_grad):
    cd = compute_dtype(hidden)
    return (hidden.new_empty((), dtype=cd), hidden.new_empty(mask.shape, dtype=cd),
            *_grads_fake(hidden, weight, bias, need_grad, need_weight_grad))


_jsd_loss.register_autograd(lambda ctx, grad, *_: _scaled(ctx, grad, 14), setup_context=_save_grads)


def jsd_loss(hidden, weight, bias, mask, teacher_hidden, token_weights, normalizer, loss_agg, inv_tau, beta, impl,
             memory_budget):
    """-> (loss, per-token JSD [B, T])."""
    need_grad, need_weight_grad = _needs(hidden, weight, bias)
    loss, jsd, *_ = _jsd_loss(hidden, weight, bias, mask, teacher_hidden, token_weights,
                              _normalizer(normalizer, hidden.device), loss_agg, inv_tau, beta, impl, memory_budget,
                              need_grad, need_weight_grad)
    return loss, jsd


# -- per-token log-probs and entropies ---------------------------------------------------------------

@_op("linear_logprobs")
def _linear_logprobs(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor, inv_tau: float,
                     compute_entropy: bool, impl: str, memory_budget: Optional[int]
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """(lp, lse, ent) per row of ``hidden`` [N, H]; ent empty unless ``compute_entropy``."""
    backend = select(impl, hidden.device, weight, memory_budget)
    st = backend.stats(HeadCall(hidden, weight, bias, targets, inv_tau, compute_entropy=compute_entropy))
    return st.lp, st.lse, _empty(st.lp) if st.ent is None else st.ent


@_linear_logprobs.register_fake
def _(hidden, weight, bias, targets, inv_tau, compute_entropy, impl, memory_budget):
    cd = compute_dtype(hidden)
    row = lambda: hidden.new_empty(hidden.shape[:1], dtype=cd)  # noqa: E731
    return row(), row(), row() if compute_entropy else hidden.new_empty(0, dtype=cd)


@_op("linear_logprobs_backward")
def _linear_logprobs_backward(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor, lse: Tensor,
                              ent: Tensor, g_lp: Tensor, g_ent: Optional[Tensor], inv_tau: float, impl: str,
                              memory_budget: Optional[int], need_weight_grad: bool
                              ) -> tuple[Tensor, Tensor, Tensor]:
    """(dh, dW, db) of sum_t (g_lp_t lp_t + g_ent_t ent_t), each in its input's dtype (empty when not wanted)."""
    backend = select(impl, hidden.device, weight, memory_budget)
    call = HeadCall(hidden, weight, bias, targets, inv_tau, need_grad=True, need_weight_grad=need_weight_grad)
    dh, dW, db = backend.backward(call, Stats(None, lse, _none(ent), None), g_lp, g_ent)
    return (dh.to(hidden.dtype), _empty(weight) if dW is None else dW.to(weight.dtype),
            _empty(weight) if db is None else db.to(bias.dtype))


@_linear_logprobs_backward.register_fake
def _(hidden, weight, bias, targets, lse, ent, g_lp, g_ent, inv_tau, impl, memory_budget, need_weight_grad):
    return (torch.empty_like(hidden), torch.empty_like(weight) if need_weight_grad else _empty(weight),
            torch.empty_like(bias) if (need_weight_grad and bias is not None) else _empty(weight))


def _save_logprobs(ctx, inputs, output):
    hidden, weight, bias, targets, inv_tau, compute_entropy, impl, memory_budget = inputs
    _, lse, ent = output
    ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
    ctx.inv_tau, ctx.impl, ctx.memory_budget = inv_tau, impl, memory_budget


def _logprobs_backward(ctx, g_lp, _, g_ent):
    hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
    g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.to(lse.dtype).contiguous()
    g_ent = None if (ent.numel() == 0 or g_ent is None) else g_ent.to(lse.dtype).contiguous()
    wants = ctx.needs_input_grad
    dh, dW, db = _linear_logprobs_backward(hidden, weight, bias, targets, lse, ent, g_lp, g_ent, ctx.inv_tau,
                                           ctx.impl, ctx.memory_budget, wants[1] or wants[2])
    keep = lambda g, like, wanted: g if (wanted and like is not None and g.shape == like.shape) else None  # noqa: E731
    return (keep(dh, hidden, wants[0]), keep(dW, weight, wants[1]), keep(db, bias, wants[2]),
            None, None, None, None, None)


_linear_logprobs.register_autograd(_logprobs_backward, setup_context=_save_logprobs)


def linear_logprobs(hidden, weight, bias, targets, inv_tau, compute_entropy, impl, memory_budget):
    """(lp, ent or None) per row of ``hidden`` [N, H], differentiable through both."""
    lp, _, ent = _linear_logprobs(hidden, weight, bias, targets, inv_tau, compute_entropy, impl, memory_budget)
    return lp, (ent if compute_entropy else None)
