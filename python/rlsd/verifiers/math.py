"""Mathematical equivalence with ``math-verify`` (LaTeX / plain expressions, boxed answers).

Parsing and comparing run in killable worker processes (``_pool``): math-verify's own alarm-based
timeout cannot interrupt SymPy inside one long C call (``9^{9^{9^9}}``) and works in the main thread only.
"""

from __future__ import annotations

import math as _math
import re

from . import Verdict, register
from ._pool import WorkerFailed, WorkerPool

MAX_CHARS = 100_000     # longer responses are refused before parsing
POOL = WorkerPool(preload=("math_verify",))


EXPLICIT = 300  # math-verify's priorities below this are stated answers ("answer is", \boxed); 300 is any expression
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")


def stated_answers(response: str) -> list:
    """Every final answer the response states, as math-verify extracts them: the graded one (the last
    match of the first pattern group that yields an answer) and, if that group is an explicit one
    ("the answer is", ``\\boxed``), its other matches and every match that ends in the graded answer's
    sentence after the graded answer begins; a match inside a longer one (``10`` in ``10^3``) is
    part of it, not an answer."""
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig, extract_match, get_extraction_regexes

    found = [(priority, m, target)
             for patterns, target in get_extraction_regexes((LatexExtractionConfig(), ExprExtractionConfig()))
             for pattern, priority in patterns for m in pattern.finditer(response)]
    for priority in sorted({p for p, _, _ in found}):
        group = sorted((f for f in found if f[0] == priority), key=lambda f: (f[1].end(), -f[1].start()), reverse=True)
        graded = next(((m, v) for _, m, t in group for v in [extract_match(m, t)[0]] if v is not None), None)
        if graded is None:
            continue
        match, value = graded
        answers = [value]
        if priority >= EXPLICIT:
            return answers
        end = _SENTENCE_END.search(response, match.end())
        end = end.start() if end else len(response)
        others = [(m, t) for p, m, t in found if m is not match and (p == priority or match.start() < m.end() <= end)]
        spans = {m.span() for m, _ in others} | {match.span()}
        for m, t in others:
            if not any(a <= m.start() and m.end() <= b and (a, b) != m.span() for a, b in spans):
                answers += [v for v in [extract_match(m, t)[0]] if v is not None]
        return answers
    return []


def _percent_as_value(expr):
    """``expr`` with each percentage ``X%`` (math-verify's ``X * UnevaluatedExpr(1/100)``) as the number
    ``X/100``, so that ``5\\%`` equals 0.05 and ``5\\%``, never 5."""
    from math_verify.grader import get_pct_val
    from sympy import Basic, Rational, UnevaluatedExpr

    if not isinstance(expr, Basic):
        return expr
    marker = UnevaluatedExpr(Rational(1, 100))
    return expr.replace(lambda e: get_pct_val(e, None) is not None and marker in e.args,
                        lambda e: get_pct_val(e, e) / 100)


def float_rounding(gold: list) -> int:
    """Decimal places math-verify rounds floats to: its default 6, or more for a gold answer of
    magnitude below 0.1, so that 6 significant digits are compared (``0.0`` is not ``1e-7``)."""
    from sympy import Basic, Number

    smallest = 1.0
    for expr in gold:
        if not isinstance(expr, Basic):
            continue
        values = [abs(x) for x in expr.atoms(Number)] + ([abs(expr.evalf())] if expr.is_number else [])
        for value in values:
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if 0 < value < smallest:
                smallest = value
    return max(6, 5 - _math.floor(_math.log10(smallest)))


def equivalent(response: str, answer: str, seconds: int) -> str:
    """'ok', 'wrong answer' or 'malformed: ...' (runs in a worker). Every stated final answer must
    equal the reference: a response that hedges over several (``the answer is 1 or 2``) is wrong.
    Floats are compared to 6 significant digits for small references (:func:`float_rounding`), and
    ``X%`` means ``X/100`` (:func:`_percent_as_value`)."""
    from math_verify import parse, verify

    gold = [_percent_as_value(g) for g in parse(answer if "$" in answer else f"${answer}$", parsing_timeout=seconds)]
    pred = [_percent_as_value(p) for p in parse(response, parsing_timeout=seconds)]
    if not pred:
        return "malformed: no mathematical answer found"
    if not gold:
        raise ValueError(f"math: the reference answer {answer[:50]!r} does not parse")
    options = dict(float_rounding=float_rounding(gold), timeout_seconds=seconds)
    if not verify(gold, pred, **options):
        return "wrong answer"
    if not all(verify(gold, [_percent_as_value(value)], **options) for value in stated_answers(response)):
        return "wrong answer: the response states several different final answers"
    return "ok"


def check_row(example, **_) -> None:
    if example.answer is None or not str(example.answer).strip():
        raise ValueError("math: the answer is empty")


@register("math", row=check_row)
def math_answer(response: str, example, timeout: float = 10.0) -> Verdict:
    """Reward 1 iff the answer math-verify grades (the last one of its highest-priority kind) and every
    other final answer the response states (:func:`stated_answers`) are mathematically equal to the
    reference, found within ``timeout`` seconds (the worker is killed then; math-verify's own limit
    per step is a third)."""
    if len(response) > MAX_CHARS:
        return Verdict(0.0, f"malformed: response longer than {MAX_CHARS} characters")
    try:
        reason = POOL.run(equivalent, (response, str(example.answer), max(1, int(timeout / 3))), timeout)
    except WorkerFailed as exc:
        return Verdict(0.0, str(exc))
    return Verdict(float(reason == "ok"), reason)
