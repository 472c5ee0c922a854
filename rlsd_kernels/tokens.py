"""The per-token inputs of the token math, and the token losses a backend calls per chunk.

:class:`TokenInputs` holds the detached per-token tensors (one value per row, in the compute
dtype), built by :func:`token_inputs` for the API, the eager references and the benchmarks. A
token loss (:class:`RLSDTokenLoss`, :class:`OPSDSampledTokenLoss`) says what it needs and maps
(lp, ent, inputs) to the aggregated per-token loss ``agg_t l_t``; :class:`TokenTerms` binds one to
its inputs and gives a backend, per chunk of rows, the loss and dL/dlp, dL/dent by autograd on
[n]-sized tensors.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from .math import aggregation_weights, opsd_sampled_token_loss, rlsd_token_loss
from .options import RLSDOptions

Tensor = torch.Tensor


@dataclass(frozen=True)
class TokenInputs:
    """Detached per-token inputs; ``agg`` carries the mask and the aggregation's normaliser,
    ``valid`` which tokens count in the metrics; the rest are None when not given."""

    agg: Tensor
    valid: Tensor
    adv: Optional[Tensor] = None
    teacher_logprobs: Optional[Tensor] = None
    old_logprobs: Optional[Tensor] = None
    ref_logprobs: Optional[Tensor] = None
    token_weights: Optional[Tensor] = None
    credit_mask: Optional[Tensor] = None

    def slice(self, rows) -> "TokenInputs":
        """The same inputs for ``rows`` (a slice or an index) of each tensor."""
        return TokenInputs(**{f.name: None if (t := getattr(self, f.name)) is None else t[rows]
                              for f in dataclasses.fields(self)})

    def replace(self, **changes) -> "TokenInputs":
        return dataclasses.replace(self, **changes)


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


def token_inputs(mask, advantages, loss_agg, normalizer, dtype, rows: Optional[Rows] = None, *,
                 teacher_logprobs=None, old_logprobs=None, ref_logprobs=None, token_weights=None,
                 credit_mask=None) -> TokenInputs:
    """The per-token inputs of ``mask`` [B, T]: ``agg`` (:func:`aggregation_weights`), ``adv``
    (broadcast from [B]) and the optional [B, T] tensors, zeroed where masked. With ``rows``,
    flattened to those rows; without, kept [B, T]."""
    valid = mask != 0
    if rows is None:
        take = lambda t: torch.where(valid, t.to(dtype), 0.0)  # noqa: E731
    else:
        take = lambda t: rows.token(t, dtype)  # noqa: E731
    if advantages is not None and advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand(mask.shape)
    given = dict(adv=advantages, teacher_logprobs=teacher_logprobs, old_logprobs=old_logprobs,
                 ref_logprobs=ref_logprobs, token_weights=token_weights, credit_mask=credit_mask)
    return TokenInputs(agg=take(aggregation_weights(mask, loss_agg, normalizer, dtype)),
                       valid=valid if rows is None else rows.valid(),
                       **{k: None if t is None else take(t) for k, t in given.items()})


class TokenLoss(abc.ABC):
    """A loss of per-token terms: ``loss(lp, ent, inputs) -> agg_t l_t`` per token."""

    needs_entropy_grad = False  # whether l_t depends on the entropy (ent carries a gradient)

    @abc.abstractmethod
    def __call__(self, lp, ent, inputs: TokenInputs) -> Tensor:
        """The aggregated per-token loss; ``lp`` (and ``ent`` when needed) carry the gradient."""


class RLSDTokenLoss(TokenLoss):
    """:func:`rlsd_kernels.math.rlsd_token_loss` with ``options``."""

    def __init__(self, options: RLSDOptions):
        self.options = options
        self.needs_entropy_grad = options.needs_entropy_grad

    def __call__(self, lp, ent, inputs):
        return rlsd_token_loss(self.options, lp, ent, inputs)


class OPSDSampledTokenLoss(TokenLoss):
    """:func:`rlsd_kernels.math.opsd_sampled_token_loss`."""

    def __call__(self, lp, ent, inputs):
        return opsd_sampled_token_loss(lp, inputs)


@dataclass(frozen=True)
class TokenTerms:
    """A token loss bound to its inputs over the rows: what a backend calls per chunk of rows."""

    loss: TokenLoss
    inputs: TokenInputs

    def __call__(self, rows: slice, lp, ent, teacher_logprobs):
        """(detached loss_t, dL/dlp, dL/dent or None) of the chunk ``rows``."""
        inputs = self.inputs.slice(rows)
        if teacher_logprobs is not None:
            inputs = inputs.replace(teacher_logprobs=teacher_logprobs)
        with_ent = self.loss.needs_entropy_grad
        lp = lp.detach().requires_grad_()
        ent = ent.detach().requires_grad_() if with_ent else None
        with torch.enable_grad():
            loss = self.loss(lp, ent, inputs)
            grads = torch.autograd.grad(loss.sum(), [lp] if ent is None else [lp, ent], allow_unused=True,
                                        materialize_grads=True)
        return loss.detach(), grads[0], (grads[1] if with_ent else None)
