"""The per-token inputs of the token math, and the token losses a backend calls per chunk.

:class:`TokenInputs` holds the detached per-token tensors (one value per row, in the compute
dtype), built by :func:`token_inputs` for the API, the eager references and the benchmarks. A
token loss (:class:`RLSDTokenLoss`, :class:`OPSDSampledTokenLoss`) composes the functions of
:mod:`rlsd_kernels.math`, says what it needs (the entropy's gradient; every row's statistics
before any row's gradient) and maps (lp, ent, inputs) to the aggregated per-token loss
``agg_t l_t``; :class:`TokenTerms` binds one to its inputs and gives a backend, per chunk of rows,
the loss and dL/dlp, dL/dent by autograd on [n]-sized tensors.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from .math import (LOG_RATIO_CLAMP, aggregation_weights, clipped_surrogate, kl_penalty, masked_mean,
                   rlsd_credit)
from .options import RLSDOptions

Tensor = torch.Tensor


@dataclass(frozen=True)
class TokenInputs:
    """Detached per-token inputs; ``agg`` carries the mask and the aggregation's normaliser,
    ``valid`` which tokens count in the metrics, ``seq`` (int64) the sequence of each row (its
    index b in [0, B), for per-sequence sums); the rest are None when not given."""

    agg: Tensor
    valid: Tensor
    seq: Optional[Tensor] = None
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

    def ids(self, t):
        """An integer per-token input (such as the sequence index), flattened to the rows."""
        t = t.reshape(-1)
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
    """The per-token inputs of ``mask`` [B, T]: ``agg`` (:func:`aggregation_weights`), ``seq``
    (each token's sequence b), ``adv`` (broadcast from [B]) and the optional [B, T] tensors, zeroed
    where masked. With ``rows``, flattened to those rows; without, kept [B, T]."""
    valid = mask != 0
    if rows is None:
        take = lambda t: torch.where(valid, t.to(dtype), 0.0)  # noqa: E731
    else:
        take = lambda t: rows.token(t, dtype)  # noqa: E731
    if advantages is not None and advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand(mask.shape)
    given = dict(adv=advantages, teacher_logprobs=teacher_logprobs, old_logprobs=old_logprobs,
                 ref_logprobs=ref_logprobs, token_weights=token_weights, credit_mask=credit_mask)
    seq = torch.arange(mask.shape[0], device=mask.device).unsqueeze(-1).expand(mask.shape)
    return TokenInputs(agg=take(aggregation_weights(mask, loss_agg, normalizer, dtype)),
                       valid=valid if rows is None else rows.valid(),
                       seq=seq if rows is None else rows.ids(seq),
                       **{k: None if t is None else take(t) for k, t in given.items()})


class TokenLoss(abc.ABC):
    """A loss of per-token terms: ``loss(lp, ent, inputs) -> agg_t l_t`` per token.

    ``needs_entropy_grad``: l_t depends on the entropy (``ent`` carries a gradient).
    ``needs_all_rows``: l_t depends on other rows' statistics (e.g. a per-sequence sum of
    log-ratios), so every backend takes the statistics of all rows first, calls the loss once on
    all of them, then forms the gradient (``ops.base.two_passes``).
    """

    needs_entropy_grad = False
    needs_all_rows = False

    @abc.abstractmethod
    def __call__(self, lp, ent, inputs: TokenInputs) -> Tensor:
        """The aggregated per-token loss; ``lp`` (and ``ent`` when needed) carry the gradient."""


class RLSDTokenLoss(TokenLoss):
    """The RLSD loss of ``options`` (docs/math.md), per token:

        Ahat_t = rlsd_credit(lp_T - lp, A)          (A itself when lam = 0)
        l_t    = agg_t w_t (clipped_surrogate(lp, lp_old, Ahat) + kl_coef KL_t - entropy_coef H_t)
    """

    def __init__(self, options: RLSDOptions):
        self.options = options
        self.needs_entropy_grad = options.needs_entropy_grad

    def __call__(self, lp, ent, tok):
        o = self.options
        adv = tok.adv
        if o.needs_teacher:
            adv, _ = rlsd_credit(tok.teacher_logprobs - lp.detach(), adv, o.lam, o.eps_w, o.negative_only,
                                 tok.credit_mask)
        lp_old = tok.old_logprobs
        loss = clipped_surrogate(lp, lp.detach() if lp_old is None else lp_old, adv, o.eps_low, o.eps_high,
                                 o.dual_clip)
        if o.kl_coef != 0.0:
            loss = loss + o.kl_coef * kl_penalty(lp, tok.ref_logprobs, o.kl_type)
        if o.needs_entropy_grad:
            loss = loss - o.entropy_coef * ent
        if tok.token_weights is not None:
            loss = loss * tok.token_weights
        return tok.agg * loss

    def metrics(self, lp, ent, tok: TokenInputs) -> dict:
        """Detached scalar diagnostics over valid tokens (``tok.valid``); no host sync."""
        with torch.no_grad():  # a block, not a decorator: mutmut mutates the body (docs/mutation.md)
            o = self.options
            valid, adv = tok.valid, tok.adv
            out = {}
            if tok.teacher_logprobs is not None:
                delta = tok.teacher_logprobs - lp
                out["delta_mean"] = masked_mean(delta, valid)
                out["delta_abs_mean"] = masked_mean(delta.abs(), valid)
                out["delta_std"] = (masked_mean(delta * delta, valid) - out["delta_mean"] ** 2).clamp(min=0).sqrt()
                _, w = rlsd_credit(delta, adv, o.lam, o.eps_w)
                credited = valid & (adv != 0)
                low, high = w < 1.0 - o.eps_w, w > 1.0 + o.eps_w
                out["credit_clip_low_frac"] = masked_mean(low.float(), credited)
                out["credit_clip_high_frac"] = masked_mean(high.float(), credited)
                out["credit_clip_frac"] = out["credit_clip_low_frac"] + out["credit_clip_high_frac"]
            lp_old = lp if tok.old_logprobs is None else tok.old_logprobs
            rho = torch.exp((lp - lp_old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
            out["ppo_clip_low_frac"] = masked_mean(((rho < 1 - o.eps_low) & (adv < 0)).float(), valid)
            out["ppo_clip_high_frac"] = masked_mean(((rho > 1 + o.eps_high) & (adv > 0)).float(), valid)
            out["ppo_clip_frac"] = out["ppo_clip_low_frac"] + out["ppo_clip_high_frac"]
            out["approx_kl"] = masked_mean(rho - 1.0 - torch.log(rho), valid)  # k3 of KL(pi_old || pi)
            if ent is not None:
                out["entropy_mean"] = masked_mean(ent, valid)
            if tok.ref_logprobs is not None:
                out["ref_kl"] = masked_mean(kl_penalty(lp, tok.ref_logprobs, o.kl_type), valid)
            return out


class OPSDSampledTokenLoss(TokenLoss):
    """OPSD, sampled-token form: ``l_t = -agg_t w_t stopgrad(lp_T - lp) lp``."""

    def __call__(self, lp, ent, tok):
        loss = -(tok.teacher_logprobs - lp.detach()) * lp
        if tok.token_weights is not None:
            loss = loss * tok.token_weights
        return tok.agg * loss


@dataclass(frozen=True)
class TokenTerms:
    """A token loss bound to its inputs over the rows: what a backend calls per chunk of rows."""

    loss: TokenLoss
    inputs: TokenInputs

    @property
    def needs_all_rows(self) -> bool:
        return self.loss.needs_all_rows

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
