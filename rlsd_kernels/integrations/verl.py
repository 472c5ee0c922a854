"""veRL adapter: an RLSD policy loss with veRL's policy-loss signature, and the fused log-prob primitive.

Written against veRL 0.9.1 (``verl/trainer/ppo/core_algos.py``), where a policy loss is called as

    pg_loss, pg_metrics = policy_loss_fn(old_log_prob=..., log_prob=..., advantages=..., response_mask=...,
                                         loss_agg_mode=..., config=actor_config, rollout_is_weights=...)

and returns the aggregated loss and a dict of float metrics (``actor/pg_clipfrac``, ``actor/ppo_kl``,
``actor/pg_clipfrac_lower``). :class:`RLSDPolicyLoss` is such a function. With teacher log-probs
``lp_T`` it replaces the advantage by the RLSD credit (``rlsd_kernels.math.rlsd_credit``)::

    delta = lp_T - stopgrad(lp);  c = clamp(exp(sign(A) delta), 1 - eps_w, 1 + eps_w);  Ahat = A ((1 - lam) + lam c)

and then computes veRL's loss of its ``policy`` with ``Ahat``: ``vanilla`` (the default: the PPO clip
with ``clip_ratio_low/high``, the dual clip ``clip_ratio_c`` for negative advantages, log-ratios
clamped to [-20, 20]), ``gspo`` (GSPO-token, veRL's form), ``cispo`` (veRL's two-sided clip of the
stop-gradient weight) or ``sapo`` (``tau_pos`` / ``tau_neg``; always ``seq-mean-token-mean``, as
veRL); the rollout correction weights multiply the per-token loss. At ``lam = 0`` each is veRL's
loss of that name.

Aggregation ``loss = sum_t agg_t l_t`` follows veRL's ``agg_loss`` with ``config.global_batch_info``
(``dp_size`` d, ``batch_num_tokens`` N, ``global_batch_size`` S, ``loss_scale_factor`` L; when not
given: N = local valid tokens, S = local non-empty sequences, L = response length):

======================== ===========================================
token-mean               agg = m d / N
token-sum                agg = m d
seq-mean-token-sum       agg = m d / S
seq-mean-token-sum-norm  agg = m d / (S L)
seq-mean-token-mean      agg = m d / (S n_b),  n_b = valid tokens of row b
======================== ===========================================

Differences: a zero denominator gives a zero loss here (veRL: NaN for an all-masked token-mean
batch); ``seq-mean-token-mean`` divides by ``n_b`` where veRL divides by ``n_b + 1e-8``.

The teacher log-probs reach the loss as the ``teacher_log_prob`` keyword, or, since veRL's actor
calls the policy loss with fixed keywords, through ``with teacher_log_probs(t): ...`` around that
call: :func:`with_teacher` wraps the actor's loss function (``verl.workers.utils.losses.ppo_loss``
bound to the actor config) so that each micro-batch's ``TEACHER_KEY`` column ([B, R], aligned with
``old_log_probs``) is the teacher of its policy-loss call. :func:`logprobs_from_hidden` is the
fused counterpart of veRL's ``FusedLinearForPPO``: ``(hidden, weight, input_ids, temperature) ->
(log_probs, entropy)`` without the logits.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import torch

from ..api import fused_linear_logprobs
from ..math import (LOG_RATIO_CLAMP, cispo_surrogate, clipped_surrogate, importance_ratio, masked_mean,
                    ratio_surrogate, rlsd_credit, sapo_surrogate)
from ..options import LamSchedulable, RLSDOptions

AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean")

TEACHER_KEY = "rlsd_teacher_log_probs"

_TEACHER = contextvars.ContextVar("rlsd_teacher_log_prob", default=None)


@contextlib.contextmanager
def teacher_log_probs(log_prob: torch.Tensor):
    """Makes ``log_prob`` [B, T] the teacher log-probs of the RLSD policy-loss calls inside the block."""
    token = _TEACHER.set(log_prob)
    try:
        yield
    finally:
        _TEACHER.reset(token)


def with_teacher(loss_fn, key: str = TEACHER_KEY):
    """veRL's engine loss function ``loss_fn(model_output=, data=, dp_group=)`` (e.g.
    ``functools.partial(ppo_loss, config=actor_config)``) with each micro-batch's ``data[key]``
    ([B, R] teacher log-probs of the response tokens, like ``old_log_probs``) made the teacher of the
    RLSD policy loss inside it."""

    @functools.wraps(loss_fn)
    def loss(model_output, data, dp_group=None):
        teacher = data.select(key).to_padded_tensor()[key]
        with teacher_log_probs(teacher):
            return loss_fn(model_output=model_output, data=data, dp_group=dp_group)

    return loss


def logprobs_from_hidden(hidden_states, vocab_weights, input_ids, temperature=1.0, *, bias=None,
                         calculate_entropy=True, impl="auto"):  # calculate_entropy: veRL's spelling
    """Target log-probs ``log softmax((h W^T + b) / temperature)[y]`` and the full-vocabulary entropy,
    chunked over the vocabulary (no [tokens, V] logits), differentiable through both.

    hidden_states [B, T, H] (padded: the positions that predict ``input_ids``, i.e. the model's
    ``hidden[:, -R - 1:-1]`` for responses of length R) or [N, H] (packed/rmpad, with the rolled ids),
    vocab_weights [V, H], input_ids [B, T] or [N] -> (log_probs, entropy) of input_ids' shape, float32
    (entropy None without ``calculate_entropy``).
    """
    return fused_linear_logprobs(hidden_states, vocab_weights, input_ids, bias=bias, temperature=temperature,
                                 return_entropy=calculate_entropy, impl=impl)


def verl_aggregation_weights(response_mask, loss_agg_mode, dp_size=1, batch_num_tokens=None,
                             global_batch_size=None, loss_scale_factor=None):
    """Per-token weights ``agg`` with ``sum(agg * l)`` = veRL's ``agg_loss(l, mask, mode, ...)`` (table in the
    module docstring)."""
    if loss_agg_mode not in AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {AGG_MODES}, got {loss_agg_mode!r}")
    m = response_mask.to(torch.float32)
    if loss_agg_mode == "token-sum":
        return m * dp_size
    if loss_agg_mode == "token-mean":
        denom = m.sum() if batch_num_tokens is None else torch.as_tensor(batch_num_tokens, dtype=torch.float32)
        return m * dp_size / denom.to(m.device).clamp(min=1e-8)
    per_seq = m.sum(-1, keepdim=True)
    seqs = (per_seq > 0).sum() if global_batch_size is None else torch.as_tensor(global_batch_size)
    denom = seqs.to(m.device, torch.float32)
    if loss_agg_mode == "seq-mean-token-sum-norm":
        denom = denom * (m.shape[-1] if loss_scale_factor is None else loss_scale_factor)
    if loss_agg_mode == "seq-mean-token-mean":
        m = m / per_seq.clamp(min=1.0)
    return m * dp_size / denom.clamp(min=1e-8)


POLICIES = ("vanilla", "gspo", "cispo", "sapo")
"""veRL's policy losses this one takes the surrogate of (``core_algos``' registry names)."""


class RLSDPolicyLoss(LamSchedulable):
    """veRL policy loss (see the module docstring): RLSD credit, then the surrogate of veRL's
    ``policy`` loss (vanilla, gspo, cispo or sapo) with that credit as the advantage.

    ``lam`` (0 = veRL's loss; a property, so a schedule can set it between steps), ``eps_w``
    (credit clip) and ``negative_only`` (reweight only A < 0) are RLSD's options; the rest comes
    from veRL's actor config (``clip_ratio``, ``clip_ratio_low``, ``clip_ratio_high``,
    ``clip_ratio_c``, ``tau_pos``, ``tau_neg``, ``global_batch_info``).
    """

    def __init__(self, lam: float = RLSDOptions.lam, eps_w: float = RLSDOptions.eps_w,
                 negative_only: bool = RLSDOptions.negative_only, policy: str = "vanilla"):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.options = RLSDOptions(lam=lam, eps_w=eps_w, negative_only=negative_only)
        self.policy = policy

    def __call__(self, old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                 rollout_is_weights=None, *, teacher_log_prob=None, credit_mask=None):
        """old_log_prob, log_prob, advantages, response_mask: [B, T]; ``teacher_log_prob`` [B, T] (or
        from :func:`teacher_log_probs`) is needed when ``lam != 0``; ``credit_mask`` [B, T]: only tokens
        where it is nonzero are reweighted. Returns ``(pg_loss, metrics)`` as veRL's loss does,
        plus ``actor/rlsd_*`` metrics when the teacher is used."""
        if config is None:
            raise ValueError("config (veRL's actor config) is required")
        clip = config.clip_ratio
        eps_low = clip if config.clip_ratio_low is None else config.clip_ratio_low
        eps_high = clip if config.clip_ratio_high is None else config.clip_ratio_high
        mask = response_mask.bool()
        metrics = {}
        adv = advantages
        options = self.options
        if options.needs_teacher:
            teacher = _TEACHER.get() if teacher_log_prob is None else teacher_log_prob
            if teacher is None:
                raise ValueError("lam != 0 needs the teacher log-probs: pass teacher_log_prob or call inside "
                                 "`with teacher_log_probs(t):` (lam=0 is veRL's own loss)")
            delta = (teacher - log_prob).detach()
            adv, w = rlsd_credit(delta, advantages, options.lam, options.eps_w, options.negative_only, credit_mask)
            credited = mask & (advantages != 0)
            metrics["actor/rlsd_delta_mean"] = masked_mean(delta, mask).item()
            metrics["actor/rlsd_credit_clip_frac"] = masked_mean(
                ((w < 1 - options.eps_w) | (w > 1 + options.eps_w)).float(), credited).item()
        losses, surrogate_metrics = getattr(self, "_" + self.policy)(old_log_prob, log_prob, adv, mask, eps_low,
                                                                      eps_high, config)
        if rollout_is_weights is not None:
            losses = losses * rollout_is_weights
        if self.policy == "sapo":  # veRL's SAPO aggregates so whatever the mode asked
            loss_agg_mode = "seq-mean-token-mean"
        agg = verl_aggregation_weights(response_mask, loss_agg_mode, **config.global_batch_info)
        pg_loss = (torch.where(mask, losses, 0.0) * agg).sum()
        metrics.update(surrogate_metrics)
        return pg_loss, metrics

    @staticmethod
    def _vanilla(old_log_prob, log_prob, adv, mask, eps_low, eps_high, config):
        clip_c = config.get("clip_ratio_c", 3.0)
        if not clip_c > 1.0:
            raise ValueError(f"clip_ratio_c must be > 1 (dual-clip PPO), got {clip_c}")
        losses = clipped_surrogate(log_prob, old_log_prob, adv, eps_low, eps_high, dual_clip=clip_c)
        return losses, _vanilla_metrics(old_log_prob, log_prob, adv, mask, eps_low, eps_high, clip_c)

    @staticmethod
    def _gspo(old_log_prob, log_prob, adv, mask, eps_low, eps_high, config):
        """GSPO-token: log s_i = mean over i's valid tokens of lp - lp_old (unclamped), the ratio
        exp(min(stopgrad(log s_i) + lp - stopgrad(lp), 10)), PPO's clip without the dual clip."""
        log_ratio = log_prob - old_log_prob
        log_s = (torch.where(mask, log_ratio, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)).unsqueeze(-1)
        rho = torch.exp((log_prob - log_prob.detach() + log_s.detach()).clamp(max=10.0))
        losses = ratio_surrogate(rho, adv, eps_low, eps_high)
        with torch.no_grad():
            clipped = -adv * rho.clamp(1 - eps_low, 1 + eps_high) > -adv * rho
        return losses, _metrics(log_ratio, mask, clipped)

    @staticmethod
    def _cispo(old_log_prob, log_prob, adv, mask, eps_low, eps_high, config):
        """CISPO as veRL: the weight clipped to [1 - eps_low, 1 + eps_high], stop-gradient."""
        rho = importance_ratio(log_prob, old_log_prob)
        losses = cispo_surrogate(log_prob, rho, adv, 1 + eps_high, 1 - eps_low)
        with torch.no_grad():
            clipped = rho != rho.clamp(1 - eps_low, 1 + eps_high)
        return losses, _metrics((log_prob - old_log_prob).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP), mask, clipped)

    @staticmethod
    def _sapo(old_log_prob, log_prob, adv, mask, eps_low, eps_high, config):
        """SAPO with veRL's ``tau_pos`` / ``tau_neg``; no clip."""
        rho = importance_ratio(log_prob, old_log_prob)
        losses = sapo_surrogate(rho, adv, float(config.tau_pos), float(config.tau_neg))
        log_ratio = (log_prob - old_log_prob).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return losses, _metrics(log_ratio, mask, torch.zeros_like(mask))


