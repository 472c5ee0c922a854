"""The code verifier's tests, evaluated on the host against values computed in the sandbox.

``parse(tests)`` checks that the tests use only the statements and expressions below and returns
a :class:`Program`; ``Program.run(remote, deadline)`` runs it. Every name that is neither a test
variable nor one of ``HOST_NAMES`` (nor a module the tests import from ``HOST_MODULES``) is the
solution's: looking it up, or an attribute, item or call of what it gives, is a request to the
sandbox (``remote``), which answers with plain data (``_plain``) or an opaque :class:`Handle` to
an object it keeps. Comparisons, ``len``, ``isinstance``, ``sorted``, arithmetic and the truth of
an ``assert`` are the host's own, on plain values, so the solution's objects and names decide
nothing. Handles can only be passed back to the sandbox (as a call's argument, or to take an
attribute, item or call of): used in anything else they raise :class:`NotPlain`.

Statements: ``assert``, ``=`` (names, or tuples of names), expression statements, ``for`` over
plain values, ``import`` / ``from ... import`` of ``HOST_MODULES`` and ``pass``. Expressions:
literals, displays and comprehensions, names, calls (positional and keyword), attributes (not
starting with ``_``), subscripts and slices, comparisons, ``and`` / ``or`` / ``not``, arithmetic
(bounded: no integer past ``MAX_BITS`` bits, no sequence past ``MAX_LENGTH`` items) and ``x if c
else y``. Anything else (``def``, ``try``, ``lambda``, ``while``, ...) makes :func:`parse` raise.
"""

from __future__ import annotations

import ast
import builtins
import math
import operator
import re
import time
from dataclasses import dataclass

from ._plain import NotPlain

MAX_BITS = 1 << 17      # bits of an integer the tests' arithmetic may produce
MAX_LENGTH = 1 << 20    # items of a sequence (or range) the tests' arithmetic may produce


class Failed(Exception):
    """An assert that does not hold, or an error while evaluating the tests."""


class Timeout(Failed):
    """The tests did not end by their deadline."""


class Handle:
    """An object kept in the sandbox, known to the host by its number only."""

    __slots__ = ("number",)

    def __init__(self, number: int):
        self.number = number

    def _refuse(self, *_):
        raise NotPlain("the solution gave an object that is not plain data (None, bool, int, float, complex, "
                       "str, bytes, or list, tuple, set, frozenset, dict of them)")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = __hash__ = _refuse
    __contains__ = __add__ = __radd__ = __mul__ = __rmul__ = __index__ = __int__ = __float__ = _refuse


def _range(*args):
    r = range(*args)
    if len(r) > MAX_LENGTH:
        raise ValueError(f"range of more than {MAX_LENGTH} items")
    return r


def _round(number, ndigits=None):
    if type(ndigits) is int and abs(ndigits) > 1000:  # round(n, -10**9) computes 10**(10**9)
        raise ValueError("round: ndigits past 1000")
    return round(number, ndigits)


def _sum(values, start=0):
    if type(start) not in (int, float, complex):  # sum(lists, []) is quadratic
        raise TypeError("sum: the start value must be a number")
    return sum(values, start)


HOST_NAMES = {name: getattr(builtins, name) for name in (
    "abs", "all", "any", "bool", "chr", "complex", "dict", "divmod", "enumerate", "filter", "float",
    "frozenset", "int", "isinstance", "len", "list", "map", "max", "min", "ord", "repr", "reversed",
    "set", "sorted", "str", "tuple", "type", "zip", "ArithmeticError", "Exception", "TypeError",
    "ValueError")}
HOST_NAMES.update(range=_range, round=_round, sum=_sum)
# module -> the attributes the tests may use (pure, and bounded in time for bounded arguments)
HOST_MODULES = {"math": (math, frozenset(
    "ceil copysign cos degrees dist e exp fabs floor fmod fsum gcd hypot inf isclose isfinite isinf isnan "
    "isqrt lcm log log10 log2 nan pi radians sin sqrt tan tau trunc".split())),
                "re": (re, frozenset("escape findall fullmatch match search split".split()))}

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
           ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitAnd: operator.and_,
           ast.BitOr: operator.or_, ast.BitXor: operator.xor}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_, ast.Invert: operator.invert}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_REFUSED_ATTRIBUTES = frozenset({"format", "format_map"})  # a format string from the solution could ask for any width
