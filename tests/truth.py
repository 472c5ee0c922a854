"""The tests' truth: docs/math.md written out a second time, in float64, sharing no code with
``rlsd_kernels`` (not ``math.py``, not the backends, not ``rlsd_kernels.reference``).

Plain formulas on the materialised logits with their own log-softmax, aggregation and metrics;
gradients by autograd on these plain torch operations. The signatures are those of the public
functions (without ``impl``), so the same test helpers call either.
"""

import math

import torch


def _f64(t):
    return None if t is None else t.double()


def _log_softmax(s):
    """log p(v) = s_v - lse,  lse = m + log sum_v exp(s_v - m),  m = max_v s_v (per row)."""
    m = s.max(-1, keepdim=True).values.detach()
    return s - (m + torch.log(torch.exp(s - m).sum(-1, keepdim=True)))


def _logp(hidden, weight, bias, temperature):
    """log softmax((h W^T + b) / tau) over the vocabulary, rows flattened to [N, V]."""
    h = _f64(hidden).reshape(-1, hidden.shape[-1])
    z = h @ _f64(weight).T
    if bias is not None:
        z = z + _f64(bias)
    return _log_softmax(z / temperature)


def _pick(logp, targets):
    return logp[torch.arange(logp.shape[0]), targets.reshape(-1).long()]


def _entropy(logp):
    """H = -sum_v p(v) log p(v)."""
    return -(torch.exp(logp) * logp).sum(-1)


def linear_logprobs(hidden, weight, targets, bias=None, temperature=1.0, return_entropy=False):
    """lp_S(t) = log p(y_t) and (optionally) H_t, shaped like ``targets``."""
    logp = _logp(hidden, weight, bias, temperature)
    lp = _pick(logp, targets).reshape(targets.shape)
    return lp, (_entropy(logp).reshape(targets.shape) if return_entropy else None)


def _agg(mask, loss_agg, normalizer):
    """agg_t of the aggregation table, one sequence at a time (a [B, T] float64 tensor)."""
    m = _f64(mask)
    B, T = m.shape
    valid = m != 0
    if loss_agg == "token-mean":
        D = float(valid.sum())
    elif loss_agg == "seq-mean-token-mean":
        D = float(sum(1 for b in range(B) if valid[b].any()))
    elif loss_agg == "seq-mean-token-sum-norm":
        D = float(B * T)
    else:
        raise ValueError(loss_agg)
    D = max(D, 1.0) if normalizer is None else float(normalizer)
    rows = []
    for b in range(B):
        n_b = max(float(m[b].sum()), 1.0) if loss_agg == "seq-mean-token-mean" else 1.0
        rows.append(m[b] / (n_b * D))
    return torch.stack(rows)


def _mean(x, valid):
    """Mean of x over the valid positions, 0 when there are none."""
    n = int(valid.sum())
    return x[valid].sum() / n if n else torch.zeros((), dtype=torch.float64)


def _kl(x, kl_type):
    """k1 = -x, k2 = x^2 / 2, k3 = exp(x) - x - 1 clamped to [-10, 10]; x = lp_ref - lp_S (clamped)."""
    if kl_type == "k1":
        return -x
    if kl_type == "k2":
        return x * x / 2
    return torch.clamp(torch.exp(x) - x - 1, -10.0, 10.0)


