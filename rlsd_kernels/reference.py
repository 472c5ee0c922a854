"""Eager references: materialise the [B, T, V] logits and apply the per-token math of
:mod:`rlsd_kernels.math` to them, with autograd for the gradients.

Not independent of the backends: they share ``math.py`` (and the eager backend uses
:func:`logits`). The tests judge these functions, like every backend, against a separate float64
transcription of docs/math.md (``tests/truth.py``). Arguments are those of the public functions
in :mod:`rlsd_kernels.api` (without ``impl``), unchecked.
"""

from __future__ import annotations

import torch

from .math import (RLSDConfig, aggregation_weights, generalized_jsd, masked_mean,
                   opsd_sampled_token_loss, rlsd_metrics, rlsd_token_loss)


def _compute_dtype(hidden):
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def logits(hidden, weight, bias, temperature):
    """(hidden W^T + b) / tau, computed in the input dtype, returned as float32 (float64 stays)."""
    z = torch.nn.functional.linear(hidden, weight, bias)
    z = z.double() if z.dtype == torch.float64 else z.float()
    return z / temperature


def linear_logprobs(hidden, weight, targets, bias=None, temperature=1.0, return_entropy=False):
    """Target log-probs and (optionally) full-vocabulary entropy of softmax(logits)."""
    logp = torch.log_softmax(logits(hidden, weight, bias, temperature), dim=-1)
    lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1) if return_entropy else None
    return lp, ent


def _token_inputs(hidden, advantages, mask, agg, **optional):
    adv = advantages.to(agg.dtype)
    tok = {"agg": agg, "adv": adv.unsqueeze(-1).expand_as(agg) if adv.dim() == 1 else adv,
           "valid": mask != 0}
    tok.update({k: v.to(agg.dtype) for k, v in optional.items() if v is not None})
    return tok


def rlsd_loss(hidden, weight, targets, advantages, mask, *, teacher_hidden=None, teacher_logprobs=None, bias=None,
              old_logprobs=None, ref_logprobs=None, temperature=1.0, token_weights=None, credit_mask=None,
              compute_entropy=False, loss_agg="token-mean", normalizer=None, **options):
    """RLSD (lam > 0) / GRPO (lam = 0) loss and metrics, eagerly; ``options`` are RLSDConfig's."""
    cfg = RLSDConfig(**options)
    targets = targets.long()
    if not cfg.needs_teacher:
        teacher_hidden = teacher_logprobs = None
    lp, ent = linear_logprobs(hidden, weight, targets, bias, temperature, cfg.needs_entropy or compute_entropy)
    if teacher_logprobs is None and teacher_hidden is not None:
        with torch.no_grad():
            teacher_logprobs, _ = linear_logprobs(teacher_hidden, weight, targets, bias, temperature)
    agg = aggregation_weights(mask, loss_agg, normalizer, lp.dtype)
    tok = _token_inputs(hidden, advantages, mask, agg, lp_teacher=teacher_logprobs,
                        lp_old=old_logprobs, lp_ref=ref_logprobs, token_weights=token_weights,
                        credit_mask=credit_mask)
    loss = rlsd_token_loss(cfg, lp, ent, tok).sum()
    return loss, rlsd_metrics(cfg, lp.detach(), None if ent is None else ent.detach(), tok)


def opsd_loss(hidden, weight, targets, mask, *, teacher_hidden=None, teacher_logprobs=None,
              form="sampled", beta=0.5, bias=None, temperature=1.0, token_weights=None,
              compute_entropy=False, loss_agg="token-mean", normalizer=None):
    """OPSD baselines: sampled-token form, or the full-vocabulary generalised JSD."""
    targets = targets.long()
    agg = aggregation_weights(mask, loss_agg, normalizer, _compute_dtype(hidden))
    if form == "jsd":
        z_s = logits(hidden, weight, bias, temperature)
        with torch.no_grad():
            z_t = logits(teacher_hidden, weight, bias, temperature)
        per_token = generalized_jsd(z_s, z_t, beta)
        w = agg.to(per_token.dtype) * (1.0 if token_weights is None else token_weights.to(per_token.dtype))
        return (w * per_token).sum(), {"jsd_mean": masked_mean(per_token.detach(), mask != 0)}
    lp, ent = linear_logprobs(hidden, weight, targets, bias, temperature, compute_entropy)
    if teacher_logprobs is None:
        with torch.no_grad():
            teacher_logprobs, _ = linear_logprobs(teacher_hidden, weight, targets, bias, temperature)
    tok = _token_inputs(hidden, torch.zeros_like(agg), mask, agg.to(lp.dtype),
                        lp_teacher=teacher_logprobs, token_weights=token_weights)
    loss = opsd_sampled_token_loss(lp, tok).sum()
    metrics = {"delta_mean": masked_mean(tok["lp_teacher"] - lp.detach(), tok["valid"])}
    if compute_entropy:
        metrics["entropy_mean"] = masked_mean(ent.detach(), tok["valid"])
    return loss, metrics
