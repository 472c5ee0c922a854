"""Mathematical equivalence with ``math-verify`` (LaTeX / plain expressions, boxed answers).

Parsing and comparing run in killable worker processes (``_pool``): math-verify's own alarm-based
timeout cannot interrupt SymPy inside one long C call (``9^{9^{9^9}}``) and works in the main thread only.
"""

from __future__ import annotations

from . import Verdict, register
from ._pool import WorkerPool, WorkerTimeout

MAX_CHARS = 100_000     # longer responses are refused before parsing
POOL = WorkerPool(preload=("math_verify",))


def equivalent(response: str, answer: str, seconds: int) -> str:
    """'ok', 'wrong answer' or 'malformed: ...' (runs in a worker)."""
    from math_verify import parse, verify

    gold = parse(answer if "$" in answer else f"${answer}$", parsing_timeout=seconds)
    pred = parse(response, parsing_timeout=seconds)
    if not pred:
        return "malformed: no mathematical answer found"
    return "ok" if verify(gold, pred, timeout_seconds=seconds) else "wrong answer"


@register("math")
def math_answer(response: str, example, timeout: float = 10.0) -> Verdict:
    """Reward 1 iff the last answer in the response is mathematically equal to the reference, found
    within ``timeout`` seconds (the worker is killed then; math-verify's own limit per step is a third)."""
    if len(response) > MAX_CHARS:
        return Verdict(0.0, f"malformed: response longer than {MAX_CHARS} characters")
    try:
        reason = POOL.run(equivalent, (response, str(example.answer), max(1, int(timeout / 3))), timeout)
    except WorkerTimeout as exc:
        return Verdict(0.0, str(exc))
    return Verdict(float(reason == "ok"), reason)
