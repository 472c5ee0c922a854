"""Which fused loss from ``rlsd_kernels`` each algorithm calls.

    grpo       rlsd_loss with lam = 0                 (Ahat = A: GRPO / DAPO)
    rlsd       rlsd_loss with the teacher's log-probs (Ahat = A ((1 - lam) + lam clamp(w, 1 -+ eps_w)))
    opsd       opsd_loss                              (teacher signal only, no reward)
    grpo+opsd  rlsd_loss(lam = 0) + alpha opsd_loss

``algo.negative_only`` and ``algo.credit_span`` ('thought': ``credit_mask`` is 1 on the tokens
before the final answer, see :func:`thought_length`) restrict rlsd's reweighting (docs/math.md).
All take the student's last hidden states and the LM head, never the logits. The losses also
return the student's mean full-vocabulary entropy (``entropy_mean``) from the same sweep (OPSD's
full-vocabulary JSD form excepted).
"""

from __future__ import annotations

from rlsd_kernels import opsd_loss, rlsd_loss
from rlsd_kernels.options import FIELDS, RLSDOptions

from .config import AlgoConfig


def needs_teacher(algo: AlgoConfig) -> bool:
    return algo.name in ("rlsd", "opsd", "grpo+opsd")


def thought_length(response: list, marker: list) -> int:
    """Tokens of ``response`` before the last occurrence of the token sequence ``marker`` (the final
    answer's start); the whole response when it does not occur."""
    k = len(marker)
    return next((i for i in range(len(response) - k, -1, -1) if response[i:i + k] == marker), len(response))


def algorithm_loss(algo: AlgoConfig, lam: float, hidden, weight, targets, mask, *, advantages,
                   teacher: dict, old_logprobs=None, ref_logprobs=None, bias=None, temperature=1.0,
                   normalizer=None, impl="auto", credit_mask=None):
    """(loss, metrics) of one micro-batch; ``teacher`` is {'teacher_hidden': ...} or
    {'teacher_logprobs': ...} (empty for grpo); ``credit_mask`` [B, T] for ``credit_span`` 'thought'."""
    common = dict(bias=bias, temperature=temperature, loss_agg=algo.loss_agg, normalizer=normalizer, impl=impl)
    loss, metrics = 0.0, {}
    if algo.name in ("grpo", "rlsd", "grpo+opsd"):
        rl_teacher = teacher if algo.name == "rlsd" else {}
        options = RLSDOptions(**{name: getattr(algo, name) for name in FIELDS}).with_lam(
            lam if algo.name == "rlsd" else 0.0)
        loss, metrics = rlsd_loss(
            hidden, weight, targets, advantages, mask, **rl_teacher, old_logprobs=old_logprobs,
            ref_logprobs=ref_logprobs, options=options,
            credit_mask=credit_mask if algo.name == "rlsd" else None, compute_entropy=True, **common)
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
