"""Public entry points: argument checks, backend choice, autograd wiring.

The fused losses compute their gradient during the forward sweep (the chunk's logits are still
in memory then) and hand it to autograd, which scales it by the incoming gradient: four GEMMs for
a loss with a teacher, none of them repeated. ``fused_linear_logprobs`` returns per-token values,
so its backward recomputes each chunk's logits.
"""

from __future__ import annotations

import torch

from . import checks, reference
from .math import (KL_TYPES, LOSS_AGGS, RLSDConfig, aggregation_weights, masked_mean,
                   opsd_sampled_token_loss, rlsd_metrics, rlsd_token_loss)
from .ops import FUSED, HeadBackend, get_backend, usable

_D = RLSDConfig  # the option defaults live in one place: RLSDConfig's fields


def available_impls() -> list:
    """Implementations usable on this machine, fastest-preferred last: e.g. ['eager', 'chunked', 'cpp']."""
    return ["eager"] + [name for name in FUSED if usable(name)]


def resolve_impl(impl: str, device: torch.device) -> str:
    """``auto``: Triton on CUDA, the C++ epilogues on the CPU, else the PyTorch chunked path."""
    if impl != "auto":
        if impl != "eager" and impl not in FUSED:
            raise ValueError(f"impl must be 'auto', 'eager', one of {FUSED} or a backend object, got {impl!r}")
        return impl
    preferred = ("triton", "chunked") if device.type == "cuda" else ("cpp", "chunked")
    return next(name for name in preferred if usable(name))


def _select(impl, device):
    """'eager' or the backend object for ``impl`` (a name, or a backend such as ``VocabParallel``)."""
    if isinstance(impl, HeadBackend):
        return impl
    name = resolve_impl(impl, device)
    return name if name == "eager" else get_backend(name)


def _vocab_size(backend, weight):
    return None if backend == "eager" else backend.vocab_size(weight)


class _PrecomputedGradLoss(torch.autograd.Function):
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