@torch.no_grad()
def _metrics(log_ratio, mask, clipped):
    """veRL's metrics of a loss without the dual clip: pg_clipfrac, ppo_kl, pg_clipfrac_lower = 0."""
    n = mask.sum() + 1e-8
    frac = lambda x: (torch.where(mask, x.float(), 0.0).sum() / n).item()  # noqa: E731
    return {"actor/pg_clipfrac": frac(clipped), "actor/ppo_kl": frac(-log_ratio), "actor/pg_clipfrac_lower": 0.0}


@torch.no_grad()
def _vanilla_metrics(old_log_prob, log_prob, adv, mask, eps_low, eps_high, clip_c):
    """veRL's pg_clipfrac (clipped branch strictly larger), ppo_kl (mean of lp_old - lp) and
    pg_clipfrac_lower (dual clip active), as masked means with its 1e-8 guard."""
    log_ratio = (log_prob - old_log_prob).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped, clipped = -adv * ratio, -adv * ratio.clamp(1 - eps_low, 1 + eps_high)
    n = mask.sum() + 1e-8
    frac = lambda x: (torch.where(mask, x.float(), 0.0).sum() / n).item()  # noqa: E731
    return {"actor/pg_clipfrac": frac(clipped > unclipped),
            "actor/ppo_kl": frac(-log_ratio),
            "actor/pg_clipfrac_lower": frac((torch.maximum(unclipped, clipped) > -adv * clip_c) & (adv < 0))}


def register(name: str = "rlsd", **options) -> RLSDPolicyLoss:
    """Registers an :class:`RLSDPolicyLoss` (``options``: lam, eps_w, negative_only, policy) with
    veRL's ``register_policy_loss`` under ``name`` (e.g. ``register("rlsd_gspo", policy="gspo")``);
    select it with ``actor.policy_loss.loss_mode=<name>``. Returns the loss object (set ``.lam`` on
    it to schedule lam)."""
    from verl.trainer.ppo.core_algos import register_policy_loss

    loss = RLSDPolicyLoss(**options)
    register_policy_loss(name)(loss)
    return loss
