"""Plain data: values of exact builtin types, and their JSON form.

Shared by the host (``code``) and the two sandboxed processes (``_runner.py``, ``_tests.py``, which
get this file's source prepended; it is standard library only). A plain value is ``None``, a ``bool``,
``int``, ``float``, ``complex``, ``str`` or ``bytes``, or a ``list``, ``tuple``, ``set``,
``frozenset`` or ``dict`` of plain values, nested at most ``MAX_DEPTH`` deep; the type test is
``type(v) is ...``, so subclasses (an ``int`` whose ``__eq__`` is always true) are not plain.
JSON carries ``None``, ``bool``, ``int`` (up to ``BIG_BITS`` bits), ``str``, finite ``float`` and
``list`` as themselves and everything else as a one-key object: ``{"t": [...]}`` tuple, ``{"s":
[...]}`` set, ``{"z": [...]}`` frozenset, ``{"d": [[k, v], ...]}`` dict, ``{"b": "hex"}`` bytes,
``{"c": [re, im]}`` complex, ``{"f": "nan"}`` a non-finite float, ``{"i": "hex"}`` a larger int
(hexadecimal has no digit limit); ``{"h": n}`` names object ``n`` kept by the solution's process.

:class:`Channel` carries frames (a decimal length, a newline, that many bytes of JSON) over two
descriptors, blocking: the sandboxed processes' side (the host has its own, with a deadline).
"""

import json
import math
import os

BIG_BITS = 4096  # larger ints travel as hexadecimal: decimal conversion is quadratic and capped at 4300 digits

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
    if kind is int and value.bit_length() > BIG_BITS:
        return {"i": format(value, "x")}
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
        if tag == "i" and type(body) is str and body.lstrip("-").isalnum():
            return int(body, 16)
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


class Channel:
    """Frames of JSON read from ``read_fd`` and written to ``write_fd`` (blocking), at most ``limit``
    bytes each; raises ``EOFError`` when the other side has gone."""

    def __init__(self, read_fd, write_fd, limit):
        self.read_fd, self.write_fd, self.limit = read_fd, write_fd, limit

    def _read(self, size):
        data = b""
        while len(data) < size:
            chunk = os.read(self.read_fd, min(size - len(data), 1 << 20))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def receive(self):
        header = b""
        while not header.endswith(b"\n"):
            header += self._read(1)
            if len(header) > 12:
                raise NotPlain("malformed frame")
        if not header[:-1].isdigit() or int(header) > self.limit:
            raise NotPlain(f"a frame longer than {self.limit} bytes, or malformed")
        return loads(self._read(int(header)))

    def send(self, message):
        data = dumps(message)
        data = b"%d\n%s" % (len(data), data)
        while data:
            data = data[os.write(self.write_fd, data):]
