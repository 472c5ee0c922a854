"""Python code run against the example's tests: the solution and the tests in two sandboxes.

The host starts two sandboxed processes and receives the verdict only: the solution's process
(``_runner.py``) executes the code and answers requests; the tests' process (``_tests.py``) runs
the tests (assert statements, or stdin/stdout cases) with its own pristine builtins, asking the
solution's process for its names, calls and outputs over two pipes that are the solution's only
channel, and writes the verdict on a third pipe that only it holds. The host evaluates nothing
the solution produced (see README.md here).
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

from . import Verdict, register
from ._plain import NotPlain, dumps, loads
from .sandbox import JAIL, bwrap_command, check_bwrap, python_executable

SANDBOXES = ("bwrap", "none")
_HERE = Path(__file__).parent
_PLAIN = (_HERE / "_plain.py").read_text()
RUNNER = "\n".join([_PLAIN, JAIL, (_HERE / "_runner.py").read_text()])  # the solution's process
TESTS = "\n".join([_PLAIN, JAIL, (_HERE / "_tests.py").read_text()])    # the tests' process
MAX_PROCS = 64          # threads inside one sandbox (the seccomp filter refuses new processes)
MAX_REASON = 4096       # bytes of a process's stderr kept
MAX_VERDICT = 1 << 16   # bytes of the verdict frame


def extract_code(response: str) -> str:
    """The last fenced code block (```python, ```py, ```Python3 or a bare ```), or the whole response."""
    blocks = re.findall(r"```(?:python3?|py)?[ \t]*\n(.*?)```", response, flags=re.S | re.I)
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


class _Expired(Exception):
    """The deadline passed before the verdict came."""


def _wait(fd: int, event: int, deadline: float) -> None:
    poller = select.poll()  # not select.select: descriptors past 1023 are common in a trainer
    poller.register(fd, event)
    left = deadline - time.monotonic()
    if left <= 0 or not poller.poll(left * 1000):
        raise _Expired


def _send(fd: int, message, deadline: float) -> None:
    data = dumps(message)
    data = b"%d\n%s" % (len(data), data)
    os.set_blocking(fd, False)
    while data:
        _wait(fd, select.POLLOUT, deadline)
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            continue


def _receive(fd: int, deadline: float, limit: int):
    """One frame from ``fd`` by ``deadline``; ``EOFError`` if the writer is gone first."""
    data = b""
    while True:
        header, _, rest = data.partition(b"\n")
        if _ and header.isdigit() and int(header) <= limit and len(rest) >= int(header):
            return loads(rest[:int(header)])
        if len(data) > limit + 16 or (_ and not (header.isdigit() and int(header) <= limit)):
            raise NotPlain("malformed verdict")
        _wait(fd, select.POLLIN, deadline)
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise EOFError
        data += chunk


def _last_line(err) -> str:
    err.seek(max(0, os.fstat(err.fileno()).st_size - MAX_REASON))
    lines = err.read().decode(errors="replace").strip().splitlines()
    return f" ({lines[-1]})" if lines else ""


@functools.lru_cache(maxsize=1024)
def parse_tests(tests: str) -> ast.Module:
    """The tests' syntax tree; ``ValueError`` for a syntax error."""
    try:
        return ast.parse(tests, "<tests>")
    except SyntaxError as exc:
        raise ValueError(f"tests: {exc}") from None


