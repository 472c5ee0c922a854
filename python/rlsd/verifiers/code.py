"""Python code run against the example's tests: the solution in a bubblewrap sandbox, the tests on the host.

The runner (``_runner.py``) executes the solution in the sandbox and answers requests over two
pipes; assert-style tests are evaluated here (``judge``) on the plain values that come back, and
stdin/stdout cases are compared here with the program's output, so the verdict rests on nothing
the solution controls (see README.md here).
"""

from __future__ import annotations

import ast
import functools
import math
import os
import re
import select
import signal
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import Verdict, judge, register
from ._plain import NotPlain, decode, dumps, encode, loads
from .sandbox import bwrap_command, check_bwrap, python_executable

SANDBOXES = ("bwrap", "none")
_HERE = Path(__file__).parent
RUNNER = (_HERE / "_plain.py").read_text() + "\n" + (_HERE / "_runner.py").read_text()
MAX_PROCS = 64          # processes and threads inside one sandbox
MAX_REASON = 4096       # bytes of the runner's stderr kept
MAX_REPLY = 1 << 20     # bytes of one answer of the runner (a returned value)


def extract_code(response: str) -> str:
    """The last fenced code block (```python ... ```), or the whole response if there is none."""
    blocks = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", response, flags=re.S)
    return blocks[-1] if blocks else response


def check_sandbox(sandbox: str = "bwrap", **_) -> None:
    """Fail now, not on the first response, when the sandbox cannot run; warn loudly without one."""
    if sandbox not in SANDBOXES:
        raise ValueError(f"sandbox must be one of {SANDBOXES}, got {sandbox!r}")
    if sandbox == "bwrap":
        check_bwrap()
    else:
        warnings.warn("code verifier: sandbox='none' runs generated code UNSANDBOXED with your user's "
                      "rights on this host (files, network, processes); use only with trusted code",
                      RuntimeWarning, stacklevel=3)


class SolutionError(Exception):
    """What the solution raised (or why its process ended), as a test's failure."""


def _reference(value):
    return value.number if type(value) is judge.Handle else None


