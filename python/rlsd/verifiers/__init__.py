"""Verifiers: a registry of functions ``(response, example, **options) -> Verdict``.

Every reward is in [0, 1]. ``verify`` never raises: a verifier that crashes, or output it cannot
read, gives reward 0 with the reason recorded. ``make_verifier`` checks at once that the verifier
can run here (the code verifier's sandbox) and returns a :class:`Verifier`, which also verifies a
batch of responses on a thread pool. What each verifier guarantees against hostile responses is in
README.md here.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

REGISTRY: dict = {}
CHECKS: dict = {}  # name -> fn(**options) that raises when the verifier cannot run here
ROWS: dict = {}    # name -> fn(example, **options) that raises ValueError for a row it cannot grade


@dataclass(frozen=True)
class Verdict:
    reward: float
    reason: str = "ok"


def register(name: str, check: Optional[Callable] = None, row: Optional[Callable] = None) -> Callable:
    def wrap(fn):
        REGISTRY[name] = fn
        if check is not None:
            CHECKS[name] = check
        if row is not None:
            ROWS[name] = row
        return fn
    return wrap


def check_row(name: str, example, **options) -> None:
    """Raise ``ValueError`` naming the problem when verifier ``name`` cannot grade ``example``
    (no tests, no schema, an empty gold answer ...): such a row would otherwise pay for anything."""
    if name in ROWS:
        ROWS[name](example, **options)


def verify(name: str, response: str, example, **options) -> Verdict:
    """Run verifier ``name`` on ``response`` for ``example``; exceptions (a row it cannot grade
    among them, :func:`check_row`) become reward 0."""
    try:
        check_row(name, example, **options)
        verdict = REGISTRY[name](response, example, **options)
    except Exception as exc:  # a verifier must never stop the run
        return Verdict(0.0, f"verifier error: {type(exc).__name__}: {exc}")
    return Verdict(min(1.0, max(0.0, float(verdict.reward))), verdict.reason)


class Verifier:
    """Verifier ``name`` with its options bound: ``v(response, example)`` or ``v.batch(pairs)``."""

    def __init__(self, name: str, workers: Optional[int] = None, **options):
        if name not in REGISTRY:
            raise KeyError(f"unknown verifier {name!r}; registered: {sorted(REGISTRY)}")
        if name in CHECKS:
            CHECKS[name](**options)
        self.name, self.options = name, options
        self.workers = workers or 2 * (os.cpu_count() or 1)  # code calls wait on process start-up half the time

    def check_row(self, example) -> None:
        """Raise ``ValueError`` when this verifier cannot grade ``example`` (see :func:`check_row`)."""
        check_row(self.name, example, **self.options)

    def __call__(self, response: str, example) -> Verdict:
        return verify(self.name, response, example, **self.options)

    def batch(self, pairs) -> list:
        """Verdicts of ``(response, example)`` pairs, ``workers`` at a time, in order."""
        pairs = list(pairs)
        if self.workers == 1 or len(pairs) < 2:
            return [self(r, e) for r, e in pairs]
        with ThreadPoolExecutor(min(self.workers, len(pairs))) as pool:
            return list(pool.map(lambda p: self(*p), pairs))


def make_verifier(name: str, **options) -> Verifier:
    """The verifier with the options bound; raises now if it cannot run here (e.g. no sandbox)."""
    return Verifier(name, **options)


from . import code, match, math, schema, sql  # noqa: E402,F401  (each module registers itself)