def rlsd_loss(hidden, weight, targets, advantages, mask, *, teacher_hidden=None, teacher_logprobs=None, bias=None,
              old_logprobs=None, ref_logprobs=None, temperature=1.0, token_weights=None, credit_mask=None,
              rollout_is_weights=None, compute_entropy=False, loss_agg="token-mean", normalizer=None, lam=1.0, eps_w=0.2,
              eps_low=0.2, eps_high=0.28, dual_clip=None, kl_coef=0.0, kl_type="k3", entropy_coef=0.0,
              negative_only=False, policy_loss="ppo", is_level="token", delta=None, kl_is_corrected=False,
              sapo_tau_pos=1.0, sapo_tau_neg=1.05, vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=3.0,
              vespo_lambda_neg=2.0):
    """L = sum_t agg_t kappa_t (r_t l_t + kl_coef KL_t [rho_t] - entropy_coef H_t) and the metrics of
    docs/math.md, with l_t the surrogate of ``policy_loss`` on the ratio of ``is_level``."""
    shape = targets.shape
    logp = _logp(hidden, weight, bias, temperature)
    lp = _pick(logp, targets).reshape(shape)
    ent = _entropy(logp).reshape(shape)
    A = _f64(advantages)
    A = A[:, None].expand(shape) if A.dim() == 1 else A
    valid = mask != 0
    metrics = {}

    # RLSD credit (the teacher is read only when lam != 0)
    ahat = A
    if lam != 0.0:
        if teacher_logprobs is None:
            with torch.no_grad():
                teacher_logprobs = _pick(_logp(teacher_hidden, weight, bias, temperature), targets).reshape(shape)
        log_ratio_T = (_f64(teacher_logprobs) - lp).detach()
        w = torch.exp(torch.sign(A) * log_ratio_T)
        c = torch.clamp(w, 1 - eps_w, 1 + eps_w)
        keep = torch.zeros(shape, dtype=torch.bool)  # tokens left out of the reweighting: c = 1
        if negative_only:
            keep |= A >= 0
        if credit_mask is not None:
            keep |= credit_mask == 0
        c = torch.where(keep, torch.ones_like(c), c)
        ahat = A * ((1 - lam) + lam * c)
        credited = valid & (A != 0)
        metrics["delta_mean"] = _mean(log_ratio_T, valid)
        metrics["delta_abs_mean"] = _mean(log_ratio_T.abs(), valid)
        metrics["delta_std"] = torch.sqrt(_mean((log_ratio_T - metrics["delta_mean"]) ** 2, valid))
        metrics["credit_clip_low_frac"] = _mean((w < 1 - eps_w).double(), credited)
        metrics["credit_clip_high_frac"] = _mean((w > 1 + eps_w).double(), credited)
        metrics["credit_clip_frac"] = metrics["credit_clip_low_frac"] + metrics["credit_clip_high_frac"]

    # the importance ratio: per token, or per sequence (GSPO), one sequence at a time
    lp_old = lp.detach() if old_logprobs is None else _f64(old_logprobs)
    log_rho = torch.clamp(lp - lp_old, -20.0, 20.0)
    rho = torch.exp(log_rho)
    ratio = rho
    if is_level != "token":
        rows = []
        for b in range(shape[0]):
            n_b = max(int(valid[b].sum()), 1)
            log_s = log_rho[b][valid[b]].sum() / n_b
            if is_level == "sequence":  # s_b differentiated as itself
                rows.append(torch.exp(log_s).expand(shape[1]))
            else:  # "sequence-token": s_b in value, the token's own ratio's gradient
                rows.append(torch.exp(log_s.detach() + lp[b] - lp[b].detach()))
        ratio = torch.stack(rows)
    r = 1.0 if rollout_is_weights is None else _f64(rollout_is_weights)

    # the surrogate
    if policy_loss == "ppo":
        capped = ratio if delta is None else torch.clamp(ratio, max=delta)
        l = torch.maximum(-ahat * capped, -ahat * torch.clamp(ratio, 1 - eps_low, 1 + eps_high))
        if dual_clip is not None:
            l = torch.where(ahat < 0, torch.minimum(l, -dual_clip * ahat), l)
        l = r * l
    elif policy_loss == "cispo":
        l = r * (-torch.clamp(ratio.detach(), max=eps_high) * ahat * lp)
    elif policy_loss == "sapo":
        tau = torch.where(A > 0, torch.full_like(ratio, sapo_tau_pos), torch.full_like(ratio, sapo_tau_neg))
        l = r * (-ahat * torch.sigmoid(tau * (ratio - 1)) * 4 / tau)
    else:  # vespo: phi of the sequence's summed log-ratio (plus log r), detached
        log_r = torch.zeros(shape, dtype=torch.float64) if rollout_is_weights is None else \
            torch.clamp(torch.log(_f64(rollout_is_weights)), math.log(1e-8), 20.0)
        phi = torch.zeros(shape, dtype=torch.float64)
        for b in range(shape[0]):
            log_w = (log_rho[b].detach() + log_r[b])[valid[b]].sum()
            log_w = torch.clamp(log_w, math.log(1e-8), 20.0)
            for t in range(shape[1]):  # (k, lambda) by the sign of the token's advantage
                k, lam_t = (vespo_k_pos, vespo_lambda_pos) if A[b, t] >= 0 else (vespo_k_neg, vespo_lambda_neg)
                lam_t = max(lam_t, 1e-4)
                phi[b, t] = torch.exp(lam_t + k * log_w - lam_t * torch.exp(log_w))
        l = -phi * ahat * lp
    if kl_coef != 0.0:
        kl = _kl(torch.clamp(_f64(ref_logprobs) - lp, -20.0, 20.0), kl_type)
        l = l + kl_coef * (kl * ratio if kl_is_corrected else kl)
    if entropy_coef != 0.0:
        l = l - entropy_coef * ent
    kappa = 1.0 if token_weights is None else _f64(token_weights)
    loss = (_agg(mask, loss_agg, normalizer) * kappa * l).sum()

    rho, log_rho, ratio = rho.detach(), log_rho.detach(), ratio.detach()
    low, high = ratio < 1 - eps_low, ratio > 1 + eps_high
    if policy_loss == "cispo":
        low, high = torch.zeros_like(low), ratio > eps_high
    elif policy_loss != "ppo":  # SAPO, VESPO: no clip
        low, high = torch.zeros_like(low), torch.zeros_like(high)
    metrics["ppo_clip_low_frac"] = _mean((low & (A < 0)).double(), valid)
    metrics["ppo_clip_high_frac"] = _mean((high & (A > 0)).double(), valid)
    metrics["ppo_clip_frac"] = metrics["ppo_clip_low_frac"] + metrics["ppo_clip_high_frac"]
    metrics["approx_kl"] = _mean(rho - 1 - log_rho, valid)
    if compute_entropy or entropy_coef != 0.0:
        metrics["entropy_mean"] = _mean(ent.detach(), valid)
    if ref_logprobs is not None:
        kl = _kl(torch.clamp(_f64(ref_logprobs) - lp.detach(), -20.0, 20.0), kl_type)
        metrics["ref_kl"] = _mean(kl * ratio if kl_is_corrected else kl, valid)
    return loss, metrics


