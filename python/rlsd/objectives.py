"""The fused ``rlsd_kernels`` losses of one micro-batch, as the algorithm's row of
:data:`rlsd.algorithms.ALGORITHMS` adds them up: a reward term (``rlsd_loss``, lam from the schedule
with credit, else 0) and a distillation term (``opsd_loss`` with its coefficient).

``algo.loss.negative_only`` and ``algo.credit_span`` ('thought': ``credit_mask`` is 1 on the tokens
before the final answer, see :func:`thought_length`) restrict rlsd's reweighting (docs/math.md).
All take the student's last hidden states and the LM head, never the logits. The losses also
return the student's mean full-vocabulary entropy (``entropy_mean``) from the same sweep (OPSD's
full-vocabulary JSD form excepted).
"""

from __future__ import annotations

from rlsd_kernels import opsd_loss, rlsd_loss

from .config import AlgoConfig
from .teacher import TeacherInputs


def thought_length(response: list, marker: list) -> int:
    """Tokens of ``response`` before the last occurrence of the token sequence ``marker`` (the final
    answer's start); the whole response when it does not occur."""
    k = len(marker)
    return next((i for i in range(len(response) - k, -1, -1) if response[i:i + k] == marker), len(response))


def algorithm_loss(algo: AlgoConfig, lam: float, hidden, weight, targets, mask, *, advantages,
                   teacher: TeacherInputs = TeacherInputs(), old_logprobs=None, ref_logprobs=None, bias=None,
                   temperature=1.0, normalizer=None, impl="auto", credit_mask=None):
    """(loss, metrics) of one micro-batch; ``lam`` is the schedule's value; ``credit_mask`` [B, T]
    for ``credit_span`` 'thought'."""
    alg = algo.algorithm
    common = dict(bias=bias, temperature=temperature, loss_agg=algo.loss_agg, normalizer=normalizer, impl=impl)
    loss, metrics = 0.0, {}
    if alg.reward:
        rl_teacher = teacher if alg.credit else TeacherInputs()
        loss, metrics = rlsd_loss(
            hidden, weight, targets, advantages, mask, teacher_hidden=rl_teacher.hidden,
            teacher_logprobs=rl_teacher.logprobs, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
            options=algo.loss.with_lam(alg.lam(lam)),
            credit_mask=credit_mask if alg.credit else None, compute_entropy=True, **common)
        metrics = dict(metrics)
    if alg.distill:
        entropy = not alg.reward and algo.opsd_form == "sampled"  # else the reward term's, or none (jsd)
        o_loss, o_metrics = opsd_loss(hidden, weight, targets, mask, teacher_hidden=teacher.hidden,
                                      teacher_logprobs=teacher.logprobs, form=algo.opsd_form, beta=algo.opsd_beta,
                                      compute_entropy=entropy, **common)
        loss = loss + alg.distill_coef(algo.opsd_coef) * o_loss
        if "entropy_mean" in o_metrics:
            metrics["entropy_mean"] = o_metrics.pop("entropy_mean")
        metrics.update({f"opsd_{k}": v for k, v in o_metrics.items()})
    return loss, metrics
