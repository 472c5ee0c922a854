"""The tests' process of the code verifier, run in its own sandbox after ``_plain.py``'s source.

argv: ``TO_SOLUTION_FD FROM_SOLUTION_FD VERDICT_FD LIMITS MOUNTS`` (as ``_runner.py``'s). The host sends one frame on stdin:
``["asserts", code, tests]`` (``tests`` is Python source) or ``["io", code, [[input, output], ...]]``.
This process starts the solution (``_runner.py``, another sandbox) by sending it the code, runs the
tests against it, and writes the verdict, ``["ok"]`` or ``["failed", reason]``, on ``VERDICT_FD``,
which only this process holds: the solution's process has the two request pipes and nothing else.

The tests run here with this interpreter's own builtins and modules, which the solution never
touches. A name the tests use that is neither theirs nor a builtin is the solution's global: looking
it up is a request, and so is every call of, attribute or item of, iteration over, ``len``,
``bool``, ``str`` or ``repr`` of what comes back when it is not plain data (a :class:`Handle`).
Equality, ordering, hashing, ``in`` (which iterates, comparing here) and arithmetic of a handle are
this process's (identity; no arithmetic), never the solution's: the solution's object never sees
the value it is compared with. Calls are by value-result: plain arguments travel
as values, and a list, dict or set argument that the call changed is updated in place here from the
solution's copy afterwards.
"""

import builtins
import os
import resource
import sys

MAX_REPLY = 1 << 24  # bytes of one answer of the solution's process
_handles = {}


class SolutionError(Exception):
    """What the solution raised (when it is not a builtin exception), or why its process ended."""


def _raise(kind, message):
    cls = getattr(builtins, kind, None) if type(kind) is str else None
    if isinstance(cls, type) and issubclass(cls, Exception) and cls is not StopIteration:
        raise cls(message)
    raise SolutionError(f"{kind}: {message}")


def _plain_argument(value):
    return value._number if type(value) is Handle else None


def _handle(number):
    if type(number) is not int:
        raise NotPlain("malformed handle")
    return _handles.setdefault(number, Handle(number))


def _request(*message, updates_into=None):
    global _solution
    if _solution is None:
        raise SolutionError("the channel to the solution is closed after a malformed answer")
    try:
        _solution.send(list(message))
        reply = _solution.receive()
    except (EOFError, OSError):
        raise SolutionError("the solution's process ended") from None
    except NotPlain:  # an oversized or malformed frame: what follows it is not to be read as answers
        _solution = None
        raise
    if type(reply) is list and len(reply) == 3 and reply[0] == "value" and type(reply[2]) is list:
        value = decode(reply[1], _handle)
        if updates_into is not None:
            for key, new in reply[2]:
                _copy_back(updates_into(key), decode(new, _handle))
        return value
    if reply == ["stop"] and message[0] == "next":
        raise StopIteration
    if type(reply) is list and len(reply) == 3 and reply[0] == "error" and type(reply[2]) is str:
        _raise(reply[1], reply[2])
    raise NotPlain("malformed answer")


def _copy_back(target, new):
    """Make ``target`` (an argument of the tests) equal to the solution's copy ``new``, in place."""
    if type(target) is not type(new) or type(target) not in (list, dict, set):
        raise NotPlain("malformed update")
    if type(target) is list:
        target[:] = new
    else:
        target.clear()
        target.update(new)


def _typed(value, kind):
    if type(value) is not kind:
        raise TypeError(f"the solution gave a {type(value).__name__}, not a {kind.__name__}")
    return value


