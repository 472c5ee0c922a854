"""JSON output checked against a JSON Schema (``jsonschema``)."""

from __future__ import annotations

import json
import re

from . import Verdict, register

MAX_CHARS = 1_000_000  # longer responses are refused before parsing


def extract_json(response: str):
    """Parse a fenced ```json block, else the whole response, else its outermost {...} or [...]."""
    blocks = re.findall(r"```(?:json)?[ \t]*\n(.*?)```", response, flags=re.S | re.I)
    candidates = [blocks[-1]] if blocks else [response]
    for open_, close in ("{}", "[]"):
        i, j = response.find(open_), response.rfind(close)
        if 0 <= i < j:
            candidates.append(response[i:j + 1])
    for text in candidates:
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            continue
    raise ValueError("no JSON value found")


@register("json_schema")
def json_schema(response: str, example) -> Verdict:
    """Reward 1 iff the output parses as JSON and validates against ``example.meta['schema']``
    (a dict or a JSON string; falls back to ``example.answer``)."""
    import jsonschema

    if len(response) > MAX_CHARS:
        return Verdict(0.0, f"malformed: response longer than {MAX_CHARS} characters")
    schema = example.meta.get("schema", example.answer)
    if isinstance(schema, str):
        schema = json.loads(schema)
    try:
        value = extract_json(response)
    except ValueError as exc:
        return Verdict(0.0, f"malformed: {exc}")
    try:
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    except RecursionError:
        return Verdict(0.0, "malformed: JSON nested too deeply")
    if error is not None:
        return Verdict(0.0, f"schema violation: {error.message[:300]}")
    return Verdict(1.0, "ok")
