"""JSON output checked against a JSON Schema (``jsonschema``), in a killable worker.

Only JSON is accepted: ``NaN``, ``Infinity`` and numbers that overflow a double (``1e999``) are
malformed. Parsing and validation run in a worker process killed at ``timeout`` (``_pool``), since
some keywords cost more than linear time in one C call (``uniqueItems`` over mixed values).
"""

from __future__ import annotations

import json
import math
import re

from . import Verdict, register
from ._pool import WorkerPool, WorkerTimeout

MAX_CHARS = 1_000_000  # longer responses are refused before parsing
POOL = WorkerPool(preload=("jsonschema",))


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")


def loads(text: str):
    """``json.loads`` of standard JSON only: non-finite numbers raise ``ValueError``."""
    return json.loads(text, parse_constant=_not_json, parse_float=_finite)


def extract_json(response: str):
    """Parse a fenced ```json block, else the whole response, else its outermost {...} or [...]."""
    blocks = re.findall(r"```(?:json)?[ \t]*\n(.*?)```", response, flags=re.S | re.I)
    candidates = [blocks[-1]] if blocks else [response]
    for open_, close in ("{}", "[]"):
        i, j = response.find(open_), response.rfind(close)
        if 0 <= i < j:
            candidates.append(response[i:j + 1])
    error = None
    for text in candidates:
        try:
            return loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            error = error or exc
    raise ValueError(f"no JSON value found ({str(error)[:100]})")


def check(response: str, schema) -> str:
    """'ok', 'schema violation: ...' or 'malformed: ...' (runs in a worker)."""
    import jsonschema

    try:
        value = extract_json(response)
    except ValueError as exc:
        return f"malformed: {exc}"
    try:
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    except RecursionError:
        return "malformed: JSON nested too deeply"
    return "ok" if error is None else f"schema violation: {error.message[:300]}"


@register("json_schema")
def json_schema(response: str, example, timeout: float = 5.0) -> Verdict:
    """Reward 1 iff the output parses as JSON and validates against ``example.meta['schema']``
    (a dict or a JSON string; falls back to ``example.answer``) within ``timeout`` seconds."""
    if len(response) > MAX_CHARS:
        return Verdict(0.0, f"malformed: response longer than {MAX_CHARS} characters")
    schema = example.meta.get("schema", example.answer)
    if isinstance(schema, str):
        schema = json.loads(schema)
    try:
        reason = POOL.run(check, (response, schema), timeout)
    except WorkerTimeout as exc:
        return Verdict(0.0, str(exc))
    return Verdict(float(reason == "ok"), reason)