class _LinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, inv_tau, want_entropy, backend):
        lp, lse, ent, _ = backend.stats(hidden, weight, bias, targets, inv_tau, want_entropy)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.inv_tau, ctx.backend = inv_tau, backend
        if ent is None:
            return lp, lp.new_empty(0)
        return lp, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.to(lse.dtype).contiguous()
        g_ent = None if (ent is None or g_ent is None) else g_ent.to(lse.dtype).contiguous()
        dh, dW, db = ctx.backend.backward(hidden, weight, bias, targets, ctx.inv_tau, lse, ent, g_lp, g_ent,
                                          ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        cast = lambda g, like: None if (g is None or like is None) else g.to(like.dtype)  # noqa: E731
        return cast(dh, hidden), cast(dW, weight), cast(db, bias), None, None, None, None


def fused_linear_logprobs(hidden, weight, targets, *, bias=None, temperature=1.0,
                          return_entropy=False, impl="auto"):
    """Target log-probs ``log softmax((h W^T + b) / tau)[y]`` and optionally the full-vocabulary
    entropy, without materialising the logits; differentiable through both outputs.

    hidden [..., H], weight [V, H], targets [...] -> (logp [...], entropy [...] or None), float32
    (float64 for float64 inputs).
    """
    backend = _select(impl, hidden.device)
    checks.head(hidden, weight, bias, targets, temperature, None, _vocab_size(backend, weight))
    if backend == "eager":
        return reference.linear_logprobs(hidden, weight, targets, bias, temperature, return_entropy)
    H = hidden.shape[-1]
    lp, ent = _LinearLogprobs.apply(hidden.reshape(-1, H), weight, bias, targets.reshape(-1).long(),
                                    1.0 / temperature, return_entropy, backend)
    shape = targets.shape
    return lp.view(shape), (ent.view(shape) if return_entropy else None)


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------

def _check_loss_inputs(backend, hidden, weight, targets, mask, bias, temperature, teacher_hidden, loss_agg,
                       normalizer, **per_token):
    checks.head(hidden, weight, bias, targets, temperature, 3, _vocab_size(backend, weight))
    shape = targets.shape
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    checks.same_shape(mask, "mask", shape, "one entry per token, like targets")
    checks.same_device(hidden.device, mask=mask, teacher_hidden=teacher_hidden)
    if teacher_hidden is not None:
        checks.floating(teacher_hidden, "teacher_hidden", 3)
        checks.same_shape(teacher_hidden, "teacher_hidden", hidden.shape, "like hidden")
        if teacher_hidden.dtype != hidden.dtype:
            raise TypeError(f"teacher_hidden dtype {teacher_hidden.dtype} differs from hidden dtype {hidden.dtype}")
        checks.finite(teacher_hidden, "teacher_hidden")
    for name, t in per_token.items():
        checks.per_token(t, name, shape, hidden.device)
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {loss_agg!r}")
    if normalizer is not None:
        n = normalizer.item() if isinstance(normalizer, torch.Tensor) and normalizer.device.type == "cpu" else normalizer
        if not isinstance(n, torch.Tensor) and not (isinstance(n, (int, float)) and n > 0):
            raise ValueError(f"normalizer must be a number > 0, got {normalizer!r}")


class _Rows:
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


def _token_fn(loss_of, tok, with_entropy: bool):
    """Per-chunk loss and its coefficients dL/dlp, dL/dent by autograd over [n]-sized tensors."""

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


def _with_precomputed_grad(hidden, weight, bias, rows, sweep):
    """Runs ``sweep(need_grad, need_weight_grad) -> (loss, (dh_rows, dW, db) or None)`` inside the
    autograd wrapper; the rows' dh goes back to hidden's shape, every gradient to its input's dtype."""
    needs = [t is not None and t.requires_grad for t in (hidden, weight, bias)]
    need_grad = torch.is_grad_enabled() and any(needs)

    def run():
        loss, grads = sweep(need_grad, needs[1] or needs[2])
        if not need_grad:
            return loss, None, None, None
        dh, dW, db = grads
        return (loss, rows.scatter(dh, hidden), None if dW is None else dW.to(weight.dtype),
                None if db is None else db.to(bias.dtype))

    return _PrecomputedGradLoss.apply(hidden, weight, bias, run)


def _fused_loss(backend, hidden, weight, bias, targets, temperature, teacher_hidden, rows, tok,
                loss_of, want_entropy, with_entropy_grad):
    """The sampled-token losses: returns (loss, lp, ent, lp_teacher) over the rows."""
    out = {}

    def sweep(need_grad, need_weight_grad):
        loss_t, lp, ent, lp_t, grads = backend.loss_and_grad(
            rows.take(hidden), weight, bias, rows.take(targets).long(), 1.0 / temperature, want_entropy,
            None if teacher_hidden is None else rows.take(teacher_hidden),
            _token_fn(loss_of, tok, with_entropy_grad), need_grad, need_weight_grad)
        out.update(lp=lp, ent=ent, lp_teacher=lp_t)
        return loss_t.sum(), grads

    loss = _with_precomputed_grad(hidden, weight, bias, rows, sweep)
    return loss, out["lp"], out["ent"], out["lp_teacher"]


def _token_inputs(rows, mask, advantages, loss_agg, normalizer, dtype, **optional):
    agg = aggregation_weights(mask, loss_agg, normalizer, dtype)
    tok = {"agg": rows.token(agg, dtype)}
    if advantages is not None:
        adv = advantages.unsqueeze(-1).expand_as(agg) if advantages.dim() == 1 else advantages
        tok["adv"] = rows.token(adv, dtype)
    tok.update({k: rows.token(v, dtype) for k, v in optional.items() if v is not None})
    return tok


def rlsd_loss(hidden, weight, targets, advantages, mask, *, teacher_hidden=None, teacher_logprobs=None,
              bias=None, old_logprobs=None, ref_logprobs=None, temperature=1.0, lam=_D.lam, eps_w=_D.eps_w,
              eps_low=_D.eps_low, eps_high=_D.eps_high, dual_clip=_D.dual_clip, kl_coef=_D.kl_coef,
              kl_type=_D.kl_type, entropy_coef=_D.entropy_coef, token_weights=None, credit_mask=None,
              negative_only=_D.negative_only, compute_entropy=False,
              loss_agg="token-mean", normalizer=None, impl="auto"):
    """RLSD policy loss (SPEC.md): verifier sign, self-teacher magnitude; ``lam=0`` is GRPO/DAPO.

        delta = lp_T - lp_S;  w = exp(sign(A) delta);  Ahat = A ((1 - lam) + lam clamp(w, 1 - eps_w, 1 + eps_w))
        l_t   = max(-Ahat rho, -Ahat clamp(rho, 1 - eps_low, 1 + eps_high)),  rho = exp(lp_S - lp_old)
        L     = sum_t agg_t token_weights_t (l_t + kl_coef KL_t - entropy_coef H_t)

    hidden [B, T, H] (student), weight [V, H], targets [B, T] ints, advantages [B] or [B, T], mask [B, T].
    The teacher enters as ``teacher_hidden`` [B, T, H] (its log-probs are taken in the same sweep)
    or precomputed ``teacher_logprobs`` [B, T]. Returns ``(loss, metrics)``; metrics are detached
    0-d tensors (credit_clip_frac, delta_mean, delta_abs_mean, ppo_clip_frac, approx_kl, and
    entropy_mean when the entropy is computed: ``entropy_coef != 0`` or ``compute_entropy``).
    """
    cfg = RLSDConfig(lam=float(lam), eps_w=float(eps_w), eps_low=float(eps_low), eps_high=float(eps_high),
                     dual_clip=None if dual_clip is None else float(dual_clip), kl_coef=float(kl_coef),
                     kl_type=kl_type, entropy_coef=float(entropy_coef), negative_only=bool(negative_only))
    _check_rlsd_options(cfg)
    backend = _select(impl, hidden.device)
    _check_loss_inputs(backend, hidden, weight, targets, mask, bias, temperature, teacher_hidden, loss_agg, normalizer,
                       teacher_logprobs=teacher_logprobs, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                       token_weights=token_weights, credit_mask=credit_mask)
    checks.floating(advantages, "advantages", (1, 2))
    if advantages.shape != targets.shape and tuple(advantages.shape) != tuple(targets.shape[:1]):
        raise ValueError(f"advantages must have shape [B] = {tuple(targets.shape[:1])} or [B, T] = "
                         f"{tuple(targets.shape)}, got {tuple(advantages.shape)}")
    checks.same_device(hidden.device, advantages=advantages)
    checks.finite(advantages, "advantages")
    if cfg.needs_teacher and teacher_hidden is None and teacher_logprobs is None:
        raise ValueError("lam != 0 needs the teacher: pass teacher_hidden or teacher_logprobs (lam=0 is GRPO)")
    if cfg.kl_coef != 0.0 and ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs ref_logprobs")
    if not cfg.needs_teacher:
        teacher_hidden = teacher_logprobs = None  # GRPO: the teacher is not read
    elif teacher_logprobs is not None:
        teacher_hidden = None

    if backend == "eager":
        return reference.rlsd_loss(hidden, weight, targets.long(), advantages, mask, cfg=cfg,
                                   teacher_hidden=teacher_hidden, teacher_logprobs=teacher_logprobs, bias=bias,
                                   old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                                   temperature=temperature, token_weights=token_weights,
                                   credit_mask=credit_mask, loss_agg=loss_agg, normalizer=normalizer)
    rows = _Rows(mask, hidden.device)
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    tok = _token_inputs(rows, mask, advantages, loss_agg, normalizer, dtype, lp_teacher=teacher_logprobs,
                        lp_old=old_logprobs, lp_ref=ref_logprobs, token_weights=token_weights,
                        credit_mask=credit_mask)
    want_entropy = cfg.needs_entropy or compute_entropy
    loss, lp, ent, lp_teacher = _fused_loss(
        backend, hidden, weight, bias, targets, temperature, teacher_hidden, rows, tok,
        lambda lp_, ent_, t: rlsd_token_loss(cfg, lp_, ent_, t), want_entropy, cfg.needs_entropy)
    tok["valid"] = rows.valid()
    if lp_teacher is not None:
        tok["lp_teacher"] = lp_teacher
    return loss, rlsd_metrics(cfg, lp, ent, tok)


def _check_rlsd_options(cfg: RLSDConfig):
    if not 0.0 <= cfg.lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {cfg.lam}")
    if not 0.0 <= cfg.eps_w < 1.0:
        raise ValueError(f"eps_w must be in [0, 1), got {cfg.eps_w}")
    if not 0.0 <= cfg.eps_low < 1.0:
        raise ValueError(f"eps_low must be in [0, 1), got {cfg.eps_low}")
    checks.positive(cfg.eps_high, "eps_high")
    if cfg.dual_clip is not None and not cfg.dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {cfg.dual_clip}")
    if cfg.kl_type not in KL_TYPES:
        raise ValueError(f"kl_type must be one of {KL_TYPES}, got {cfg.kl_type!r}")
    checks.positive(cfg.kl_coef, "kl_coef")


def opsd_loss(hidden, weight, targets, mask, *, teacher_hidden=None, teacher_logprobs=None, form="sampled",
              beta=0.5, bias=None, temperature=1.0, token_weights=None, loss_agg="token-mean",
              normalizer=None, impl="auto"):
    """On-policy self-distillation baselines (no reward in the signal).

    ``form="sampled"``: l_t = -stopgrad(lp_T - lp_S) lp_S (teacher_hidden or teacher_logprobs).
    ``form="jsd"``:     l_t = JSD_beta(p_T || p_S) over the whole vocabulary (teacher_hidden), with
                        beta = 0 the forward KL, 1 the reverse KL; gradient through p_S only.
    Aggregated like :func:`rlsd_loss`. Returns ``(loss, metrics)``.
    """
    if form not in ("sampled", "jsd"):
        raise ValueError(f"form must be 'sampled' or 'jsd', got {form!r}")
    if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    backend = _select(impl, hidden.device)
    _check_loss_inputs(backend, hidden, weight, targets, mask, bias, temperature, teacher_hidden, loss_agg, normalizer,
                       teacher_logprobs=teacher_logprobs, token_weights=token_weights)
    if teacher_hidden is None and (form == "jsd" or teacher_logprobs is None):
        raise ValueError(f"form={form!r} needs teacher_hidden" + ("" if form == "jsd" else " or teacher_logprobs"))
    if backend == "eager":
        return reference.opsd_loss(hidden, weight, targets.long(), mask, teacher_hidden=teacher_hidden,
                                   teacher_logprobs=teacher_logprobs, form=form, beta=beta, bias=bias,
                                   temperature=temperature, token_weights=token_weights, loss_agg=loss_agg,
                                   normalizer=normalizer)
    rows = _Rows(mask, hidden.device)
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    valid = rows.valid()
    if form == "jsd":
        tok = _token_inputs(rows, mask, None, loss_agg, normalizer, dtype, token_weights=token_weights)
        weights = tok["agg"] * tok.get("token_weights", 1.0)
        return _fused_jsd(backend, hidden, weight, bias, rows, teacher_hidden, 1.0 / temperature, beta, weights,
                          valid)
    if teacher_logprobs is not None:
        teacher_hidden = None
    tok = _token_inputs(rows, mask, None, loss_agg, normalizer, dtype, lp_teacher=teacher_logprobs,
                        token_weights=token_weights)
    loss, lp, _, lp_teacher = _fused_loss(backend, hidden, weight, bias, targets, temperature,
                                          teacher_hidden, rows, tok,
                                          lambda lp_, ent_, t: opsd_sampled_token_loss(lp_, t), False, False)
    lp_teacher = tok["lp_teacher"] if lp_teacher is None else lp_teacher
    return loss, {"delta_mean": masked_mean(lp_teacher - lp, valid)}


def _fused_jsd(backend, hidden, weight, bias, rows, teacher_hidden, inv_tau, beta, weights, valid):
    out = {}

    def sweep(need_grad, need_weight_grad):
        out["jsd"], grads = backend.jsd_loss_and_grad(rows.take(hidden), rows.take(teacher_hidden), weight, bias,
                                                      inv_tau, beta, weights, need_grad, need_weight_grad)
        return (weights * out["jsd"]).sum(), grads

    loss = _with_precomputed_grad(hidden, weight, bias, rows, sweep)
    return loss, {"jsd_mean": masked_mean(out["jsd"], valid)}


class FusedLinearRLSDLoss(torch.nn.Module):
    """Module form of :func:`rlsd_loss`: options at construction, tensors at call.

    ``lam`` is a plain attribute, so a schedule can set ``module.lam`` between steps.
    """

    def __init__(self, *, temperature=1.0, lam=_D.lam, eps_w=_D.eps_w, eps_low=_D.eps_low, eps_high=_D.eps_high,
                 dual_clip=_D.dual_clip, kl_coef=_D.kl_coef, kl_type=_D.kl_type, entropy_coef=_D.entropy_coef,
                 negative_only=_D.negative_only, compute_entropy=False, loss_agg="token-mean", impl="auto"):
        super().__init__()
        self.options = dict(temperature=temperature, lam=lam, eps_w=eps_w, eps_low=eps_low, eps_high=eps_high,
                            dual_clip=dual_clip, kl_coef=kl_coef, kl_type=kl_type, entropy_coef=entropy_coef,
                            negative_only=negative_only, compute_entropy=compute_entropy, loss_agg=loss_agg,
                            impl=impl)

    @property
    def lam(self):
        return self.options["lam"]

    @lam.setter
    def lam(self, value):
        self.options["lam"] = value

    def forward(self, hidden, weight, targets, advantages, mask, bias=None, **tensors):
        """``tensors``: teacher_hidden, teacher_logprobs, old_logprobs, ref_logprobs, token_weights,
        credit_mask, normalizer."""
        return rlsd_loss(hidden, weight, targets, advantages, mask, bias=bias, **tensors, **self.options)