class _Remote:
    """The runner's process as the tests' ``remote``: one frame each way per request, within ``deadline``."""

    def __init__(self, to_runner: int, from_runner: int, deadline: float):
        self.to_runner, self.from_runner, self.deadline = to_runner, from_runner, deadline
        self.buffer = b""
        os.set_blocking(to_runner, False)

    def _wait(self, fd: int, event: int) -> None:
        poller = select.poll()  # not select.select: descriptors past 1023 are common in a trainer
        poller.register(fd, event)
        left = self.deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise judge.Timeout("no answer in time")

    def send(self, message) -> None:
        data = dumps(message)
        data = b"%d\n%s" % (len(data), data)
        while data:
            self._wait(self.to_runner, select.POLLOUT)
            try:
                data = data[os.write(self.to_runner, data):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise SolutionError("the solution's process ended") from None

    def _read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._wait(self.from_runner, select.POLLIN)
            chunk = os.read(self.from_runner, 1 << 16)
            if not chunk:
                raise SolutionError("the solution's process ended")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def receive(self):
        header = b""
        while not header.endswith(b"\n"):
            header += self._read(1)
            if len(header) > 12:
                raise SolutionError("malformed answer")
        size = int(header) if header[:-1].isdigit() else -1
        if not 0 <= size <= MAX_REPLY:
            raise SolutionError(f"an answer longer than {MAX_REPLY} bytes, or malformed")
        return loads(self._read(size))

    def request(self, *message):
        self.send(list(message))
        reply = self.receive()
        if type(reply) is list and len(reply) == 2 and reply[0] == "value":
            return decode(reply[1])
        if type(reply) is list and len(reply) == 2 and reply[0] == "handle" and type(reply[1]) is int:
            return judge.Handle(reply[1])
        if type(reply) is list and len(reply) == 2 and reply[0] == "error" and type(reply[1]) is str:
            raise SolutionError(reply[1][:500])
        raise NotPlain("malformed answer")

    def get(self, name: str):
        return self.request("get", name)

    def attr(self, handle: judge.Handle, name: str):
        return self.request("attr", handle.number, name)

    def item(self, handle: judge.Handle, key):
        return self.request("item", handle.number, encode(key))

    def call(self, handle: judge.Handle, args: list, kwargs: dict):
        """Handles may be passed as whole arguments; anything else must be plain data."""
        return self.request("call", handle.number, [encode(a, _reference) for a in args],
                            {k: encode(v, _reference) for k, v in kwargs.items()})


def _last_line(err) -> str:
    err.seek(max(0, os.fstat(err.fileno()).st_size - MAX_REASON))
    lines = err.read().decode(errors="replace").strip().splitlines()
    return f" ({lines[-1]})" if lines else ""


@functools.lru_cache(maxsize=1024)
def parse_tests(tests: str) -> judge.Program:
    return judge.parse(tests)


@dataclass(frozen=True)
class IOCase:
    """A program's standard input and the standard output expected of it."""
    input: str
    output: str


def same_output(got: str, expected: str) -> bool:
    """Equal line by line, ignoring trailing whitespace on each line and trailing empty lines."""
    def lines(text):
        out = [line.rstrip() for line in text.splitlines()]
        while out and not out[-1]:
            out.pop()
        return out
    return lines(got) == lines(expected)


def _check_io(cases: list, remote: _Remote, deadline: float) -> None:
    for number, case in enumerate(cases, 1):
        got = remote.request("run", case.input)
        if type(got) is not str:
            raise judge.Failed(f"case {number}: the output is not text")
        if not same_output(got, case.output):
            raise judge.Failed(f"case {number}: wrong output")


def run_tests(code: str, tests: str, timeout: float = 5.0, memory_mb: int = 1024, file_mb: int = 1,
              sandbox: str = "bwrap") -> Verdict:
    """Reward 1 iff every statement of ``tests``, evaluated here on what the solution ``code`` returns
    in the sandbox, holds within ``timeout`` seconds. Tests that :mod:`judge` cannot run raise ``ValueError``."""
    return _in_sandbox("module", code, parse_tests(tests).run, timeout, memory_mb, file_mb, sandbox)


def run_io(code: str, cases: list, timeout: float = 5.0, memory_mb: int = 1024, file_mb: int = 1,
           sandbox: str = "bwrap") -> Verdict:
    """Reward 1 iff the program ``code``, run once per :class:`IOCase` in the sandbox, prints each case's
    output (:func:`same_output`, compared here) for its input, all within ``timeout`` seconds."""
    return _in_sandbox("program", code, functools.partial(_check_io, cases), timeout, memory_mb, file_mb, sandbox)


def _in_sandbox(kind: str, code: str, check, timeout: float, memory_mb: int, file_mb: int, sandbox: str) -> Verdict:
    """Start the runner on ``code`` (``kind``: ``module`` or ``program``) and run ``check(remote, deadline)``."""
    deadline = time.monotonic() + timeout
    read_fd, write_fd = os.pipe()
    argv = [python_executable(), "-I", "-S", "-B", "-c", RUNNER, str(write_fd)]
    limits = {"CPU": math.ceil(timeout) + 1, "AS": memory_mb << 20, "FSIZE": file_mb << 20, "NOFILE": 64,
              "CORE": 0}
    if sandbox == "bwrap":
        limits["NPROC"] = MAX_PROCS  # counted per user namespace: only the sandbox's own processes
    argv += [",".join(f"{k}={v}" for k, v in limits.items())]
    with tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as tmp:
        if sandbox == "bwrap":
            argv, env, cwd = bwrap_command(argv, check_bwrap()), {}, None
        else:
            env, cwd = {"PATH": os.defpath, "HOME": tmp, "TMPDIR": tmp}, tmp
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                    pass_fds=(write_fd,), env=env, cwd=cwd, start_new_session=True)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        try:
            runner = _Remote(proc.stdin.fileno(), read_fd, deadline)
            runner.send([kind, code])
            started = runner.receive()
            if started != ["ready"]:
                error = started[1] if type(started) is list and len(started) == 2 and type(started[1]) is str else "?"
                return Verdict(0.0, f"failed: the solution did not run: {error[:500]}")
            check(runner, deadline)
        except judge.Timeout:
            return Verdict(0.0, f"timeout after {timeout}s")
        except judge.Failed as exc:
            return Verdict(0.0, f"failed: {exc}")
        except (SolutionError, NotPlain) as exc:
            return Verdict(0.0, f"failed: {exc}{_last_line(err)}")
        finally:
            os.close(read_fd)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdin.close()
        return Verdict(1.0, "ok")


def tests_of(example):
    """The example's tests: a list of :class:`IOCase`, or assert-style source. Raises ``ValueError``
    for tests that could not fail (none, no ``assert``) or are malformed."""
    tests = example.meta.get("tests", example.answer)
    if isinstance(tests, list) and tests and all(isinstance(t, dict) for t in tests):
        if not all(set(t) == {"input", "output"} and all(isinstance(v, str) for v in t.values()) for t in tests):
            raise ValueError("tests: each stdin/stdout case needs exactly the keys 'input' and 'output', strings")
        return [IOCase(t["input"], t["output"]) for t in tests]
    if isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests):
        tests = "\n".join(tests)
    if not isinstance(tests, str):
        raise ValueError("tests: expected assert statements (a string or a list of strings) or a non-empty list of "
                         f"{{'input': ..., 'output': ...}} cases, got {type(tests).__name__} {str(tests)[:60]!r}")
    program = parse_tests(tests)
    if not any(isinstance(node, ast.Assert) for node in ast.walk(program.tree)):
        raise ValueError("tests: no assert statement, so they could not fail")
    return tests


def check_row(example, **_) -> None:
    tests_of(example)


@register("code", check=check_sandbox, row=check_row)
def python_tests(response: str, example, timeout: float = 5.0, memory_mb: int = 1024, file_mb: int = 1,
                 sandbox: str = "bwrap") -> Verdict:
    """Reward 1 iff the tests (``example.meta['tests']``, else the answer) hold for the response's code
    within ``timeout`` seconds: statements such as ``assert f(2) == 4`` (a string, or a list of
    strings), or a list of ``{"input": ..., "output": ...}`` cases for a program that reads stdin."""
    tests = tests_of(example)
    code = extract_code(response)
    if not code.strip():
        return Verdict(0.0, "malformed: no code")
    if isinstance(tests, list):
        return run_io(code, tests, timeout, memory_mb, file_mb, sandbox)
    return run_tests(code, tests, timeout, memory_mb, file_mb, sandbox)
