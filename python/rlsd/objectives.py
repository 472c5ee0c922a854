"""Which fused loss from ``rlsd_kernels`` each algorithm calls.

    grpo       rlsd_loss with lam = 0                 (Ahat = A: GRPO / DAPO)
    rlsd       rlsd_loss with the teacher's log-probs (Ahat = A ((1 - lam) + lam clamp(w, 1 -+ eps_w)))
    opsd       opsd_loss                              (teacher signal only, no reward)
    grpo+opsd  rlsd_loss(lam = 0) + alpha opsd_loss

All take the student's last hidden states and the LM head, never the logits. The losses also
return the student's mean full-vocabulary entropy (``entropy_mean``) from the same sweep (OPSD's
full-vocabulary JSD form excepted).
"""

from __future__ import annotations

from rlsd_kernels import opsd_loss, rlsd_loss

from .config import AlgoConfig


def needs_teacher(algo: AlgoConfig) -> bool:
    return algo.name in ("rlsd", "opsd", "grpo+opsd")


def algorithm_loss(algo: AlgoConfig, lam: float, hidden, weight, targets, mask, *, advantages,
                   teacher: dict, old_logprobs=None, ref_logprobs=None, bias=None, temperature=1.0,
                   normalizer=None, impl="auto"):
    """(loss, metrics) of one micro-batch; ``teacher`` is {'teacher_hidden': ...} or
    {'teacher_logprobs': ...} (empty for grpo)."""
    common = dict(bias=bias, temperature=temperature, loss_agg=algo.loss_agg, normalizer=normalizer, impl=impl)
    loss, metrics = 0.0, {}
    if algo.name in ("grpo", "rlsd", "grpo+opsd"):
        rl_teacher = teacher if algo.name == "rlsd" else {}
        loss, metrics = rlsd_loss(
            hidden, weight, targets, advantages, mask, **rl_teacher, old_logprobs=old_logprobs,
            ref_logprobs=ref_logprobs, lam=lam if algo.name == "rlsd" else 0.0, eps_w=algo.eps_w,
            eps_low=algo.eps_low, eps_high=algo.eps_high, dual_clip=algo.dual_clip, kl_coef=algo.kl_coef,
            kl_type=algo.kl_type, entropy_coef=algo.entropy_coef, compute_entropy=True, **common)
        metrics = dict(metrics)
    if algo.name in ("opsd", "grpo+opsd"):
        coef = algo.opsd_coef if algo.name == "grpo+opsd" else 1.0
        alone_sampled = algo.name == "opsd" and algo.opsd_form == "sampled"
        o_loss, o_metrics = opsd_loss(hidden, weight, targets, mask, **teacher, form=algo.opsd_form,
                                      beta=algo.opsd_beta, compute_entropy=alone_sampled, **common)
        loss = loss + coef * o_loss
        if "entropy_mean" in o_metrics:
            metrics["entropy_mean"] = o_metrics.pop("entropy_mean")
        metrics.update({f"opsd_{k}": v for k, v in o_metrics.items()})
    return loss, metrics