_STATEMENTS = (ast.Assert, ast.Assign, ast.Expr, ast.For, ast.Import, ast.ImportFrom, ast.Pass)
_EXPRESSIONS = (ast.Constant, ast.Name, ast.Load, ast.Store, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.Call,
                ast.keyword, ast.Attribute, ast.Subscript, ast.Slice, ast.Compare, ast.BoolOp, ast.And, ast.Or,
                ast.UnaryOp, ast.BinOp, ast.IfExp, ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp,
                ast.comprehension, *_BINOPS, *_UNARY, *_COMPARE)


_SEQUENCE_TYPES = (str, bytes, list, tuple)
# a width or precision taken from the values, or past 9999: '%*d', '%99999d', '%(k).99999f'
_WIDE_FORMAT = re.compile(rb"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d{5}|\d*\.(?:\*|\d{5}))")


def _bounded(op, a, b):
    """``op(a, b)`` refused when it would build an integer past MAX_BITS or a sequence past MAX_LENGTH."""
    if op is ast.Add and isinstance(a, _SEQUENCE_TYPES) and isinstance(b, _SEQUENCE_TYPES) and \
            len(a) + len(b) > MAX_LENGTH:
        raise ValueError(f"{op.__name__}: sequence past {MAX_LENGTH} items")
    if op is ast.Mod and type(a) in (str, bytes) and _WIDE_FORMAT.search(a.encode(errors="replace") if type(a) is str else a):
        raise ValueError("%: field widths past 9999 (or taken from the values) are refused")
    ints = type(a) is int and type(b) is int
    if op is ast.Pow and ints and b > 0 and abs(a) > 1 and a.bit_length() * b > MAX_BITS:
        raise ValueError(f"{op.__name__}: result past {MAX_BITS} bits")
    if op is ast.Mult and ints and a.bit_length() + b.bit_length() > MAX_BITS:
        raise ValueError(f"{op.__name__}: result past {MAX_BITS} bits")
    if op is ast.LShift and ints and a and a.bit_length() + b > MAX_BITS:
        raise ValueError(f"{op.__name__}: result past {MAX_BITS} bits")
    if op is ast.Mult and (type(a) is int) != (type(b) is int) and isinstance(a if type(b) is int else b, _SEQUENCE_TYPES):
        seq, n = (b, a) if type(a) is int else (a, b)
        if len(seq) * n > MAX_LENGTH:
            raise ValueError(f"{op.__name__}: sequence past {MAX_LENGTH} items")
    return _BINOPS[op](a, b)


def _sized(method):
    """``method`` (of a plain value) refusing integer arguments past MAX_LENGTH: ``'x'.ljust(10**10)``,
    ``(1).to_bytes(10**10)`` would allocate that much."""
    if not callable(method):
        return method

    def call(*args, **kwargs):
        if any(type(a) is int and abs(a) > MAX_LENGTH for a in (*args, *kwargs.values())):
            raise ValueError(f"{getattr(method, '__name__', 'method')}: an integer argument past {MAX_LENGTH}")
        return method(*args, **kwargs)
    return call


def _host(value):
    """``value`` unless it is a :class:`Handle` (so it cannot reach the host's operations)."""
    if type(value) is Handle:
        value._refuse()
    return value


@dataclass
class Program:
    """Parsed tests; ``run`` raises :class:`Failed` unless every statement holds."""
    tree: ast.Module
    source: str

    def run(self, remote, deadline: float) -> None:
        _Run(remote, deadline, self.source).block(self.tree.body, {})


