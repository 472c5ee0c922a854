"""Per-token loss math, written once.

Everything here acts on small per-token tensors (lp, entropy, advantages, ...), never on logits,
and takes plain scalars: this is the bottom layer of the package (it imports nothing from it).
The token losses of :mod:`rlsd_kernels.tokens` compose these functions; the eager reference and
every fused backend call those same token losses: a backend only has to produce the student's
target log-prob ``lp`` and entropy ``ent`` per token (and the teacher's ``teacher_logprobs``); the
per-token gradient coefficients dL/dlp and dL/dent are taken by autograd through these functions
on [n]-sized tensors.

Conventions: ``loss = sum_t agg_t * l_t`` where ``agg_t`` (see :func:`aggregation_weights`)
carries the mask and the aggregation's normaliser, so per-token contributions can be summed chunk
by chunk.
"""

from __future__ import annotations

import torch

LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_TYPES = ("k1", "k2", "k3")
LOG_RATIO_CLAMP = 20.0  # |lp - lp_old| beyond this is clamped before exp, as in veRL


def compute_dtype(t) -> torch.dtype:
    """Statistics and gradients are float32, float64 for float64 inputs."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def aggregation_weights(mask: torch.Tensor, loss_agg: str, normalizer=None, dtype=torch.float32) -> torch.Tensor:
    """Per-token weights agg [B, T] such that the aggregated loss is ``sum(agg * l)``.

    - ``token-mean``:              agg = mask / D, D = number of valid tokens
    - ``seq-mean-token-mean``:     agg = mask / (n_b * D), n_b = valid tokens of sequence b,
                                   D = number of sequences with at least one valid token
    - ``seq-mean-token-sum-norm``: agg = mask / D, D = B * T (Dr.GRPO: sequences x max length)

    ``normalizer`` (> 0, used as given: fractions are allowed) replaces D, so that micro-batches
    normalised by the global D (:func:`aggregation_denominator` of the whole batch) sum to the loss
    of one big batch. The automatic D is clamped to >= 1: an all-masked batch gives a zero loss, not NaN.
    Computed in ``dtype`` (float64 for a float64 loss, so nothing is rounded to float32).
    """
    m = mask.to(dtype)
    if loss_agg == "seq-mean-token-mean":
        m = m / m.sum(-1, keepdim=True).clamp(min=1.0)
    if normalizer is not None:
        return m / torch.as_tensor(normalizer, dtype=dtype, device=m.device)
    return m / aggregation_denominator(mask, loss_agg).to(device=m.device, dtype=dtype).clamp(min=1.0)


def aggregation_denominator(mask: torch.Tensor, loss_agg: str) -> torch.Tensor:
    """D of :func:`aggregation_weights` for this mask (float32 0-d tensor; a count, exact below 2^24)."""
    valid = mask != 0
    if loss_agg == "token-mean":
        return valid.sum().to(torch.float32)
    if loss_agg == "seq-mean-token-mean":
        return valid.any(-1).sum().to(torch.float32)
    if loss_agg == "seq-mean-token-sum-norm":
        return torch.tensor(float(mask.numel()))
    raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {loss_agg!r}")


def rlsd_credit(delta, adv, lam: float, eps_w: float, negative_only: bool = False, credit_mask=None):
    """RLSD token advantage (all inputs detached).

        w    = exp(sign(A) * delta)             delta = lp_teacher - lp_student
        c    = clamp(w, 1 - eps_w, 1 + eps_w)
        Ahat = A * ((1 - lam) + lam * c)

    ``negative_only``: only responses with A < 0 are reweighted; ``credit_mask``: only tokens where
    it is nonzero are reweighted. Returns (Ahat, w).
    """
    w = torch.exp(torch.sign(adv) * delta)
    c = w.clamp(1.0 - eps_w, 1.0 + eps_w)
    reweight = torch.ones_like(adv, dtype=torch.bool)
    if negative_only:
        reweight = reweight & (adv < 0)
    if credit_mask is not None:
        reweight = reweight & (credit_mask != 0)
    c = torch.where(reweight, c, torch.ones_like(c))
    return adv * ((1.0 - lam) + lam * c), w


def clipped_surrogate(lp, lp_old, adv, eps_low: float, eps_high: float, dual_clip=None):
    """PPO clipped surrogate per token, with optional dual clip (c > 1) for negative advantages.

        rho = exp(lp - lp_old)
        l   = max(-A rho, -A clamp(rho, 1 - eps_low, 1 + eps_high))
        l   = min(l, -c A)   where A < 0        (dual clip)
    """
    log_ratio = (lp - lp_old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    rho = torch.exp(log_ratio)
    unclipped = -adv * rho
    clipped = -adv * rho.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -dual_clip * adv), loss)
    return loss


def kl_penalty(lp, lp_ref, kl_type: str):
    """KL(pi || pi_ref) estimators on sampled tokens, x = lp_ref - lp:
    k1 = -x, k2 = x^2 / 2, k3 = exp(x) - x - 1 (veRL's ``low_var_kl``, clamped to [-10, 10])."""
    x = (lp_ref - lp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if kl_type == "k1":
        return -x
    if kl_type == "k2":
        return 0.5 * x * x
    if kl_type == "k3":
        return (torch.exp(x) - x - 1.0).clamp(-10.0, 10.0)
    raise ValueError(f"kl_type must be one of {KL_TYPES}, got {kl_type!r}")


def masked_mean(x, valid):
    """Mean of x over the positions where ``valid`` is true (0 if there are none)."""
    x = torch.where(valid, x, torch.zeros_like(x))
    return x.sum() / valid.sum().clamp(min=1)


def generalized_jsd(student_logits, teacher_logits, beta: float):
    """Generalised JSD_beta(p_T || p_S) per row of float logits (already divided by temperature).

    M = beta p_T + (1 - beta) p_S,  JSD = beta KL(p_T || M) + (1 - beta) KL(p_S || M);
    beta = 0 is the forward KL(p_T || p_S), beta = 1 the reverse KL(p_S || p_T).
    The teacher side is detached: the gradient flows through p_S only.
    """
    ls = torch.log_softmax(student_logits, dim=-1)
    lt = torch.log_softmax(teacher_logits.detach(), dim=-1)
    if beta == 0.0:
        return (lt.exp() * (lt - ls)).sum(-1)
    if beta == 1.0:
        return (ls.exp() * (ls - lt)).sum(-1)
    log_1mb, log_b = torch.log1p(ls.new_tensor(-beta)), torch.log(ls.new_tensor(beta))  # in the input's dtype
    lm = torch.logsumexp(torch.stack([ls + log_1mb, lt + log_b]), 0)
    return beta * (lt.exp() * (lt - lm)).sum(-1) + (1.0 - beta) * (ls.exp() * (ls - lm)).sum(-1)
