"""Python code run against the example's tests in a bubblewrap sandbox (see README.md here).

Reward 1 only when the runner (``_runner.py``) reports, on a pipe of its own, the per-run random
token that it writes after the last test statement has returned: exit codes, ``sys.exit``,
``os._exit``, exceptions at exit and output count for nothing.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import select
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

from . import Verdict, register
from .sandbox import bwrap_command, check_bwrap, python_executable

SANDBOXES = ("bwrap", "none")
RUNNER = Path(__file__).with_name("_runner.py").read_text()
# Runs RUNNER (argv[1]) with a private copy of the builtins, out of reach of the solution.
STUB = "import builtins, sys; exec(sys.argv[1], {'__builtins__': dict(vars(builtins)), '__name__': 'runner'})"
MAX_PROCS = 64          # processes and threads inside one sandbox
MAX_REASON = 4096       # bytes of the runner's message kept


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


def _read_report(fd: int, timeout: float) -> Optional[bytes]:
    """The first bytes written to ``fd`` once every writer has exited; None at the deadline."""
    report, deadline = b"", time.monotonic() + timeout
    poller = select.poll()  # not select.select: descriptors past 1023 are common in a trainer
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return report
        report = (report + chunk)[:4096]


def _last_line(err) -> str:
    err.seek(max(0, os.fstat(err.fileno()).st_size - MAX_REASON))
    lines = err.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no report: the process ended before the tests did"


def run_tests(code: str, tests: str, timeout: float = 5.0, memory_mb: int = 1024, file_mb: int = 1,
              sandbox: str = "bwrap") -> Verdict:
    """Run ``code`` then ``tests``; reward 1 iff the runner's token arrives (the tests ran to the end)."""
    token = secrets.token_hex(16).encode()
    read_fd, write_fd = os.pipe()
    argv = [python_executable(), "-I", "-S", "-B", "-c", STUB, RUNNER, str(write_fd)]
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
            with contextlib.suppress(BrokenPipeError), proc.stdin:
                source = code.encode(errors="replace")
                proc.stdin.write(b"%s\n%d\n%s%s" % (token, len(source), source, tests.encode(errors="replace")))
            report = _read_report(read_fd, timeout)
        finally:
            os.close(read_fd)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if report is None:
            return Verdict(0.0, f"timeout after {timeout}s")
        if report == token:
            return Verdict(1.0, "ok")
        if report:
            return Verdict(0.0, "failed: something other than the token was written to the report pipe")
        return Verdict(0.0, f"failed: {_last_line(err)}")


@register("code", check=check_sandbox)
def python_tests(response: str, example, timeout: float = 5.0, memory_mb: int = 1024, file_mb: int = 1,
                 sandbox: str = "bwrap") -> Verdict:
    """Reward 1 iff the code followed by the tests (``example.meta['tests']``, else the answer:
    Python statements such as ``assert f(2) == 4``) runs to the end within ``timeout`` seconds."""
    tests = example.meta.get("tests", example.answer)
    if isinstance(tests, list):
        tests = "\n".join(tests)
    code = extract_code(response)
    if not code.strip():
        return Verdict(0.0, "malformed: no code")
    return run_tests(code, str(tests), timeout, memory_mb, file_mb, sandbox)
