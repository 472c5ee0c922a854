"""Datasets with a verifiable answer, a curriculum sampler and dynamic sampling.

A row has ``prompt`` (a non-empty string) and ``answer`` (any non-null value), optionally
``solution`` (a worked trace), ``difficulty`` (an int, lower is easier) and ``document``; any other
key (``tests``, ``schema``, ``db`` ...) is kept in ``meta`` for the verifier. Rows are read from
UTF-8 JSONL (one object per line, blank lines skipped) or Parquet; duplicate rows are kept (each is
drawn once per epoch). A bad file or row raises :class:`DataError` naming the file and line (or row).
"""

from __future__ import annotations

import json
import os
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

_FIELDS = ("prompt", "answer", "solution", "difficulty", "document")
REQUIRED = ("prompt", "answer")


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file and line (or row)."""


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


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
        """An Example from a mapping; :class:`DataError` naming the field if one is missing or of the wrong type."""
        if not isinstance(row, dict):
            raise DataError(f"a row must be a mapping, got {_kind(row)}")
        missing = [k for k in REQUIRED if row.get(k) is None]
        if missing:
            raise DataError(f"the row has no {' or '.join(map(repr, missing))} (keys: {sorted(map(str, row))})")
        if not isinstance(row["prompt"], str):
            raise DataError(f"'prompt' must be a string, got {_kind(row['prompt'])}")
        for key in ("prompt", "answer"):
            if isinstance(row[key], str) and not row[key].strip():
                raise DataError(f"{key!r} is empty")
        for key in ("solution", "document"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise DataError(f"{key!r} must be a string or null, got {_kind(row[key])}")
        known = {k: row[k] for k in _FIELDS if k in row and row[k] is not None}
        difficulty = known.get("difficulty", 0)
        if isinstance(difficulty, bool) or not (isinstance(difficulty, int) or
                                                (isinstance(difficulty, float) and difficulty.is_integer())):
            raise DataError(f"'difficulty' must be an integer, got {_kind(difficulty)} {difficulty!r}")
        known["difficulty"] = int(difficulty)
        return cls(**known, meta={k: v for k, v in row.items() if k not in _FIELDS})

    def to_row(self) -> dict:
        row = {"prompt": self.prompt, "answer": self.answer, "difficulty": self.difficulty}
        if self.solution is not None:
            row["solution"] = self.solution
        if self.document is not None:
            row["document"] = self.document
        return {**row, **self.meta}


def _unique_keys(pairs: list) -> dict:
    row = {}
    for key, value in pairs:
        if key in row:
            raise DataError(f"duplicate key {key!r}")
        row[key] = value
    return row


def _jsonl_rows(path: str) -> Iterator:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not valid UTF-8 (byte {exc.start} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=_unique_keys)
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from None
            except ValueError as exc:
                raise DataError(f"{where}: not valid JSON ({exc}); JSONL has one object per line") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {_kind(row)}")
            yield where, row


def _parquet_rows(path: str) -> Iterator:
    import pyarrow as pa  # optional dependency, only for Parquet input
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: no column {' or '.join(map(repr, missing))} (columns: {table.column_names})")
    for i, row in enumerate(table.to_pylist(), 1):
        yield f"{path}: row {i}", row


def _located_rows(path: str) -> Iterator:
    """(where, row) for each row of ``path``; ``where`` is ``file:line`` or ``file: row N``."""
    if not path:
        raise DataError("no data file named: set data.train (and data.eval) in the config")
    if not os.path.isfile(path):
        raise DataError(f"data file not found: {path}" if not os.path.exists(path) else f"{path}: not a file")
    return _parquet_rows(path) if path.endswith(".parquet") else _jsonl_rows(path)


def read_rows(path: str) -> list:
    """Rows of a ``.jsonl`` or ``.parquet`` file as dicts."""
    return [row for _, row in _located_rows(path)]


def load_examples(path: str, check=None) -> list:
    """Every row of ``path`` as an :class:`Example`; an empty file is an error. ``check(example)``
    (e.g. ``Verifier.check_row``) raises ``ValueError`` for a row the verifier cannot grade."""
    examples = []
    for where, row in _located_rows(path):
        try:
            examples.append(Example.from_row(row))
            if check is not None:
                check(examples[-1])
        except ValueError as exc:  # DataError, or the check's
            raise DataError(f"{where}: {exc}") from None
    if not examples:
        raise DataError(f"{path}: no rows")
    return examples


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
        diffs = sorted({e.difficulty for e in examples}) if curriculum and examples else [None]
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
        if k > 0 and not self.levels[self.level]:
            raise ValueError("no examples to sample: the training set is empty")
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
        """Restore a :meth:`state_dict`; :class:`DataError` if it was taken on another training set."""
        level, order, pos = state["level"], list(state["order"]), state["pos"]
        if not (0 <= level < len(self.levels) and sorted(order) == self.levels[level] and 0 <= pos <= len(order)):
            raise DataError(f"the sampler state does not fit this training set ({len(self.examples)} examples, "
                            f"{len(self.levels)} levels): was the data file changed since the checkpoint?")
        self.level, self.order, self.pos = level, order, pos
        self.recent = deque(state["recent"], maxlen=self.window)
        self.rng.setstate(state["rng"])


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """Dynamic sampling (DAPO): a [G] bool mask of groups whose n rewards are not all equal.

    ``rewards`` is [G, n]. A group with equal rewards has zero advantage everywhere: it carries no
    policy-gradient signal and would only dilute the token-mean normaliser.
    """
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) > 0
