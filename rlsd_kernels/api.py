"""Public entry points: argument checks and the choice of backend; the autograd wiring is in
:mod:`rlsd_kernels.autograd`, the backends in :mod:`rlsd_kernels.ops`.
"""

from __future__ import annotations

import torch

from . import autograd, checks
from .math import compute_dtype, masked_mean
from .ops import IMPLS, auto, get_backend, usable
from .ops.base import HeadBackend
from .ops.triton import interpreted as triton_interpreted
from .options import LamSchedulable, RLSDOptions
from .tokens import OPSDSampledTokenLoss, RLSDTokenLoss, Rows, TokenTerms, token_inputs


def available_impls() -> list:
    """Implementations usable on this machine, e.g. ['eager', 'chunked', 'cpp']."""
    return [name for name in IMPLS if usable(name)]


def resolve_impl(impl: str, device: torch.device, weight=None, memory_budget=None) -> str:
    """The backend name ``impl`` stands for (``auto``: see :func:`rlsd_kernels.ops.auto`)."""
    if impl == "auto":
        V, size = (1, 4) if weight is None else (weight.shape[0], weight.element_size())
        return auto(device, V, size, memory_budget)
    if impl not in IMPLS:
        raise ValueError(f"impl must be 'auto', one of {IMPLS} or a backend object, got {impl!r}")
    return impl


def _select(impl, hidden, weight, memory_budget) -> HeadBackend:
    """The backend object for ``impl`` (a name, or a backend such as ``VocabParallel``)."""
    memory_budget = checks.count(memory_budget, "memory_budget")
    if isinstance(impl, HeadBackend):
        return impl.with_memory_budget(memory_budget)
    checks.floating(hidden, "hidden")
    checks.floating(weight, "weight")
    name = resolve_impl(impl, hidden.device, weight, memory_budget)
    if name.startswith("triton") and hidden.device.type != "cuda" and not triton_interpreted():
        raise ValueError(f"impl={name!r} runs on CUDA tensors, got hidden on {hidden.device} "
                         "(on the CPU only under TRITON_INTERPRET=1, Triton's interpreter)")
    return get_backend(name).with_memory_budget(memory_budget)


