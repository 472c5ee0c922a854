"""Python code run against the example's tests in a subprocess, with a timeout and limits.

The child runs in an empty temporary directory, with CPU-time, memory and file-size limits, and an
audit hook that refuses to open files for writing, delete files or start processes. This stops
accidents of generated code (loops, runaway memory, stray files); it is not a security sandbox for
hostile code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

from . import Verdict, register

_RUNNER = r'''
import os, sys
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _guard(event, args):
    if event == "open" and (any(c in (args[1] or "") for c in "wax+") or (args[2] or 0) & _WRITE):
        raise PermissionError("writing files is not allowed")
    if event in ("os.remove", "os.unlink", "os.rmdir", "os.rename", "shutil.rmtree", "os.mkdir",
                 "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                 "subprocess.Popen", "socket.connect"):
        raise PermissionError(f"{event} is not allowed")
sys.addaudithook(_guard)
src = sys.stdin.read()
exec(compile(src, "<solution>", "exec"), {"__name__": "__main__"})
'''


def extract_code(response: str) -> str:
    """The last fenced code block (```python ... ```), or the whole response if there is none."""
    blocks = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", response, flags=re.S)
    return blocks[-1] if blocks else response


def _limits(cpu_seconds: int, memory_mb: int, file_mb: int):
    def apply():
        import resource
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
        os.setsid()
    return apply


@register("code")
def python_tests(response: str, example, timeout: float = 5.0, memory_mb: int = 1024,
                 file_mb: int = 1) -> Verdict:
    """Reward 1 iff the code followed by the tests (``example.meta['tests']``, else the answer:
    Python statements such as ``assert f(2) == 4``) exits cleanly within ``timeout`` seconds."""
    tests = example.meta.get("tests", example.answer)
    if isinstance(tests, list):
        tests = "\n".join(tests)
    code = extract_code(response)
    if not code.strip():
        return Verdict(0.0, "malformed: no code")
    with tempfile.TemporaryDirectory() as tmp:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": tmp, "TMPDIR": tmp, "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", _RUNNER], cwd=tmp, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True,
                                preexec_fn=_limits(int(timeout) + 1, memory_mb, file_mb))
        try:
            _, err = proc.communicate(code + "\n\n" + str(tests) + "\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            return Verdict(0.0, f"timeout after {timeout}s")
    if proc.returncode == 0:
        return Verdict(1.0, "ok")
    lines = err.strip().splitlines()
    return Verdict(0.0, f"failed (exit {proc.returncode}): {lines[-1] if lines else 'killed'}")