class Handle:
    """An object of the solution's process, known here by its number."""

    __slots__ = ("_number",)

    def __init__(self, number):
        object.__setattr__(self, "_number", number)

    def __call__(self, *args, **kwargs):
        try:
            plain_args = [encode(a, _plain_argument) for a in args]
            plain_kwargs = {k: encode(v, _plain_argument) for k, v in kwargs.items()}
        except NotPlain as exc:
            raise TypeError(f"only plain data and the solution's own objects can be passed to it ({exc})") from None
        lookup = lambda key: args[key] if type(key) is int and 0 <= key < len(args) else kwargs[key]  # noqa: E731
        return _request("call", self._number, plain_args, plain_kwargs, updates_into=lookup)

    def __getattr__(self, name):
        return _request("attr", self._number, name)

    def __setattr__(self, name, value):
        raise TypeError("the tests cannot set attributes of the solution's objects")

    def __getitem__(self, key):
        return _request("item", self._number, encode(key, _plain_argument))

    def __iter__(self):
        return _request("iter", self._number)

    def __next__(self):
        return _request("next", self._number)

    def __len__(self):
        return _typed(_request("len", self._number), int)

    def __bool__(self):
        return _typed(_request("bool", self._number), bool)

    def __str__(self):
        return _typed(_request("str", self._number), str)

    def __repr__(self):
        return _typed(_request("repr", self._number), str)


class _Names(dict):
    """The tests' builtins: this interpreter's own, then the solution's globals."""

    def __missing__(self, name):
        return _request("get", name)


def _line(tb):
    """The line of the tests where the exception of traceback ``tb`` went through last."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<tests>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _source_line(source, number):
    lines = source.splitlines()
    return lines[number - 1].strip() if number and number <= len(lines) else ""


def run_asserts(tests):
    module = type(sys)("__main__")  # the module unittest.main() and pickle look in
    module.__builtins__ = _Names(vars(builtins))
    sys.modules["__main__"] = module
    try:
        exec(compile(tests, "<tests>", "exec"), module.__dict__)
    except SystemExit as exc:  # unittest.main() and friends: exit status 0 means every test passed
        if exc.code not in (None, 0):
            return f"the tests exited with status {exc.code!r}"[:300]
    except BaseException as exc:  # noqa: B902
        number = _line(exc.__traceback__)
        where = f"line {number}: " if number else ""
        if type(exc) is AssertionError and not str(exc):
            return f"{where}assertion failed: {_source_line(tests, number)}"[:400]
        return f"{where}{type(exc).__name__}: {str(exc)[:300]}"
    return None


def same_output(got, expected):
    """Equal line by line, ignoring trailing whitespace on each line and trailing empty lines."""
    def lines(text):
        out = [line.rstrip() for line in text.splitlines()]
        while out and not out[-1]:
            out.pop()
        return out
    return lines(got) == lines(expected)


def run_io(cases):
    for number, (stdin, expected) in enumerate(cases, 1):
        try:
            got = _typed(_request("run", stdin), str)
        except BaseException as exc:  # noqa: B902
            return f"case {number}: {type(exc).__name__}: {str(exc)[:300]}"
        if not same_output(got, expected):
            return f"case {number}: wrong output"
    return None


def main():
    global _solution
    to_solution, from_solution, verdict_fd = map(int, sys.argv[-5:-2])
    jail(sys.argv[-1] == "mounts")
    for item in sys.argv[-2].split(","):
        name, value = item.split("=")
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(value), int(value)))
    sys.argv = ["tests"]  # unittest.main() reads its options from here
    verdict = Channel(-1, verdict_fd, 0)
    kind, code, tests = Channel(0, -1, 1 << 30).receive()
    _solution = Channel(from_solution, to_solution, MAX_REPLY)
    try:
        _solution.send(["module" if kind == "asserts" else "program", code])
        started = _solution.receive()
    except (EOFError, OSError, NotPlain) as exc:
        started = ["error", "SolutionError", f"the solution's process ended ({type(exc).__name__})"]
    if started != ["ready"]:
        message = f"{started[1]}: {started[2]}" if type(started) is list and len(started) == 3 else "?"
        verdict.send(["failed", f"the solution did not run: {message}"[:600]])
    else:
        failure = run_asserts(tests) if kind == "asserts" else run_io(tests)
        verdict.send(["ok"] if failure is None else ["failed", failure])
    os._exit(0)


main()
