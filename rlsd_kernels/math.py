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
POLICY_LOSSES = ("ppo", "cispo", "sapo", "vespo")  # the surrogate of the token loss
IS_LEVELS = ("token", "sequence", "sequence-token")  # the importance ratio per token, or per sequence (GSPO)
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


def importance_ratio(lp, lp_old):
    """rho = exp(lp - lp_old), the log-ratio clamped to [-20, 20] first."""
    return torch.exp((lp - lp_old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def clipped_surrogate(lp, lp_old, adv, eps_low: float, eps_high: float, dual_clip=None, delta=None):
    """PPO clipped surrogate per token (:func:`ratio_surrogate` of ``rho = exp(lp - lp_old)``)."""
    return ratio_surrogate(importance_ratio(lp, lp_old), adv, eps_low, eps_high, dual_clip, delta)


def ratio_surrogate(rho, adv, eps_low: float, eps_high: float, dual_clip=None, delta=None):
    """PPO clipped surrogate of the ratio ``rho``, with optional dual clip (c > 1) for negative
    advantages and two-sided clipping ``delta`` (the unclipped ratio capped at delta):

        l = max(-A min(rho, delta), -A clamp(rho, 1 - eps_low, 1 + eps_high))
        l = min(l, -c A)   where A < 0        (dual clip)
    """
    unclipped = -adv * (rho if delta is None else rho.clamp(max=delta))
    clipped = -adv * rho.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -dual_clip * adv), loss)
    return loss


def cispo_surrogate(lp, rho, adv, high: float, low=None):
    """CISPO: ``l = -stopgrad(clamp(rho, low, high)) A lp``: the clipped importance weight scales a
    plain policy gradient and carries no gradient itself (TRL and Liger: no lower bound and
    ``high = eps_high``, not 1 + eps_high; veRL: [1 - eps_low, 1 + eps_high])."""
    return -rho.detach().clamp(min=low, max=high) * adv * lp


def sapo_surrogate(rho, adv, tau_pos: float, tau_neg: float):
    """SAPO: ``l = -A (4 / tau) sigmoid(tau (rho - 1))``, tau = tau_pos where A > 0, tau_neg
    elsewhere: a soft gate in place of the clip (its slope at rho = 1 is 1, as the PPO surrogate's)."""
    tau = torch.where(adv > 0, torch.full_like(rho, tau_pos), torch.full_like(rho, tau_neg))
    return -adv * torch.sigmoid(tau * (rho - 1.0)) * 4.0 / tau


VESPO_LOG_W_MIN = -18.420680743952367  # log(1e-8)


def vespo_weight(seq_log_ratio, adv, k_pos: float, lambda_pos: float, k_neg: float, lambda_neg: float):
    """VESPO's gamma weight of a sequence (detached): with log w = clamp(seq_log_ratio, log 1e-8, 20)
    and (k, lambda) = (k_pos, lambda_pos) where A >= 0, else (k_neg, lambda_neg) (lambda >= 1e-4),

        phi = exp(lambda + k log w - lambda w)        (phi(1) = 1; NaN / inf give 0)
    """
    with torch.no_grad():
        log_w = seq_log_ratio.clamp(VESPO_LOG_W_MIN, LOG_RATIO_CLAMP)
        nonneg = adv >= 0
        k = torch.where(nonneg, torch.full_like(log_w, k_pos), torch.full_like(log_w, k_neg))
        lam = torch.where(nonneg, torch.full_like(log_w, lambda_pos), torch.full_like(log_w, lambda_neg)).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def sequence_sum(x, seq, n_seqs: int):
    """Per token, the sum of ``x`` over the tokens of its sequence (``seq``: each token's sequence
    index in [0, n_seqs)); differentiable."""
    total = x.new_zeros(n_seqs).index_add(0, seq.reshape(-1), x.reshape(-1))
    return total[seq]


def sequence_mean(x, valid, seq, n_seqs: int):
    """Per token, the mean of ``x`` over the valid tokens of its sequence (0 for an empty one)."""
    x = torch.where(valid, x, torch.zeros_like(x))
    return sequence_sum(x, seq, n_seqs) / sequence_sum(valid.to(x.dtype), seq, n_seqs).clamp(min=1.0)


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
