"""Verifiers: a registry of functions ``(response, example, **options) -> Verdict``.

Every reward is in [0, 1]. ``verify`` never raises: a verifier that crashes, or output it cannot
read, gives reward 0 with the reason recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

REGISTRY: dict = {}


@dataclass(frozen=True)
class Verdict:
    reward: float
    reason: str = "ok"


def register(name: str) -> Callable:
    def wrap(fn):
        REGISTRY[name] = fn
        return fn
    return wrap


def verify(name: str, response: str, example, **options) -> Verdict:
    """Run verifier ``name`` on ``response`` for ``example``; exceptions become reward 0."""
    try:
        verdict = REGISTRY[name](response, example, **options)
    except Exception as exc:  # a verifier must never stop the run
        return Verdict(0.0, f"verifier error: {type(exc).__name__}: {exc}")
    return Verdict(min(1.0, max(0.0, float(verdict.reward))), verdict.reason)


def make_verifier(name: str, **options) -> Callable:
    """``fn(response, example) -> Verdict`` with the options bound."""
    if name not in REGISTRY:
        raise KeyError(f"unknown verifier {name!r}; registered: {sorted(REGISTRY)}")
    return lambda response, example: verify(name, response, example, **options)


from . import code, match, math, schema, sql  # noqa: E402,F401  (each module registers itself)
