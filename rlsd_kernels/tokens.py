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

from .math import (LOG_RATIO_CLAMP, VESPO_LOG_W_MIN, aggregation_weights, cispo_surrogate, importance_ratio,
                   kl_penalty, masked_mean, ratio_surrogate, rlsd_credit, sapo_surrogate, sequence_mean, sequence_sum,
                   vespo_weight)
from .options import RLSDOptions

Tensor = torch.Tensor


@dataclass(frozen=True)
class TokenInputs:
    """Detached per-token inputs; ``agg`` carries the mask and the aggregation's normaliser,
    ``valid`` which tokens count in the metrics, ``seq`` (int64) the sequence of each row (its
    index b in [0, ``n_seqs``), for per-sequence sums); the rest are None when not given.
    ``rollout_is_weights``: the rollout engine's importance weights (e.g. vLLM's sampler against
    the trainer's policy), which multiply the surrogate only."""

    agg: Tensor
    valid: Tensor
    seq: Optional[Tensor] = None
    n_seqs: int = 0
    adv: Optional[Tensor] = None
    teacher_logprobs: Optional[Tensor] = None
    old_logprobs: Optional[Tensor] = None
    ref_logprobs: Optional[Tensor] = None
    token_weights: Optional[Tensor] = None
    credit_mask: Optional[Tensor] = None
    rollout_is_weights: Optional[Tensor] = None

    @staticmethod
    def optional_names() -> tuple:
        """The optional per-token inputs a caller passes by name (``token_inputs``' keywords)."""
        return tuple(f.name for f in dataclasses.fields(TokenInputs)
                     if f.name not in ("agg", "valid", "seq", "n_seqs", "adv"))

    def slice(self, rows) -> "TokenInputs":
        """The same inputs for ``rows`` (a slice or an index) of each tensor."""
        return TokenInputs(**{f.name: t[rows] if isinstance(t := getattr(self, f.name), Tensor) else t
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

    def scatter(self, values, shape, dtype):
        """``values`` of the rows ([rows, ...]) back in ``shape`` ([B, T, ...]) and ``dtype``; zeros
        at the rows that were dropped."""
        if self.index is None:
            return values.reshape(shape).to(dtype)
        full = torch.zeros(shape[0] * shape[1], *shape[2:], dtype=dtype, device=values.device)
        return full.index_copy_(0, self.index, values.to(dtype)).view(shape)


def token_inputs(mask, advantages, loss_agg, normalizer, dtype, rows: Optional[Rows] = None,
                 **optional) -> TokenInputs:
    """The per-token inputs of ``mask`` [B, T]: ``agg`` (:func:`aggregation_weights`), ``seq``
    (each token's sequence b), ``adv`` (broadcast from [B]) and the ``optional`` [B, T] tensors by
    name (``TokenInputs.optional_names()``: teacher_logprobs, old_logprobs, ...; None when not
    given), zeroed where masked. With ``rows``, flattened to those rows; without, kept [B, T]."""
    valid = mask != 0
    if rows is None:
        take = lambda t: torch.where(valid, t.to(dtype), 0.0)  # noqa: E731
    else:
        take = lambda t: rows.token(t, dtype)  # noqa: E731
    if advantages is not None and advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand(mask.shape)
    given = dict(adv=advantages, **optional)
    seq = torch.arange(mask.shape[0], device=mask.device).unsqueeze(-1).expand(mask.shape)
    return TokenInputs(agg=take(aggregation_weights(mask, loss_agg, normalizer, dtype)),
                       valid=valid if rows is None else rows.valid(),
                       seq=seq if rows is None else rows.ids(seq), n_seqs=mask.shape[0],
                       **{k: None if t is None else take(t) for k, t in given.items()})


class TokenLoss(abc.ABC):
    """A loss of per-token terms: ``loss(lp, ent, inputs) -> agg_t l_t`` per token.

    ``needs_entropy_grad``: l_t depends on the entropy (``ent`` carries a gradient).
    ``needs_all_rows``: l_t depends on other rows' statistics (e.g. a per-sequence sum of
    log-ratios), so every backend takes the statistics of all rows first, calls the loss once on
    all of them, then forms the gradient (``ops.base.two_passes``).
    ``name`` (its key in :data:`TOKEN_LOSSES`) and ``encoded`` (its options as a string) are how it
    crosses the losses' custom ops; ``decode(encoded)`` builds it again.
    """

    name: str
    needs_entropy_grad = False
    needs_all_rows = False
    encoded = ""

    @classmethod
    def decode(cls, encoded: str) -> "TokenLoss":
        return cls()

    @abc.abstractmethod
    def __call__(self, lp, ent, inputs: TokenInputs) -> Tensor:
        """The aggregated per-token loss; ``lp`` (and ``ent`` when needed) carry the gradient."""


class RLSDTokenLoss(TokenLoss):
    """The RLSD loss of ``options`` (docs/math.md), per token:

        Ahat_t = rlsd_credit(lp_T - lp, A)          (A itself when lam = 0)
        l_t    = agg_t w_t (r_t surrogate(rho_t, Ahat_t) + kl_coef KL_t [rho_t] - entropy_coef H_t)

    with the surrogate of ``options.policy_loss`` (PPO's clip, CISPO, SAPO, VESPO) and the ratio
    rho_t of ``options.is_level`` (per token, or GSPO's per sequence).
    """

    name = "rlsd"

    def __init__(self, options: RLSDOptions):
        self.options = options
        self.needs_entropy_grad = options.needs_entropy_grad
        self.needs_all_rows = options.needs_all_rows
        self.encoded = options.encoded

    @classmethod
    def decode(cls, encoded):
        return cls(RLSDOptions.decode(encoded))

    def __call__(self, lp, ent, tok):
        o = self.options
        adv = tok.adv
        if o.needs_teacher:
            adv, _ = rlsd_credit(tok.teacher_logprobs - lp.detach(), adv, o.lam, o.eps_w, o.negative_only,
                                 tok.credit_mask)
        lp_old = lp.detach() if tok.old_logprobs is None else tok.old_logprobs
        rho = self._ratio(lp, lp_old, tok)
        if o.policy_loss == "ppo":
            loss = ratio_surrogate(rho, adv, o.eps_low, o.eps_high, o.dual_clip, o.delta)
        elif o.policy_loss == "cispo":
            loss = cispo_surrogate(lp, rho, adv, o.eps_high)
        elif o.policy_loss == "sapo":
            loss = sapo_surrogate(rho, adv, o.sapo_tau_pos, o.sapo_tau_neg)
        else:  # vespo
            loss = -self._vespo_phi(lp, lp_old, tok) * adv * lp
        if tok.rollout_is_weights is not None and o.policy_loss != "vespo":  # VESPO folds them into phi
            loss = loss * tok.rollout_is_weights
        if o.kl_coef != 0.0:
            kl = kl_penalty(lp, tok.ref_logprobs, o.kl_type)
            if o.kl_is_corrected:  # the ratio before any clip, with its gradient
                kl = kl * rho
            loss = loss + o.kl_coef * kl
        if o.needs_entropy_grad:
            loss = loss - o.entropy_coef * ent
        if tok.token_weights is not None:
            loss = loss * tok.token_weights
        return tok.agg * loss

    def _ratio(self, lp, lp_old, tok):
        """The importance ratio of the surrogate, per token: ``exp(lp - lp_old)`` (is_level
        "token"), or the sequence's s_i = exp(mean over its valid tokens of lp - lp_old) (GSPO):
        "sequence" differentiates s_i itself (every token of i gets the sequence's mean gradient,
        as TRL and Liger do), "sequence-token" is s_i in value with the gradient of the token's own
        ratio, ``exp(stopgrad(log s_i) + lp - stopgrad(lp))`` (GSPO-token, as veRL does), so a
        per-token Ahat_t keeps its token. With one A and one weight per sequence the two agree."""
        level = self.options.is_level
        if level == "token":
            return importance_ratio(lp, lp_old)
        log_ratio = (lp - lp_old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        log_s = sequence_mean(log_ratio, tok.valid, tok.seq, tok.n_seqs)
        return torch.exp(log_s if level == "sequence" else log_s.detach() + lp - lp.detach())

    def _vespo_phi(self, lp, lp_old, tok):
        """VESPO's phi of each token's sequence: log w = sum over its valid tokens of lp - lp_old
        (clamped to [-20, 20] per token) plus log r_t (the rollout weights, clamped to [log 1e-8, 20])."""
        o = self.options
        with torch.no_grad():
            log_w = (lp - lp_old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
            if tok.rollout_is_weights is not None:
                log_w = log_w + torch.log(tok.rollout_is_weights).clamp(VESPO_LOG_W_MIN, LOG_RATIO_CLAMP)
            log_w = sequence_sum(torch.where(tok.valid, log_w, torch.zeros_like(log_w)), tok.seq, tok.n_seqs)
            return vespo_weight(log_w, tok.adv, o.vespo_k_pos, o.vespo_lambda_pos, o.vespo_k_neg, o.vespo_lambda_neg)

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
            rho = importance_ratio(lp, lp_old)
            ratio = self._ratio(lp, lp if tok.old_logprobs is None else tok.old_logprobs, tok)  # the surrogate's
            low, high = ratio < 1 - o.eps_low, ratio > 1 + o.eps_high  # the clips' bounds: "ppo"
            if o.policy_loss == "cispo":
                low, high = torch.zeros_like(low), ratio > o.eps_high
            elif o.policy_loss in ("sapo", "vespo"):  # no clip
                low = high = torch.zeros_like(low)
            out["ppo_clip_low_frac"] = masked_mean((low & (adv < 0)).float(), valid)
            out["ppo_clip_high_frac"] = masked_mean((high & (adv > 0)).float(), valid)
            out["ppo_clip_frac"] = out["ppo_clip_low_frac"] + out["ppo_clip_high_frac"]
            out["approx_kl"] = masked_mean(rho - 1.0 - torch.log(rho), valid)  # k3 of KL(pi_old || pi)
            if ent is not None:
                out["entropy_mean"] = masked_mean(ent, valid)
            if tok.ref_logprobs is not None:  # the KL term as the loss takes it
                kl = kl_penalty(lp, tok.ref_logprobs, o.kl_type)
                out["ref_kl"] = masked_mean(kl * ratio if o.kl_is_corrected else kl, valid)
            return out


class OPSDSampledTokenLoss(TokenLoss):
    """OPSD, sampled-token form: ``l_t = -agg_t w_t stopgrad(lp_T - lp) lp``."""

    name = "opsd-sampled"

    def __call__(self, lp, ent, tok):
        loss = -(tok.teacher_logprobs - lp.detach()) * lp
        if tok.token_weights is not None:
            loss = loss * tok.token_weights
        return tok.agg * loss


TOKEN_LOSSES = {cls.name: cls for cls in (RLSDTokenLoss, OPSDSampledTokenLoss)}
"""The token losses by name (how the custom ops find one)."""


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