def fused_linear_logprobs(hidden, weight, targets, *, bias=None, temperature=1.0,
                          return_entropy=False, impl="auto", memory_budget=None):
    """Target log-probs ``log softmax((h W^T + b) / tau)[y]`` and optionally the full-vocabulary
    entropy, without materialising the logits; differentiable through both outputs.

    hidden [..., H], weight [V, H], targets [...] -> (logp [...], entropy [...] or None), float32
    (float64 for float64 inputs). ``memory_budget``: bytes of working memory (chunk buffers) the
    fused backends may use, None for their default; ``impl="auto"`` picks by it (see ``ops.auto``).
    """
    backend = _select(impl, hidden, weight, memory_budget)
    checks.head(hidden, weight, bias, targets, temperature, None, backend.vocab_size(weight))
    compute_entropy = checks.flag(return_entropy, "return_entropy")
    H = hidden.shape[-1]
    lp, ent = autograd.LinearLogprobs.apply(hidden.reshape(-1, H), weight, bias, targets.reshape(-1).long(),
                                            1.0 / temperature, compute_entropy, backend)
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
              credit_mask=None, compute_entropy=False, loss_agg="token-mean", normalizer=None, options=None,
              impl="auto", memory_budget=None):
    """RLSD policy loss (docs/math.md): verifier sign, self-teacher magnitude; ``lam=0`` is GRPO/DAPO.

        delta = lp_T - lp_S;  w = exp(sign(A) delta);  Ahat = A ((1 - lam) + lam clamp(w, 1 - eps_w, 1 + eps_w))
        l_t   = max(-Ahat rho, -Ahat clamp(rho, 1 - eps_low, 1 + eps_high)),  rho = exp(lp_S - lp_old)
        L     = sum_t agg_t token_weights_t (l_t + kl_coef KL_t - entropy_coef H_t)

    hidden [B, T, H] (student), weight [V, H], targets [B, T] ints, advantages [B] or [B, T], mask [B, T]
    of 0 and 1. The teacher enters as ``teacher_hidden`` [B, T, H] (its log-probs are taken in the
    same sweep) or precomputed ``teacher_logprobs`` [B, T], not both. The scalar options (lam, eps_w,
    eps_low, eps_high, dual_clip, kl_coef, kl_type, entropy_coef, negative_only) come as one
    :class:`~rlsd_kernels.RLSDOptions` (``options=``; None: the defaults, lam = 1). Returns
    ``(loss, metrics)``; metrics are detached 0-d tensors (credit_clip_frac, delta_mean,
    delta_abs_mean, ppo_clip_frac, approx_kl, and entropy_mean when the entropy is computed:
    ``entropy_coef != 0`` or ``compute_entropy``). ``memory_budget`` as in :func:`fused_linear_logprobs`.
    """
    options = _options(options)
    compute_entropy = checks.flag(compute_entropy, "compute_entropy")
    backend = _select(impl, hidden, weight, memory_budget)
    checks.loss_inputs(backend, hidden, weight, targets, mask, bias, temperature, teacher_hidden, loss_agg, normalizer,
                       teacher_logprobs=teacher_logprobs, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                       token_weights=token_weights, credit_mask=credit_mask)
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

    rows = Rows(mask, hidden.device)
    tok = token_inputs(mask, advantages, loss_agg, normalizer, compute_dtype(hidden), rows,
                       teacher_logprobs=teacher_logprobs, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                       token_weights=token_weights, credit_mask=credit_mask)
    token_loss = RLSDTokenLoss(options)
    loss, stats = autograd.sampled_token_loss(hidden, weight, bias, autograd.SampledLossParams(
        backend, targets, 1.0 / temperature, teacher_hidden, rows, TokenTerms(token_loss, tok),
        options.needs_entropy_grad or compute_entropy))
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
    backend = _select(impl, hidden, weight, memory_budget)
    checks.loss_inputs(backend, hidden, weight, targets, mask, bias, temperature, teacher_hidden, loss_agg, normalizer,
                       teacher_logprobs=teacher_logprobs, token_weights=token_weights)
    if teacher_hidden is None and (form == "jsd" or teacher_logprobs is None):
        raise ValueError(f"form={form!r} needs teacher_hidden" + ("" if form == "jsd" else " or teacher_logprobs"))
    rows = Rows(mask, hidden.device)
    dtype = compute_dtype(hidden)
    if form == "jsd":
        tok = token_inputs(mask, None, loss_agg, normalizer, dtype, rows, token_weights=token_weights)
        weights = tok.agg if tok.token_weights is None else tok.agg * tok.token_weights
        loss, jsd = autograd.jsd_loss(hidden, weight, bias, autograd.JSDParams(
            backend, teacher_hidden, 1.0 / temperature, beta, weights, rows))
        return loss, {"jsd_mean": masked_mean(jsd, tok.valid)}
    tok = token_inputs(mask, None, loss_agg, normalizer, dtype, rows, teacher_logprobs=teacher_logprobs,
                       token_weights=token_weights)
    loss, stats = autograd.sampled_token_loss(hidden, weight, bias, autograd.SampledLossParams(
        backend, targets, 1.0 / temperature, teacher_hidden, rows, TokenTerms(OPSDSampledTokenLoss(), tok),
        compute_entropy))
    teacher_lp = tok.teacher_logprobs if stats.teacher_logprobs is None else stats.teacher_logprobs
    metrics = {"delta_mean": masked_mean(teacher_lp - stats.lp, tok.valid)}
    if compute_entropy:
        metrics["entropy_mean"] = masked_mean(stats.ent, tok.valid)
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
        credit_mask, normalizer."""
        return rlsd_loss(hidden, weight, targets, advantages, mask, bias=bias, **tensors, options=self.options,
                         **self.call_options)
