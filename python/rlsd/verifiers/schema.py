"""JSON output checked against a JSON Schema (``jsonschema``), exactly, in a killable worker.

Only JSON is accepted, read exactly: numbers are kept as ``int`` and ``decimal.Decimal`` (never
rounded to a double, so ``150.00000000000001`` is above ``maximum: 150`` and ``0.3`` is a multiple
of ``0.1``), an object with a repeated key is malformed, and so are ``NaN``, ``Infinity``, integers
past ``MAX_DIGITS`` digits and numbers whose exponent is past ``MAX_EXPONENT``. The dialect is the
schema's ``$schema`` (default 2020-12) through ``jsonschema.validators.validator_for``, with that
dialect's ``FormatChecker``; a schema is refused (:func:`check_schema`) when it is not valid in its
dialect, names an unknown dialect, or uses a ``format`` that this installation cannot check. Parsing
and validation run in a worker process killed at ``timeout`` (``_pool``), since some keywords cost
more than linear time in one C call (``uniqueItems`` over mixed values).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from . import Verdict, register
from ._pool import WorkerFailed, WorkerPool

MAX_CHARS = 1_000_000  # longer responses are refused before parsing
MAX_DIGITS = 4300      # digits of a JSON number (Python's own limit for int <-> str)
MAX_EXPONENT = 400     # numbers from 1e400 up, or nonzero below 1e-399, are refused (a double ends near 1e308)
POOL = WorkerPool(preload=("jsonschema",))


def _number(text: str) -> Decimal:
    value = Decimal(text)
    if len(value.as_tuple().digits) > MAX_DIGITS or abs(value.adjusted()) >= MAX_EXPONENT:
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _integer(text: str) -> int:
    if len(text) > MAX_DIGITS:
        raise ValueError(f"integer past {MAX_DIGITS} digits")
    return int(text)


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"repeated key {repeated[:40]!r}")
    return obj


def loads(text: str):
    """Exact ``json.loads``: decimals as ``Decimal``, bounded integers; repeated keys and
    non-finite numbers raise ``ValueError``."""
    return json.loads(text, parse_constant=_not_json, parse_float=_number, parse_int=_integer,
                      object_pairs_hook=_unique_keys)


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


def _exact_schema(schema):
    """``schema`` (a JSON string or already parsed) read with :func:`loads`, so its numbers are exact too."""
    if not isinstance(schema, str):
        schema = json.dumps(schema, allow_nan=False)
    return loads(schema)


def _multiple_of(validator, divisor, instance, schema):
    """``multipleOf`` on exact numbers (``Fraction``: no float rounding, no Decimal context limits)."""
    if validator.is_type(instance, "number") and (Fraction(instance) / Fraction(divisor)).denominator != 1:
        yield _errors().ValidationError(f"{instance} is not a multiple of {divisor}")


def _errors():
    import jsonschema
    return jsonschema.exceptions


def validator(schema):
    """The validator of ``schema``'s dialect (``$schema``, default 2020-12) for exact numbers, with its
    format checker. Raises ``ValueError`` for an unknown dialect, an invalid schema or an unchecked format."""
    import jsonschema
    from jsonschema.validators import validator_for

    if not isinstance(schema, dict):
        raise ValueError(f"the schema must be a JSON object, got {type(schema).__name__}")
    if not schema:
        raise ValueError("the schema {} constrains nothing")
    base = validator_for(schema, default=None) if "$schema" in schema else jsonschema.Draft202012Validator
    if base is None:
        raise ValueError(f"unknown $schema {str(schema['$schema'])[:100]!r}")
    try:
        base.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise ValueError(f"invalid schema: {exc.message[:200]}") from None
    formats = base.FORMAT_CHECKER
    unchecked = sorted({f for f in _formats(schema) if f not in formats.checkers})
    if unchecked:
        raise ValueError(f"format {', '.join(unchecked)} cannot be checked here (checked: {', '.join(sorted(formats.checkers))})")
    old_draft = base in (jsonschema.Draft3Validator, jsonschema.Draft4Validator)  # 1.0 is not an integer there

    def is_integer(checker, instance):
        return type(instance) is int or not old_draft and type(instance) is Decimal and instance == instance.to_integral_value()

    exact = jsonschema.validators.extend(base, validators={"multipleOf": _multiple_of},
                                         type_checker=base.TYPE_CHECKER.redefine("integer", is_integer))
    return exact(schema, format_checker=formats)


def _formats(schema):
    """Every value of a ``format`` keyword in ``schema`` (a schema's keywords, wherever they are)."""
    if isinstance(schema, dict):
        if isinstance(schema.get("format"), str):
            yield schema["format"]
        for value in schema.values():
            yield from _formats(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _formats(value)


def check_schema(schema) -> None:
    """Raise ``ValueError`` unless ``schema`` (a dict or a JSON string) can grade responses."""
    validator(_exact_schema(schema))


def check(response: str, schema) -> str:
    """'ok', 'schema violation: ...' or 'malformed: ...' (runs in a worker)."""
    import jsonschema

    checker = validator(_exact_schema(schema))
    try:
        value = extract_json(response)
    except ValueError as exc:
        return f"malformed: {exc}"
    try:
        error = jsonschema.exceptions.best_match(checker.iter_errors(value))
    except RecursionError:
        return "malformed: JSON nested too deeply"
    except (ArithmeticError, InvalidOperation) as exc:
        return f"malformed: {type(exc).__name__}"
    return "ok" if error is None else f"schema violation: {error.message[:300]}"


def check_row(example, **_) -> None:
    """A row can be graded: a schema (``meta['schema']``, else the answer) that :func:`check_schema` accepts."""
    schema = example.meta.get("schema", example.answer)
    if schema is None:
        raise ValueError("json_schema: the row has no 'schema'")
    check_schema(schema)


@register("json_schema", row=check_row)
def json_schema(response: str, example, timeout: float = 5.0) -> Verdict:
    """Reward 1 iff the output parses as exact JSON and validates against ``example.meta['schema']``
    (a dict or a JSON string; falls back to ``example.answer``) in its dialect, formats included,
    within ``timeout`` seconds."""
    if len(response) > MAX_CHARS:
        return Verdict(0.0, f"malformed: response longer than {MAX_CHARS} characters")
    schema = example.meta.get("schema", example.answer)
    try:
        reason = POOL.run(check, (response, schema), timeout)
    except WorkerFailed as exc:
        return Verdict(0.0, str(exc))
    return Verdict(float(reason == "ok"), reason)