@dataclass(frozen=True)
class IOCase:
    """A program's standard input and the standard output expected of it."""
    input: str
    output: str


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use: wall clock ``timeout`` (s), address space ``memory_mb``, file size ``file_mb``."""
    timeout: float = 5.0
    memory_mb: int = 1024
    file_mb: int = 1
    sandbox: str = "bwrap"

    def rlimits(self) -> str:
        limits = {"CPU": math.ceil(self.timeout) + 1, "AS": self.memory_mb << 20, "FSIZE": self.file_mb << 20,
                  "NOFILE": 64, "CORE": 0}
        if self.sandbox == "bwrap":
            limits["NPROC"] = MAX_PROCS  # counted per user namespace: only the sandbox's own processes
        return ",".join(f"{k}={v}" for k, v in limits.items())


def run_tests(code: str, tests: str, timeout: float = 5.0, memory_mb: int = 1024, file_mb: int = 1,
              sandbox: str = "bwrap") -> Verdict:
    """Reward 1 iff the Python ``tests`` (assert statements, ``unittest``...), run in their own sandbox
    against the solution ``code`` in another, end without an error within ``timeout`` seconds."""
    parse_tests(tests)
    return _two_sandboxes(["asserts", code, tests], Limits(timeout, memory_mb, file_mb, sandbox))


def run_io(code: str, cases: list, timeout: float = 5.0, memory_mb: int = 1024, file_mb: int = 1,
           sandbox: str = "bwrap") -> Verdict:
    """Reward 1 iff the program ``code``, run once per :class:`IOCase`, prints each case's output
    (compared line by line, trailing whitespace ignored) for its input, all within ``timeout`` seconds."""
    cases = [[case.input, case.output] for case in cases]
    return _two_sandboxes(["io", code, cases], Limits(timeout, memory_mb, file_mb, sandbox))


def _start(script: str, args: list, stdin, fds: tuple, err, tmp: str, limits: Limits) -> subprocess.Popen:
    mounts = "mounts" if limits.sandbox == "bwrap" else "no-mounts"  # _jail.jail's bounded tmpfs need the sandbox
    argv = [python_executable(), "-I", "-S", "-B", "-c", script, *map(str, args), limits.rlimits(), mounts]
    if limits.sandbox == "bwrap":
        argv, env, cwd = bwrap_command(argv, check_bwrap()), {}, None
    else:
        env, cwd = {"PATH": os.defpath, "HOME": tmp, "TMPDIR": tmp}, tmp
    return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err, pass_fds=fds, env=env,
                            cwd=cwd, start_new_session=True)


def _two_sandboxes(job: list, limits: Limits) -> Verdict:
    """Start the solution's and the tests' processes, send the tests' process ``job`` and wait for
    its verdict until ``limits.timeout`` has passed since the start; both are killed at the end."""
    deadline = time.monotonic() + limits.timeout
    to_solution, from_solution, verdict = os.pipe(), os.pipe(), os.pipe()
    processes = []
    with tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as tmp:
        try:
            solution_tmp = os.path.join(tmp, "solution")
            os.mkdir(solution_tmp)
            processes.append(_start(RUNNER, [from_solution[1]], to_solution[0], (from_solution[1],), err,
                                    solution_tmp, limits))
            fds = (to_solution[1], from_solution[0], verdict[1])
            processes.append(_start(TESTS, fds, subprocess.PIPE, fds, err, tmp, limits))
            for fd in (*to_solution, *from_solution, verdict[1]):
                os.close(fd)
            to_solution = from_solution = ()
            _send(processes[1].stdin.fileno(), job, deadline)
            answer = _receive(verdict[0], deadline, MAX_VERDICT)
        except _Expired:
            return Verdict(0.0, f"timeout after {limits.timeout}s")
        except (EOFError, BrokenPipeError, NotPlain):
            return Verdict(0.0, f"failed: the tests' process ended without a verdict{_last_line(err)}")
        finally:
            for fd in (*to_solution, *from_solution, verdict[0]):
                os.close(fd)
            for proc in processes:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if proc.stdin is not None:
                    proc.stdin.close()
    if answer == ["ok"]:
        return Verdict(1.0, "ok")
    if type(answer) is list and len(answer) == 2 and answer[0] == "failed" and type(answer[1]) is str:
        return Verdict(0.0, f"failed: {answer[1][:600]}")
    return Verdict(0.0, "failed: malformed verdict")


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
    tree = parse_tests(tests)
    if not any(isinstance(node, ast.Assert) or isinstance(node, ast.Call) and
               getattr(node.func, "attr", getattr(node.func, "id", "")).startswith("assert") for node in ast.walk(tree)):
        raise ValueError("tests: no assert statement (or assert... call), so they could not fail")
    return tests


def check_row(example, **_) -> None:
    tests_of(example)


@register("code", check=check_sandbox, row=check_row)
def python_tests(response: str, example, timeout: float = 5.0, memory_mb: int = 1024, file_mb: int = 1,
                 sandbox: str = "bwrap") -> Verdict:
    """Reward 1 iff the tests (``example.meta['tests']``, else the answer) hold for the response's code
    within ``timeout`` seconds: Python such as ``assert f(2) == 4`` (a string, or a list of strings;
    ``unittest`` too), or a list of ``{"input": ..., "output": ...}`` cases for a program that reads stdin."""
    tests = tests_of(example)
    code = extract_code(response)
    if not code.strip():
        return Verdict(0.0, "malformed: no code")
    if isinstance(tests, list):
        return run_io(code, tests, timeout, memory_mb, file_mb, sandbox)
    return run_tests(code, tests, timeout, memory_mb, file_mb, sandbox)
