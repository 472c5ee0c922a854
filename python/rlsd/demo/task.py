"""The demo's verifiable task: sums of k two-digit numbers, solved with worked partial sums.

    prompt    12+34+56=
    solution  12+34=46;46+56=102;#102        (the response the warm start learns; EOS follows)
    answer    102                            (the verifier reads the integer after '#')

Privileged contexts go before the prompt: the answer alone (``ans 102|12+34+56=``, teacher
source ``answer``) or the full verified trace (``12+34=46;46+56=102;#102|12+34+56=``, source
``solution``).
"""

from __future__ import annotations

import random

from ..data import Example

ALPHABET = "0123456789+=;#| ans"
ANSWER_PATTERN = r"#(\d+)$"
TEMPLATES = {"answer": "ans {reference}|{prompt}", "solution": "{reference}|{prompt}"}


def make_problem(rng: random.Random, k: int = 3) -> Example:
    nums = [rng.randint(10, 99) for _ in range(k)]
    steps, acc = [], nums[0]
    for x in nums[1:]:
        steps.append(f"{acc}+{x}={acc + x}")
        acc += x
    prompt = "+".join(map(str, nums)) + "="
    return Example(prompt=prompt, answer=str(acc), solution=";".join(steps) + f";#{acc}", difficulty=k)


def response_tokens(k: int) -> int:
    """Tokens a generated response of a k-number sum may take: its worked solution (k - 1 partial
    sums of at most 11 characters, then ``#`` and up to 3 digits: 11 k - 7) and some slack; 32 at k = 3."""
    return 12 * k - 4


def make_split(n: int, seed: int, k: int = 3, exclude=()) -> list:
    """``n`` distinct problems (none of whose prompts are in ``exclude``)."""
    rng, seen, out = random.Random(seed), set(exclude), []
    while len(out) < n:
        e = make_problem(rng, k)
        if e.prompt not in seen:
            seen.add(e.prompt)
            out.append(e)
    return out