def parse(tests: str) -> Program:
    """The tests as a :class:`Program`; raises ``ValueError`` naming the first unsupported construct."""
    try:
        tree = ast.parse(tests, "<tests>")
    except SyntaxError as exc:
        raise ValueError(f"tests: {exc}") from None
    for node in ast.walk(tree):
        line = getattr(node, "lineno", None) or getattr(getattr(node, "target", None), "lineno", "?")
        if isinstance(node, ast.stmt) and not isinstance(node, _STATEMENTS):
            raise ValueError(f"tests, line {line}: {type(node).__name__} statements are not supported")
        if isinstance(node, ast.expr_context) or isinstance(node, (ast.stmt, ast.Module, ast.alias)):
            pass
        elif isinstance(node, (ast.boolop, ast.operator, ast.unaryop, ast.cmpop)) and type(node) not in _EXPRESSIONS:
            raise ValueError(f"tests: the operator {type(node).__name__} is not supported")
        elif not isinstance(node, _EXPRESSIONS):
            raise ValueError(f"tests, line {line}: {type(node).__name__} is not supported")
        if isinstance(node, ast.For) and node.orelse:
            raise ValueError(f"tests, line {line}: for ... else is not supported")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]:
                if name not in HOST_MODULES:
                    raise ValueError(f"tests, line {line}: only {sorted(HOST_MODULES)} can be imported, not {name!r}")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.For, ast.comprehension)) else []
        for target in targets:
            if not all(isinstance(t, (ast.Name, ast.Tuple, ast.List)) for t in ast.walk(target) if isinstance(t, ast.expr)):
                raise ValueError(f"tests, line {line}: only names (and tuples of names) can be assigned to")
        if isinstance(node, ast.Attribute) and (node.attr.startswith("_") or node.attr in _REFUSED_ATTRIBUTES):
            raise ValueError(f"tests, line {line}: attribute {node.attr!r} is refused (names starting with _, "
                             f"{', '.join(sorted(_REFUSED_ATTRIBUTES))})")
        if isinstance(node, ast.Call) and any(isinstance(a, ast.Starred) for a in node.args) or \
                isinstance(node, ast.keyword) and node.arg is None:
            raise ValueError(f"tests, line {line}: *args and **kwargs are not supported")
    return Program(tree, tests)


