"""Public entry points: argument checks and the choice of backend; the autograd (custom ops) is
in :mod:`rlsd_kernels.autograd`, the backends in :mod:`rlsd_kernels.ops`.

Under ``torch.compile`` the checks that need the tensors' values (NaN / inf, token ids in range,
log-probs <= 0, masks of 0 and 1, normalizer > 0) are skipped: they would read the values on the
host, a graph break; shapes, dtypes, devices and scalar arguments are checked as always.
"""

from __future__ import annotations

import math

import torch

from . import autograd, checks
from .math import masked_mean
from .ops import IMPLS, impl_key, usable
from .ops.base import HeadBackend
from .options import LamSchedulable, RLSDOptions
from .tokens import OPSDSampledTokenLoss, RLSDTokenLoss, token_inputs


def available_impls() -> list:
    """Implementations usable on this machine, e.g. ['eager', 'chunked', 'cpp']."""
    return [name for name in IMPLS if usable(name)]


def _impl(impl, weight, memory_budget):
    """(``impl`` as the custom ops take it, the vocabulary size the targets index or None for
    weight's, the memory budget checked)."""
    memory_budget = checks.count(memory_budget, "memory_budget")
    vocab_size = impl.vocab_size(weight) if isinstance(impl, HeadBackend) else None
    return impl_key(impl), vocab_size, memory_budget


def fused_linear_logprobs(hidden, weight, targets, *, bias=None, temperature=1.0,
                          return_entropy=False, impl="auto", memory_budget=None):
    """Target log-probs ``log softmax((h W^T + b) / tau)[y]`` and optionally the full-vocabulary
    entropy, without materialising the logits; differentiable through both outputs.

    hidden [..., H], weight [V, H], targets [...] -> (logp [...], entropy [...] or None), float32
    (float64 for float64 inputs). ``memory_budget``: bytes of working memory (chunk buffers) the
    fused backends may use, None for their default; ``impl="auto"`` picks by it (see ``ops.auto``).
    """
    impl, vocab_size, memory_budget = _impl(impl, weight, memory_budget)
    checks.head(hidden, weight, bias, targets, temperature, None, vocab_size)
    compute_entropy = checks.flag(return_entropy, "return_entropy")
    H = hidden.shape[-1]
    lp, ent = autograd.linear_logprobs(hidden.reshape(-1, H), weight, bias, targets.reshape(-1).long(),
                                       1.0 / temperature, compute_entropy, impl, memory_budget)
    shape = targets.shape
    return lp.view(shape), (ent.view(shape) if compute_entropy else None)


def _options(options) -> RLSDOptions:
    """The options of one call (None: the defaults)."""
    if options is None:
        return RLSDOptions()
    if not isinstance(options, RLSDOptions):
        raise TypeError(f"options must be an RLSDOptions, got {type(options).__name__}")
    return options


