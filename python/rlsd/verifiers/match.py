"""Exact and normalised string match, with an optional regex that extracts the answer."""

from __future__ import annotations

import re
from typing import Optional

from . import Verdict, register

MAX_CHARS = 1_000_000  # longer responses are refused before matching


def extract(response: str, pattern: Optional[str]) -> Optional[str]:
    """The last match of ``pattern`` (its first group if it has one), or the whole response."""
    if not pattern:
        return response
    matches = list(re.finditer(pattern, response))
    if not matches:
        return None
    m = matches[-1]
    return m.group(1) if m.groups() else m.group(0)


_TOKEN = re.compile(r"(?:(?<![^\W_])[-+])?\d+(?:[.,/:]\d+)*|%|[^\W_]+")  # a number (sign, separators), %, a word
ARTICLES = frozenset({"a", "an", "the"})


def normalize(text: str) -> str:
    """Lowercase words and numbers, separated by single spaces; other punctuation separates but is
    dropped, and so is an article (a, an, the) before another word. A number keeps its sign and
    inner separators (``-5``, ``3.14``, ``1/2``, ``1,000`` stay distinct from ``5``, ``314``,
    ``12``, ``1000``), ``%`` is kept as a word, and a lone article is kept (gold ``A`` is ``a``)."""
    tokens = _TOKEN.findall(text.lower())
    return " ".join(t for i, t in enumerate(tokens) if t not in ARTICLES or i + 1 == len(tokens))


def _match(response, example, pattern, canon):
    if len(response) > MAX_CHARS:
        return Verdict(0.0, f"malformed: response longer than {MAX_CHARS} characters")
    found = extract(response, pattern)
    if found is None:
        return Verdict(0.0, f"malformed: no answer matching {pattern!r}")
    ok = canon(found) == canon(str(example.answer))
    return Verdict(float(ok), "ok" if ok else "wrong answer")


def check_normalized_row(example, **_) -> None:
    if not normalize(str(example.answer)):
        raise ValueError(f"normalized: the answer {str(example.answer)[:50]!r} normalises to nothing")


def check_exact_row(example, **_) -> None:
    if not str(example.answer).strip():
        raise ValueError("exact: the answer is empty")


@register("exact", row=check_exact_row)
def exact(response: str, example, pattern: Optional[str] = None) -> Verdict:
    """Reward 1 iff the extracted answer equals the reference after stripping surrounding space."""
    return _match(response, example, pattern, str.strip)


@register("normalized", row=check_normalized_row)
def normalized(response: str, example, pattern: Optional[str] = None) -> Verdict:
    """Reward 1 iff the extracted answer equals the reference after :func:`normalize`."""
    return _match(response, example, pattern, normalize)
