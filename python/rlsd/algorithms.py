"""The trainer's algorithms, one row each: which fused losses a step adds up and with which
coefficients, whether the self-teacher runs, and whether dynamic sampling is on by default.

    grpo       rlsd_loss with lam = 0                   (Ahat = A: GRPO / DAPO)
    rlsd       rlsd_loss with the scheduled lam         (Ahat = A ((1 - lam) + lam clamp(w, 1 -+ eps_w)))
    opsd       opsd_loss                                (teacher signal only, no reward)
    grpo+opsd  rlsd_loss(lam = 0) + opsd_coef opsd_loss

The loop, the objectives and the config checks read this table; nothing else names an algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    """One algorithm. ``reward``: a reward term, ``rlsd_loss`` on the group advantages; ``credit``:
    that term's lam follows ``algo.lam_schedule`` and it reads the teacher (else lam = 0, GRPO);
    ``distill``: an ``opsd_loss`` term, weighted by ``algo.opsd_coef`` when ``scaled_distill``, else
    by 1; ``dynamic_sampling``: the default of ``algo.dynamic_sampling`` (drop the groups whose
    rewards are all equal: they carry no reward signal, but still a teacher signal)."""

    name: str
    reward: bool
    credit: bool
    distill: bool
    scaled_distill: bool
    dynamic_sampling: bool

    def __post_init__(self):
        if not (self.reward or self.distill) or (self.credit and not self.reward) or \
                (self.scaled_distill and not self.distill):
            raise ValueError(f"algorithm {self.name!r}: credit needs a reward term, scaled_distill a distill "
                             "term, and one of them must be there")

    @property
    def needs_teacher(self) -> bool:
        return self.credit or self.distill

    def lam(self, scheduled: float) -> float:
        """lam of the reward term: the schedule's value with credit, else 0 (GRPO)."""
        return scheduled if self.credit else 0.0

    def distill_coef(self, opsd_coef: float) -> float:
        """The weight of the opsd_loss term (``opsd_coef``: the config's ``algo.opsd_coef``)."""
        return opsd_coef if self.scaled_distill else 1.0


ALGORITHMS = {a.name: a for a in (
    Algorithm("grpo", reward=True, credit=False, distill=False, scaled_distill=False, dynamic_sampling=True),
    Algorithm("rlsd", reward=True, credit=True, distill=False, scaled_distill=False, dynamic_sampling=True),
    Algorithm("opsd", reward=False, credit=False, distill=True, scaled_distill=False, dynamic_sampling=False),
    Algorithm("grpo+opsd", reward=True, credit=False, distill=True, scaled_distill=True, dynamic_sampling=True),
)}