def rlsd_loss(hidden, weight, targets, advantages, mask, *, teacher_hidden=None, teacher_logprobs=None,
              bias=None, old_logprobs=None, ref_logprobs=None, temperature=1.0, token_weights=None,
              credit_mask=None, rollout_is_weights=None, compute_entropy=False, loss_agg="token-mean",
              normalizer=None, options=None, impl="auto", memory_budget=None,
              logprob_tolerance=checks.LOGPROB_TOLERANCE):
    """RLSD policy loss (docs/math.md): verifier sign, self-teacher magnitude; ``lam=0`` is GRPO/DAPO.

        delta = lp_T - lp_S;  w = exp(sign(A) delta);  Ahat = A ((1 - lam) + lam clamp(w, 1 - eps_w, 1 + eps_w))
        l_t   = max(-Ahat rho, -Ahat clamp(rho, 1 - eps_low, 1 + eps_high)),  rho = exp(lp_S - lp_old)
        L     = sum_t agg_t token_weights_t (r_t l_t + kl_coef KL_t - entropy_coef H_t)

    (the surrogate l_t of ``options.policy_loss``: PPO's above, CISPO, SAPO or VESPO; the ratio per
    token or per sequence, GSPO: docs/math.md). ``rollout_is_weights`` [B, T] (r_t >= 0): the
    rollout engine's importance weights, e.g. vLLM's sampler against the trainer's policy.
    hidden [B, T, H] (student), weight [V, H], targets [B, T] ints, advantages [B] or [B, T], mask [B, T]
    of 0 and 1. The teacher enters as ``teacher_hidden`` [B, T, H] (its log-probs are taken in the
    same sweep) or precomputed ``teacher_logprobs`` [B, T], not both. The scalar options (lam, eps_w,
    eps_low, eps_high, dual_clip, kl_coef, kl_type, entropy_coef, negative_only and the variants) come as one
    :class:`~rlsd_kernels.RLSDOptions` (``options=``; None: the defaults, lam = 1). Returns
    ``(loss, metrics)``; metrics are detached 0-d tensors (credit_clip_frac, delta_mean,
    delta_abs_mean, ppo_clip_frac, approx_kl, and entropy_mean when the entropy is computed:
    ``entropy_coef != 0`` or ``compute_entropy``). ``memory_budget`` as in :func:`fused_linear_logprobs`.
    ``logprob_tolerance``: old / ref log-probs above it at an unmasked token are refused (``math.inf``:
    not checked, as in the drop-ins for other libraries, whose originals take any value); teacher
    log-probs above 1e-4 always are.
    """
    options = _options(options)
    if logprob_tolerance != math.inf:
        checks.number(logprob_tolerance, "logprob_tolerance", low=0.0)
    compute_entropy = checks.flag(compute_entropy, "compute_entropy")
    impl, vocab_size, memory_budget = _impl(impl, weight, memory_budget)
    checks.loss_inputs(vocab_size, hidden, weight, targets, mask, bias, temperature, teacher_hidden, loss_agg, normalizer,
                       logprob_tolerance, teacher_logprobs=teacher_logprobs, old_logprobs=old_logprobs,
                       ref_logprobs=ref_logprobs, token_weights=token_weights, credit_mask=credit_mask,
                       rollout_is_weights=rollout_is_weights)
    checks.floating(advantages, "advantages", (1, 2))
    if advantages.shape != targets.shape and tuple(advantages.shape) != tuple(targets.shape[:1]):
        raise ValueError(f"advantages must have shape [B] = {tuple(targets.shape[:1])} or [B, T] = "
                         f"{tuple(targets.shape)}, got {tuple(advantages.shape)}")
    checks.same_device(hidden.device, advantages=advantages)
    checks.finite(advantages, "advantages")
    if options.needs_teacher and teacher_hidden is None and teacher_logprobs is None:
        raise ValueError("lam != 0 needs the teacher: pass teacher_hidden or teacher_logprobs (lam=0 is GRPO)")
    if options.kl_coef != 0.0 and ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs ref_logprobs")
    if not options.needs_teacher:
        teacher_hidden = teacher_logprobs = None  # GRPO: the teacher is not read

    optional = dict(teacher_logprobs=teacher_logprobs, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                    token_weights=token_weights, credit_mask=credit_mask, rollout_is_weights=rollout_is_weights)
    token_loss = RLSDTokenLoss(options)
    loss, stats = autograd.sampled_token_loss(hidden, weight, bias, autograd.SampledLoss(
        token_loss, targets, mask, advantages, optional, teacher_hidden, 1.0 / temperature, loss_agg, normalizer,
        options.needs_entropy_grad or compute_entropy, impl, memory_budget))
    tok = token_inputs(mask, advantages, loss_agg, normalizer, stats.lp.dtype, **optional)
    if stats.teacher_logprobs is not None:
        tok = tok.replace(teacher_logprobs=stats.teacher_logprobs)
    return loss, token_loss.metrics(stats.lp, stats.ent, tok)


