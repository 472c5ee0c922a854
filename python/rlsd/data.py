"""Datasets with a verifiable answer, a curriculum sampler and dynamic sampling.

A row has ``prompt`` and ``answer``, optionally ``solution`` (a worked trace), ``difficulty`` (an
int, lower is easier) and ``document``; any other key (``tests``, ``schema``, ``db`` ...) is kept
in ``meta`` for the verifier.
"""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import torch

_FIELDS = ("prompt", "answer", "solution", "difficulty", "document")


@dataclass
class Example:
    prompt: str
    answer: object
    solution: Optional[str] = None
    difficulty: int = 0
    document: Optional[str] = None
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict) -> "Example":
        if "prompt" not in row or "answer" not in row:
            raise KeyError(f"a row needs 'prompt' and 'answer', got keys {sorted(row)}")
        known = {k: row[k] for k in _FIELDS if k in row and row[k] is not None}
        known["difficulty"] = int(known.get("difficulty", 0))
        return cls(**known, meta={k: v for k, v in row.items() if k not in _FIELDS})

    def to_row(self) -> dict:
        row = {"prompt": self.prompt, "answer": self.answer, "difficulty": self.difficulty}
        if self.solution is not None:
            row["solution"] = self.solution
        if self.document is not None:
            row["document"] = self.document
        return {**row, **self.meta}


def read_rows(path: str) -> list:
    """Rows of a ``.jsonl`` or ``.parquet`` file as dicts."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # optional dependency, only for Parquet input
        return pq.read_table(path).to_pylist()
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_examples(path: str) -> list:
    return [Example.from_row(row) for row in read_rows(path)]


def write_jsonl(path: str, rows) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


class CurriculumSampler:
    """Draws prompts without replacement (reshuffling each epoch) from the current difficulty level.

    With ``curriculum`` on, levels are the sorted distinct difficulties; after each batch of rewards
    the pass rate over the last ``window`` rewards at this level is checked, and when it reaches
    ``threshold`` the sampler moves to the next level. Without it, all examples form one level.
    The whole state (level, order, position, recent rewards, RNG) is in ``state_dict``.
    """

    def __init__(self, examples: list, seed: int = 0, curriculum: bool = False,
                 threshold: float = 0.7, window: int = 128):
        self.examples = examples
        self.curriculum = curriculum
        self.threshold, self.window = threshold, window
        diffs = sorted({e.difficulty for e in examples}) if curriculum else [None]
        self.levels = [[i for i, e in enumerate(examples) if d is None or e.difficulty == d] for d in diffs]
        self.level_names = diffs
        self.rng = random.Random(seed)
        self.level = 0
        self.recent = deque(maxlen=window)
        self._new_epoch()

    def _new_epoch(self):
        self.order = list(self.levels[self.level])
        self.rng.shuffle(self.order)
        self.pos = 0

    def sample(self, k: int) -> list:
        """``k`` examples (index, Example)."""
        out = []
        while len(out) < k:
            if self.pos == len(self.order):
                self._new_epoch()
            idx = self.order[self.pos]
            self.pos += 1
            out.append((idx, self.examples[idx]))
        return out

    def update(self, rewards) -> bool:
        """Record rewards of the current level; advance a level when the pass rate crosses the threshold."""
        if not self.curriculum:
            return False
        self.recent.extend(float(r) for r in rewards)
        full = len(self.recent) == self.window
        if full and sum(self.recent) / self.window >= self.threshold and self.level + 1 < len(self.levels):
            self.level += 1
            self.recent.clear()
            self._new_epoch()
            return True
        return False

    @property
    def pass_rate(self):
        """Mean recent reward at the current level (None right after a level change)."""
        return sum(self.recent) / len(self.recent) if self.recent else None

    def state_dict(self) -> dict:
        return {"level": self.level, "order": list(self.order), "pos": self.pos,
                "recent": list(self.recent), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.level, self.order, self.pos = state["level"], list(state["order"]), state["pos"]
        self.recent = deque(state["recent"], maxlen=self.window)
        self.rng.setstate(state["rng"])


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """Dynamic sampling (DAPO): a [G] bool mask of groups whose n rewards are not all equal.

    ``rewards`` is [G, n]. A group with equal rewards has zero advantage everywhere: it carries no
    policy-gradient signal and would only dilute the token-mean normaliser.
    """
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) > 0
