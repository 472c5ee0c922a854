"""Exact and normalised string match, with an optional regex that extracts the answer."""

from __future__ import annotations

import re
import string
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


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _match(response, example, pattern, canon):
    if len(response) > MAX_CHARS:
        return Verdict(0.0, f"malformed: response longer than {MAX_CHARS} characters")
    found = extract(response, pattern)
    if found is None:
        return Verdict(0.0, f"malformed: no answer matching {pattern!r}")
    ok = canon(found) == canon(str(example.answer))
    return Verdict(float(ok), "ok" if ok else "wrong answer")


@register("exact")
def exact(response: str, example, pattern: Optional[str] = None) -> Verdict:
    """Reward 1 iff the extracted answer equals the reference after stripping surrounding space."""
    return _match(response, example, pattern, str.strip)


@register("normalized")
def normalized(response: str, example, pattern: Optional[str] = None) -> Verdict:
    """Reward 1 iff the extracted answer equals the reference after :func:`normalize`."""
    return _match(response, example, pattern, normalize)