def _jsd(ls, lt, beta):
    """JSD_beta(p_T || p_S) per row: beta KL(p_T || M) + (1 - beta) KL(p_S || M), M = beta p_T + (1 - beta) p_S;
    beta = 0 is KL(p_T || p_S), beta = 1 is KL(p_S || p_T)."""
    ps, pt = torch.exp(ls), torch.exp(lt)
    if beta == 0.0:
        return (pt * (lt - ls)).sum(-1)
    if beta == 1.0:
        return (ps * (ls - lt)).sum(-1)
    lm = torch.log(beta * pt + (1 - beta) * ps)
    return beta * (pt * (lt - lm)).sum(-1) + (1 - beta) * (ps * (ls - lm)).sum(-1)


def opsd_loss(hidden, weight, targets, mask, *, teacher_hidden=None, teacher_logprobs=None, form="sampled",
              beta=0.5, bias=None, temperature=1.0, token_weights=None, compute_entropy=False,
              loss_agg="token-mean", normalizer=None):
    """OPSD: sampled form l_t = -stopgrad(lp_T - lp_S) lp_S, or the full-vocabulary JSD_beta; aggregated."""
    shape = targets.shape
    kappa = 1.0 if token_weights is None else _f64(token_weights)
    agg = _agg(mask, loss_agg, normalizer)
    valid = mask != 0
    logp = _logp(hidden, weight, bias, temperature)
    if form == "jsd":
        with torch.no_grad():
            lt = _logp(teacher_hidden, weight, bias, temperature)
        per_token = _jsd(logp, lt, beta).reshape(shape)
        return (agg * kappa * per_token).sum(), {"jsd_mean": _mean(per_token.detach(), valid)}
    lp = _pick(logp, targets).reshape(shape)
    if teacher_logprobs is None:
        with torch.no_grad():
            teacher_logprobs = _pick(_logp(teacher_hidden, weight, bias, temperature), targets).reshape(shape)
    delta = (_f64(teacher_logprobs) - lp).detach()
    loss = (agg * kappa * (-delta * lp)).sum()
    metrics = {"delta_mean": _mean(delta, valid)}
    if compute_entropy:
        metrics["entropy_mean"] = _mean(_entropy(logp).reshape(shape).detach(), valid)
    return loss, metrics