class _Run:
    def __init__(self, remote, deadline, source):
        self.remote, self.deadline, self.source = remote, deadline, source

    def tick(self):
        if time.monotonic() > self.deadline:
            raise Timeout("the tests did not end in time")

    # ------------------------------------------------------------------ statements
    def block(self, body, env):
        for stmt in body:
            self.tick()
            try:
                self.statement(stmt, env)
            except Failed:
                raise
            except Exception as exc:  # NotPlain, errors of the host's operations, the solution's errors
                raise Failed(f"line {stmt.lineno}: {type(exc).__name__}: {str(exc)[:300]}") from None

    def statement(self, stmt, env):
        if isinstance(stmt, ast.Assert):
            if not _host(self.expr(stmt.test, env)):
                raise Failed(f"line {stmt.lineno}: assertion failed: {ast.get_source_segment(self.source, stmt)}"[:400])
        elif isinstance(stmt, ast.Assign):
            value = self.expr(stmt.value, env)
            for target in stmt.targets:
                self.assign(target, value, env)
        elif isinstance(stmt, ast.Expr):
            self.expr(stmt.value, env)
        elif isinstance(stmt, ast.For):
            for item in _host(self.expr(stmt.iter, env)):
                self.tick()
                self.assign(stmt.target, item, env)
                self.block(stmt.body, env)
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                env[alias.asname or alias.name] = _HostModule(alias.name)
        elif isinstance(stmt, ast.ImportFrom):
            module = _HostModule(stmt.module)
            for alias in stmt.names:
                env[alias.asname or alias.name] = module.get(alias.name)

    def assign(self, target, value, env):
        if isinstance(target, ast.Name):
            env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = list(_host(value))
            if len(values) != len(target.elts):
                raise ValueError(f"cannot unpack {len(values)} values into {len(target.elts)}")
            for t, v in zip(target.elts, values):
                self.assign(t, v, env)
        else:
            raise ValueError(f"cannot assign to {type(target).__name__}")

    # ------------------------------------------------------------------ expressions
    def expr(self, node, env):
        method = getattr(self, "e_" + type(node).__name__)
        return method(node, env)

    def e_Constant(self, node, env):
        return node.value

    def e_Name(self, node, env):
        if node.id in env:
            return env[node.id]
        if node.id in HOST_NAMES:
            return HOST_NAMES[node.id]
        self.tick()
        return self.remote.get(node.id)

    def e_List(self, node, env):
        return [self.expr(e, env) for e in node.elts]

    def e_Tuple(self, node, env):
        return tuple(self.expr(e, env) for e in node.elts)

    def e_Set(self, node, env):
        return {_host(self.expr(e, env)) for e in node.elts}

    def e_Dict(self, node, env):
        if any(k is None for k in node.keys):
            raise ValueError("** in a dict display is not supported")
        return {_host(self.expr(k, env)): self.expr(v, env) for k, v in zip(node.keys, node.values)}

    def e_Attribute(self, node, env):
        base = self.expr(node.value, env)
        if type(base) is Handle:
            self.tick()
            return self.remote.attr(base, node.attr)
        if type(base) is _HostModule:
            return base.get(node.attr)
        return _sized(getattr(base, node.attr))  # a method of a plain value or a host type (names with _ refused)

    def e_Subscript(self, node, env):
        base, key = self.expr(node.value, env), self.expr(node.slice, env)
        if type(base) is Handle:
            self.tick()
            return self.remote.item(base, _host(key))
        return _host(base)[_host(key)]

    def e_Slice(self, node, env):
        part = lambda n: None if n is None else _host(self.expr(n, env))  # noqa: E731
        return slice(part(node.lower), part(node.upper), part(node.step))

    def e_Call(self, node, env):
        fn = self.expr(node.func, env)
        args = [self.expr(a, env) for a in node.args]
        kwargs = {k.arg: self.expr(k.value, env) for k in node.keywords}
        if type(fn) is Handle:
            self.tick()
            return self.remote.call(fn, args, kwargs)
        for value in (*args, *kwargs.values()):
            _host(value)
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        return fn(*args, **kwargs)

    def e_Compare(self, node, env):
        left = _host(self.expr(node.left, env))
        for op, comparator in zip(node.ops, node.comparators):
            right = _host(self.expr(comparator, env))
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True

    def e_BoolOp(self, node, env):
        value = None
        for operand in node.values:
            value = _host(self.expr(operand, env))
            if bool(value) is isinstance(node.op, ast.Or):
                return value
        return value

    def e_UnaryOp(self, node, env):
        operand = _host(self.expr(node.operand, env))
        if isinstance(node.op, ast.Invert) and type(operand) is int and operand.bit_length() > MAX_BITS:
            raise ValueError(f"result past {MAX_BITS} bits")
        return _UNARY[type(node.op)](operand)

    def e_BinOp(self, node, env):
        return _bounded(type(node.op), _host(self.expr(node.left, env)), _host(self.expr(node.right, env)))

    def e_IfExp(self, node, env):
        return self.expr(node.body if _host(self.expr(node.test, env)) else node.orelse, env)

    def comprehension(self, generators, env):
        """Each binding of the comprehension's variables (in a scope of their own), in order."""
        first, rest = generators[0], generators[1:]
        for item in _host(self.expr(first.iter, env)):
            self.tick()
            scope = dict(env)
            self.assign(first.target, item, scope)
            if all(_host(self.expr(cond, scope)) for cond in first.ifs):
                yield from (self.comprehension(rest, scope) if rest else [scope])

    def e_ListComp(self, node, env):
        return [self.expr(node.elt, scope) for scope in self.comprehension(node.generators, env)]

    e_GeneratorExp = e_ListComp  # evaluated at once: all() and any() see the same values

    def e_SetComp(self, node, env):
        return {_host(self.expr(node.elt, scope)) for scope in self.comprehension(node.generators, env)}

    def e_DictComp(self, node, env):
        return {_host(self.expr(node.key, scope)): self.expr(node.value, scope)
                for scope in self.comprehension(node.generators, env)}


class _HostModule:
    """A module of HOST_MODULES as the tests see it: only its listed attributes."""

    def __init__(self, name: str):
        self.module, self.allowed = HOST_MODULES[name]

    def get(self, attr: str):
        if attr not in self.allowed:
            raise AttributeError(f"{self.module.__name__}.{attr} is not available to tests")
        return getattr(self.module, attr)
