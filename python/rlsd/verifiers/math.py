"""Mathematical equivalence with ``math-verify`` (LaTeX / plain expressions, boxed answers)."""

from __future__ import annotations

from . import Verdict, register


@register("math")
def math_answer(response: str, example) -> Verdict:
    """Reward 1 iff the last answer in the response is mathematically equal to the reference."""
    from math_verify import parse, verify

    gold = parse(str(example.answer) if "$" in str(example.answer) else f"${example.answer}$")
    pred = parse(response)
    if not pred:
        return Verdict(0.0, "malformed: no mathematical answer found")
    ok = verify(gold, pred)
    return Verdict(float(ok), "ok" if ok else "wrong answer")
