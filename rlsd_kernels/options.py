"""The scalar options of the RLSD loss, with every default and every rule written once.

:class:`RLSDOptions` is frozen and checks itself at construction: a bad field raises a
``ValueError`` / ``TypeError`` naming it. It is the one way options reach the loss:
``rlsd_loss(..., options=RLSDOptions(...))``, ``FusedLinearRLSDLoss(options=...)``; the adapters
and the trainer's config build one from their own settings. :class:`LamSchedulable` gives a holder
of one a ``lam`` that a schedule may set.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

from . import checks
from .math import IS_LEVELS, KL_TYPES, POLICY_LOSSES


def _one_of(choices):
    def rule(value, name):
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        return value
    return rule


# field -> its rule: the value as stored, or a ValueError / TypeError naming the field
RULES = {
    "lam": lambda v, n: checks.number(v, n, low=0.0, high=1.0),
    "eps_w": lambda v, n: checks.number(v, n, low=0.0, high=1.0, high_open=True),
    "eps_low": lambda v, n: checks.number(v, n, low=0.0, high=1.0, high_open=True),
    "eps_high": lambda v, n: checks.number(v, n, low=0.0),
    "dual_clip": lambda v, n: None if v is None else checks.number(v, n, low=1.0, low_open=True),
    "kl_coef": lambda v, n: checks.number(v, n, low=0.0),
    "kl_type": _one_of(KL_TYPES),
    "entropy_coef": lambda v, n: checks.number(v, n),  # any sign: < 0 penalises the entropy
    "negative_only": lambda v, n: checks.flag(v, n),
    "policy_loss": _one_of(POLICY_LOSSES),
    "is_level": _one_of(IS_LEVELS),
    "delta": lambda v, n: None if v is None else checks.number(v, n, low=0.0, low_open=True),
    "kl_is_corrected": lambda v, n: checks.flag(v, n),
    "sapo_tau_pos": lambda v, n: checks.number(v, n, low=0.0, low_open=True),
    "sapo_tau_neg": lambda v, n: checks.number(v, n, low=0.0, low_open=True),
    "vespo_k_pos": lambda v, n: checks.number(v, n, low=0.0),
    "vespo_lambda_pos": lambda v, n: checks.number(v, n, low=0.0),
    "vespo_k_neg": lambda v, n: checks.number(v, n, low=0.0),
    "vespo_lambda_neg": lambda v, n: checks.number(v, n, low=0.0),
}


def _combination(o: "RLSDOptions"):
    """The rules between fields (a ValueError naming the field that does not fit)."""
    if o.is_level != "token" and o.policy_loss != "ppo":
        raise ValueError(f"is_level={o.is_level!r} (GSPO) needs policy_loss='ppo', got policy_loss={o.policy_loss!r}")
    for name in ("dual_clip", "delta"):
        if getattr(o, name) is not None and o.policy_loss != "ppo":
            raise ValueError(f"{name} applies to policy_loss='ppo' only, got policy_loss={o.policy_loss!r}")


@dataclass(frozen=True)
class RLSDOptions:
    """Options of the RLSD loss (docs/math.md):

        Ahat = A ((1 - lam) + lam clamp(exp(sign(A) delta), 1 - eps_w, 1 + eps_w))
        l_t  = max(-Ahat min(rho, delta), -Ahat clamp(rho, 1 - eps_low, 1 + eps_high)),
               <= -dual_clip Ahat for A < 0                                  (policy_loss "ppo")
        L    = sum_t agg_t w_t (r_t l_t + kl_coef KL_t [rho_t] - entropy_coef H_t)

    lam in [0, 1] (0: GRPO, the teacher is not read); eps_w, eps_low in [0, 1); eps_high >= 0;
    dual_clip None or > 1; delta None or > 0; kl_coef >= 0 with kl_type k1 | k2 | k3;
    entropy_coef any finite number (> 0 rewards the entropy, < 0 penalises it); negative_only:
    reweight only responses with A < 0. The variants (docs/math.md, "Policy-loss variants"), each
    with Ahat in place of A: policy_loss "cispo" (eps_high is then the weight's upper bound, e.g. 5),
    "sapo" (sapo_tau_pos / _neg > 0), "vespo" (vespo_k_* >= 0, vespo_lambda_* >= 0); is_level
    "sequence" / "sequence-token": GSPO's per-sequence ratio (policy_loss "ppo" only); kl_is_corrected: KL_t times
    the importance ratio. r_t: the rollout engine's importance weights (``rollout_is_weights``).
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
    policy_loss: str = "ppo"
    is_level: str = "token"
    delta: Optional[float] = None
    kl_is_corrected: bool = False
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0

    def __post_init__(self):
        for name, rule in RULES.items():
            object.__setattr__(self, name, rule(getattr(self, name), name))
        _combination(self)
        # the fields as one string, for the losses' custom ops (schema: str): made once, here, so
        # torch.compile reads a constant instead of tracing json
        object.__setattr__(self, "encoded", json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}))

    @classmethod
    def decode(cls, encoded: str) -> "RLSDOptions":
        """The options of ``encoded`` (``options.encoded``), checked again."""
        return cls(**json.loads(encoded))

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
    def needs_all_rows(self) -> bool:
        """Whether a token's loss depends on its sequence's other tokens (GSPO's ratio, VESPO's weight)."""
        return self.is_level != "token" or self.policy_loss == "vespo"

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
