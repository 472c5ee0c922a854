"""The scalar options of the RLSD loss, with every default and every rule written once.

:class:`RLSDOptions` is frozen and checks itself at construction: a bad field raises a
``ValueError`` / ``TypeError`` naming it. It is the one way options reach the loss:
``rlsd_loss(..., options=RLSDOptions(...))``, ``FusedLinearRLSDLoss(options=...)``; the adapters
and the trainer's config build one from their own settings. :class:`LamSchedulable` gives a holder
of one a ``lam`` that a schedule may set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from . import checks
from .math import KL_TYPES


def _kl_type(value, name):
    if value not in KL_TYPES:
        raise ValueError(f"{name} must be one of {KL_TYPES}, got {value!r}")
    return value


# field -> its rule: the value as stored, or a ValueError / TypeError naming the field
RULES = {
    "lam": lambda v, n: checks.number(v, n, low=0.0, high=1.0),
    "eps_w": lambda v, n: checks.number(v, n, low=0.0, high=1.0, high_open=True),
    "eps_low": lambda v, n: checks.number(v, n, low=0.0, high=1.0, high_open=True),
    "eps_high": lambda v, n: checks.number(v, n, low=0.0),
    "dual_clip": lambda v, n: None if v is None else checks.number(v, n, low=1.0, low_open=True),
    "kl_coef": lambda v, n: checks.number(v, n, low=0.0),
    "kl_type": _kl_type,
    "entropy_coef": lambda v, n: checks.number(v, n),  # any sign: < 0 penalises the entropy
    "negative_only": lambda v, n: checks.flag(v, n),
}


@dataclass(frozen=True)
class RLSDOptions:
    """Options of the RLSD loss (docs/math.md):

        Ahat = A ((1 - lam) + lam clamp(exp(sign(A) delta), 1 - eps_w, 1 + eps_w))
        l_t  = max(-Ahat rho, -Ahat clamp(rho, 1 - eps_low, 1 + eps_high)), <= -dual_clip Ahat for A < 0
        L    = sum_t agg_t w_t (l_t + kl_coef KL_t - entropy_coef H_t)

    lam in [0, 1] (0: GRPO, the teacher is not read); eps_w, eps_low in [0, 1); eps_high >= 0;
    dual_clip None or > 1; kl_coef >= 0 with kl_type k1 | k2 | k3; entropy_coef any finite number
    (> 0 rewards the entropy, < 0 penalises it); negative_only: reweight only responses with A < 0.
    """

    lam: float = 1.0
    eps_w: float = 0.2
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: Optional[float] = None
    kl_coef: float = 0.0
    kl_type: str = "k3"
    entropy_coef: float = 0.0
    negative_only: bool = False

    def __post_init__(self):
        for name, rule in RULES.items():
            object.__setattr__(self, name, rule(getattr(self, name), name))

    @staticmethod
    def problem(name: str, value) -> Optional[str]:
        """What is wrong with ``value`` for field ``name`` (None: nothing)."""
        try:
            RULES[name](value, name)
        except (TypeError, ValueError) as exc:
            return str(exc)
        return None

    def replace(self, **changes) -> "RLSDOptions":
        return dataclasses.replace(self, **changes)

    def with_lam(self, lam) -> "RLSDOptions":
        """These options with ``lam`` (a schedule's value, checked here), or themselves if unchanged."""
        lam = RULES["lam"](lam, "lam")
        return self if lam == self.lam else self.replace(lam=lam)

    @property
    def needs_teacher(self) -> bool:
        return self.lam != 0.0

    @property
    def needs_entropy_grad(self) -> bool:
        """Whether the loss depends on the entropy (so its gradient flows through it)."""
        return self.entropy_coef != 0.0


FIELDS = tuple(f.name for f in dataclasses.fields(RLSDOptions))


class LamSchedulable:
    """A holder of one :class:`RLSDOptions` (``self.options``) whose ``lam`` a schedule may set
    between steps: the setter checks the value and replaces the options (``with_lam``), so the
    options are the only copy and nothing is re-synced at call time."""

    options: RLSDOptions

    @property
    def lam(self) -> float:
        return self.options.lam

    @lam.setter
    def lam(self, value):
        self.options = self.options.with_lam(value)
