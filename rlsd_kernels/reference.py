"""Eager references: materialise the [B, T, V] logits and apply the per-token math of
:mod:`rlsd_kernels.math` to them, with autograd for the gradients.

Not independent of the backends: they share ``math.py``, the token losses and inputs of
``tokens.py`` and the eager backend's :func:`~rlsd_kernels.ops.eager.logits`. The tests judge
these functions, like every backend, against a separate float64 transcription of docs/math.md
(``tests/truth.py``). Arguments are those of the public functions in :mod:`rlsd_kernels.api`
(without ``impl``), unchecked.
"""

from __future__ import annotations

import torch

from .math import generalized_jsd, masked_mean
from .ops.eager import logits
from .options import RLSDOptions
from .tokens import OPSDSampledTokenLoss, RLSDTokenLoss, token_inputs


def linear_logprobs(hidden, weight, targets, bias=None, temperature=1.0, return_entropy=False):
    """Target log-probs and (``return_entropy``, as in ``fused_linear_logprobs``) the
    full-vocabulary entropy of softmax(logits)."""
    logp = torch.log_softmax(logits(hidden, weight, bias, 1.0 / temperature), dim=-1)
    lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1) if return_entropy else None
    return lp, ent


def _teacher_logprobs(teacher_hidden, teacher_logprobs, weight, targets, bias, temperature):
    if teacher_logprobs is None and teacher_hidden is not None:
        with torch.no_grad():
            teacher_logprobs, _ = linear_logprobs(teacher_hidden, weight, targets, bias, temperature)
    return teacher_logprobs


def rlsd_loss(hidden, weight, targets, advantages, mask, *, teacher_hidden=None, teacher_logprobs=None, bias=None,
              old_logprobs=None, ref_logprobs=None, temperature=1.0, token_weights=None, credit_mask=None,
              rollout_is_weights=None, compute_entropy=False, loss_agg="token-mean", normalizer=None, options=None):
    """RLSD (lam > 0) / GRPO (lam = 0) loss and metrics, eagerly; ``options`` an RLSDOptions."""
    options = RLSDOptions() if options is None else options
    targets = targets.long()
    if not options.needs_teacher:
        teacher_hidden = teacher_logprobs = None
    lp, ent = linear_logprobs(hidden, weight, targets, bias, temperature,
                              options.needs_entropy_grad or compute_entropy)
    teacher_logprobs = _teacher_logprobs(teacher_hidden, teacher_logprobs, weight, targets, bias, temperature)
    tok = token_inputs(mask, advantages, loss_agg, normalizer, lp.dtype, teacher_logprobs=teacher_logprobs,
                       old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, token_weights=token_weights,
                       credit_mask=credit_mask, rollout_is_weights=rollout_is_weights)
    token_loss = RLSDTokenLoss(options)
    loss = token_loss(lp, ent, tok).sum()
    return loss, token_loss.metrics(lp.detach(), None if ent is None else ent.detach(), tok)


def opsd_loss(hidden, weight, targets, mask, *, teacher_hidden=None, teacher_logprobs=None,
              form="sampled", beta=0.5, bias=None, temperature=1.0, token_weights=None,
              compute_entropy=False, loss_agg="token-mean", normalizer=None):
    """OPSD baselines: sampled-token form, or the full-vocabulary generalised JSD."""
    targets = targets.long()
    if form == "jsd":
        z_s = logits(hidden, weight, bias, 1.0 / temperature)
        with torch.no_grad():
            z_t = logits(teacher_hidden, weight, bias, 1.0 / temperature)
        per_token = generalized_jsd(z_s, z_t, beta)
        tok = token_inputs(mask, None, loss_agg, normalizer, per_token.dtype, token_weights=token_weights)
        w = tok.agg * (1.0 if tok.token_weights is None else tok.token_weights)
        return (w * per_token).sum(), {"jsd_mean": masked_mean(per_token.detach(), tok.valid)}
    lp, ent = linear_logprobs(hidden, weight, targets, bias, temperature, compute_entropy)
    teacher_logprobs = _teacher_logprobs(teacher_hidden, teacher_logprobs, weight, targets, bias, temperature)
    tok = token_inputs(mask, None, loss_agg, normalizer, lp.dtype, teacher_logprobs=teacher_logprobs,
                       token_weights=token_weights)
    loss = OPSDSampledTokenLoss()(lp, None, tok).sum()
    metrics = {"delta_mean": masked_mean(tok.teacher_logprobs - lp.detach(), tok.valid)}
    if compute_entropy:
        metrics["entropy_mean"] = masked_mean(ent.detach(), tok.valid)
    return loss, metrics