def opsd_loss(hidden, weight, targets, mask, *, teacher_hidden=None, teacher_logprobs=None, form="sampled",
              beta=0.5, bias=None, temperature=1.0, token_weights=None, compute_entropy=False,
              loss_agg="token-mean", normalizer=None, impl="auto", memory_budget=None):
    """On-policy self-distillation baselines (no reward in the signal).

    ``form="sampled"``: l_t = -stopgrad(lp_T - lp_S) lp_S (teacher_hidden or teacher_logprobs).
    ``form="jsd"``:     l_t = JSD_beta(p_T || p_S) over the whole vocabulary (teacher_hidden), with
                        beta = 0 the forward KL, 1 the reverse KL; gradient through p_S only.
    Aggregated like :func:`rlsd_loss`. Returns ``(loss, metrics)``; ``compute_entropy`` (sampled
    form) adds the student's full-vocabulary ``entropy_mean`` from the same sweep.
    """
    if form not in ("sampled", "jsd"):
        raise ValueError(f"form must be 'sampled' or 'jsd', got {form!r}")
    compute_entropy = checks.flag(compute_entropy, "compute_entropy")
    if compute_entropy and form == "jsd":
        raise ValueError("compute_entropy is available with form='sampled' only")
    beta = checks.number(beta, "beta", low=0.0, high=1.0)
    impl, vocab_size, memory_budget = _impl(impl, weight, memory_budget)
    checks.loss_inputs(vocab_size, hidden, weight, targets, mask, bias, temperature, teacher_hidden, loss_agg, normalizer,
                       teacher_logprobs=teacher_logprobs, token_weights=token_weights)
    if teacher_hidden is None and (form == "jsd" or teacher_logprobs is None):
        raise ValueError(f"form={form!r} needs teacher_hidden" + ("" if form == "jsd" else " or teacher_logprobs"))
    valid = mask != 0
    if form == "jsd":
        loss, jsd = autograd.jsd_loss(hidden, weight, bias, mask, teacher_hidden, token_weights, normalizer, loss_agg,
                                      1.0 / temperature, beta, impl, memory_budget)
        return loss, {"jsd_mean": masked_mean(jsd, valid)}
    optional = dict(teacher_logprobs=teacher_logprobs, token_weights=token_weights)
    loss, stats = autograd.sampled_token_loss(hidden, weight, bias, autograd.SampledLoss(
        OPSDSampledTokenLoss(), targets, mask, None, optional, teacher_hidden, 1.0 / temperature, loss_agg,
        normalizer, compute_entropy, impl, memory_budget))
    teacher_lp = stats.teacher_logprobs
    if teacher_lp is None:
        teacher_lp = torch.where(valid, teacher_logprobs.to(stats.lp.dtype), 0.0)
    metrics = {"delta_mean": masked_mean(teacher_lp - stats.lp, valid)}
    if compute_entropy:
        metrics["entropy_mean"] = masked_mean(stats.ent, valid)
    return loss, metrics


class FusedLinearRLSDLoss(LamSchedulable, torch.nn.Module):
    """Module form of :func:`rlsd_loss`: the options at construction (one
    :class:`~rlsd_kernels.RLSDOptions`, ``options=``), tensors at call.

    ``lam`` is a property: a schedule sets ``module.lam`` between steps; the value is checked there
    and replaces ``module.options``.
    """

    def __init__(self, *, options=None, temperature=1.0, compute_entropy=False, loss_agg="token-mean", impl="auto",
                 memory_budget=None):
        super().__init__()
        self.options = _options(options)
        self.call_options = dict(temperature=temperature, compute_entropy=compute_entropy, loss_agg=loss_agg,
                                 impl=impl, memory_budget=memory_budget)

    def forward(self, hidden, weight, targets, advantages, mask, bias=None, **tensors):
        """``tensors``: teacher_hidden, teacher_logprobs, old_logprobs, ref_logprobs, token_weights,
        credit_mask, rollout_is_weights, normalizer."""
        return rlsd_loss(hidden, weight, targets, advantages, mask, bias=bias, **tensors, options=self.options,
                         **self.call_options)
