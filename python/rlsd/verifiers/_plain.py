"""Plain data: values of exact builtin types, and their JSON form.

Shared by the host (``judge``, ``code``) and the sandboxed runner (``_runner.py``, which gets this
file's source prepended; it is standard library only). A plain value is ``None``, a ``bool``,
``int``, ``float``, ``complex``, ``str`` or ``bytes``, or a ``list``, ``tuple``, ``set``,
``frozenset`` or ``dict`` of plain values, nested at most ``MAX_DEPTH`` deep; the type test is
``type(v) is ...``, so subclasses (an ``int`` whose ``__eq__`` is always true) are not plain.
JSON carries ``None``, ``bool``, ``int``, ``str``, finite ``float`` and ``list`` as themselves and
everything else as a one-key object: ``{"t": [...]}`` tuple, ``{"s": [...]}`` set, ``{"z": [...]}``
frozenset, ``{"d": [[k, v], ...]}`` dict, ``{"b": "hex"}`` bytes, ``{"c": [re, im]}`` complex,
``{"f": "nan"}`` a non-finite float; ``{"h": n}`` names object ``n`` kept by the runner.
"""

import json
import math

MAX_DEPTH = 100
_SCALARS = (type(None), bool, int, str)
_SEQUENCES = {tuple: "t", set: "s", frozenset: "z"}
_FROM_TAG = {"t": tuple, "s": set, "z": frozenset}


class NotPlain(TypeError):
    """A value that is not plain data, or JSON that does not encode one."""


def encode(value, ref=None, depth=0):
    """The JSON-ready form of plain ``value``; ``ref(v)`` gives the object number of a value that
    stands for an object kept by the runner (or None). Raises :class:`NotPlain`."""
    if depth > MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH}")
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is float:
        return value if math.isfinite(value) else {"f": repr(value)}
    if kind is list:
        return [encode(v, ref, depth + 1) for v in value]
    if kind in _SEQUENCES:
        return {_SEQUENCES[kind]: [encode(v, ref, depth + 1) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, ref, depth + 1), encode(v, ref, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [encode(value.real), encode(value.imag)]}
    number = ref(value) if ref is not None else None
    if number is None:
        raise NotPlain(f"a {kind.__name__!r} object is not plain data")
    return {"h": number}


def decode(data, deref=None, depth=0):
    """The plain value of JSON-ready ``data``; ``deref(n)`` resolves ``{"h": n}`` (refused when
    None). Raises :class:`NotPlain` for anything that :func:`encode` does not produce."""
    if depth > MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH}")
    kind = type(data)
    if kind in _SCALARS or kind is float:
        return data
    if kind is list:
        return [decode(v, deref, depth + 1) for v in data]
    if kind is not dict or len(data) != 1:
        raise NotPlain("malformed plain data")
    (tag, body), = data.items()
    try:
        if tag in _FROM_TAG and type(body) is list:
            return _FROM_TAG[tag](decode(v, deref, depth + 1) for v in body)
        if tag == "d" and type(body) is list:
            return {decode(k, deref, depth + 1): decode(v, deref, depth + 1) for k, v in body}
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "c" and type(body) is list and len(body) == 2 and all(type(x) in (int, float) for x in body):
            return complex(*body)
        if tag == "f" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == "h" and type(body) is int and deref is not None:
            return deref(body)
    except (TypeError, ValueError) as exc:  # unhashable keys or members, bad hex, a [k, v] pair of the wrong size
        raise NotPlain(f"malformed plain data: {exc}") from None
    raise NotPlain("malformed plain data")


def _refuse_constant(name):
    raise NotPlain(f"{name} is not JSON")


def dumps(data) -> bytes:
    """Compact JSON; an integer past 4300 digits (Python's limit) raises :class:`NotPlain`."""
    try:
        return json.dumps(data, allow_nan=False, separators=(",", ":")).encode(errors="surrogatepass")
    except ValueError as exc:
        raise NotPlain(str(exc)[:100]) from None


def loads(text: bytes):
    """JSON without NaN or Infinity; errors (and integers past 4300 digits) raise :class:`NotPlain`."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise NotPlain(f"malformed JSON: {str(exc)[:100]}") from None
