"""Responses that try to earn reward without solving the task, or to reach the host.

Each hostile response would be correct if its trick worked (it defines the right ``f`` only when it
escapes, fakes the end of the tests, or makes the tests' own names and objects lie), so reward 0
shows that the trick failed; the host checks (files, listeners, this process, its memory) show that
nothing leaked out.
"""

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer_helpers import needs_bwrap

from rlsd.data import Example
from rlsd.verifiers import make_verifier, verify
from rlsd.verifiers.sandbox import SHM_SIZE, TMP_SIZE


PROJECT = Path(__file__).resolve().parents[2]
TESTS = "assert f(2) == 4\nassert f(5) == 10"
GOOD = "def f(x):\n    return 2 * x\n"
BAD = "def f(x):\n    return 0\n"


def ex(answer, **meta):
    return Example(prompt="q", answer=answer, meta=meta)


@pytest.fixture(scope="module")
def code():
    """The verifier as attacks meet it (short timeout: they earn 0 either way)."""
    v = make_verifier("code", timeout=3.0)
    return lambda response, tests=TESTS: v(response, ex(tests))


@pytest.fixture(scope="module")
def patient():
    """The verifier with a timeout long enough for a loaded machine, for responses that must pass."""
    v = make_verifier("code", timeout=30.0)
    return lambda response, tests=TESTS: v(response, ex(tests))


def if_escaped(condition: str) -> str:
    """A solution that is right only when ``condition`` (Python, evaluated in the sandbox) holds."""
    return f"try:\n    escaped = bool({condition})\nexcept BaseException:\n    escaped = False\n" \
           f"if escaped:\n    def f(x):\n        return 2 * x\n"


# ---------------------------------------------------------------- faking the end of the tests
SQRT = "import math\nassert math.sqrt(f(2)) == 4"  # f returns 0: passes only if sqrt is faked
JUMP = """import sys
def local(frame, event, arg):
    if event == 'line' and frame.f_lineno == 1:
        frame.f_lineno = 3
    return local
sys.settrace(lambda frame, event, arg: local if frame.f_code.co_filename == '<tests>' else None)
"""
FAKED_ENDS = {  # name: (solution, tests); each would pass if its trick worked
    "sys.exit before the tests": (BAD + "import sys\nsys.exit(0)", TESTS),
    "os._exit before the tests": (BAD + "import os\nos._exit(0)", TESTS),
    "SystemExit from f": ("def f(x):\n    raise SystemExit(0)", TESTS),
    "KeyboardInterrupt from f": ("def f(x):\n    raise KeyboardInterrupt", TESTS),
    "atexit exits cleanly": (BAD + "import atexit, os\natexit.register(os._exit, 0)", TESTS),
    "excepthook swallows the failure": (BAD + "import sys\nsys.excepthook = lambda *a: None", TESTS),
    "os._exit inside f": ("import os\ndef f(x):\n    os._exit(0)", TESTS),
    "kill the runner": ("import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGKILL)", TESTS),
    "interrupt the runner's main thread": ("import _thread, time\ndef f(x):\n    _thread.interrupt_main()\n"
                                           "    time.sleep(0.5)\n    return 0", TESTS),
    "redefine a builtin the tests use": ("import builtins\nbuiltins.len = lambda x: 3\ndef f(x):\n    return []",
                                         "assert len(f(3)) == 3"),
    "override __import__": ("import builtins, types\nreal = builtins.__import__\nfake = types.ModuleType('math')\n"
                            "fake.sqrt = lambda x: 4\nbuiltins.__import__ = lambda n, *a, **k: fake if n == 'math' "
                            "else real(n, *a, **k)\n" + BAD, SQRT),
    "patch a module the tests use": ("import math\nmath.sqrt = lambda x: 4\n" + BAD, SQRT),
    "replace a module in sys.modules": ("import sys, types\nm = types.ModuleType('math')\nm.sqrt = lambda x: 4\n"
                                        "sys.modules['math'] = m\n" + BAD, SQRT),
    "patch a module while the tests run": ("def f(x):\n    import math\n    math.sqrt = lambda x: 4\n    return 0",
                                           "import math\nf(2)\nassert math.sqrt(0) == 4"),
    "sys.settrace jumps over the tests": (JUMP + BAD, TESTS + "\npass"),
    "threading.settrace": (BAD + "import threading\nthreading.settrace(lambda *a: None)\n"
                                 "threading.Thread(target=int).start()", TESTS),
    "sys.setprofile": (BAD + "import sys\nsys.setprofile(lambda *a: None)", TESTS),
    "builtins rebound as the solution's globals": (
        "len = lambda o: 4\nsorted = lambda o: [1, 2]\nall = lambda o: True\nabs = lambda o: 0\n"
        "isinstance = lambda o, t: True\ndef f(x):\n    return 'no'",
        "assert len(f(2)) == 4\nassert sorted(f(2)) == [1, 2]\nassert all(f(2))\nassert abs(f(2)) == 0\n"
        "assert isinstance(f(2), int)"),
    "type rebound to defeat a type check": ("type = lambda o: int\ndef f(x):\n    return 'x'",
                                            "assert type(f(2)) is int"),
    "an object equal to everything": ("class A:\n    __eq__ = lambda s, o: True\ndef f(x):\n    return A()", TESTS),
    "an int subclass equal to everything": ("class I(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\n"
                                            "def f(x):\n    return I(0)", TESTS),
    "re._cache poisoned": ("import re\nre._cache[str, r'\\d+', 0] = re.compile('.*')\ndef f(x):\n    return 'no digits'",
                           "import re\nassert re.fullmatch(r'\\d+', f(2))"),
}


@pytest.mark.parametrize("name", ["redefine a builtin the tests use", "patch a module the tests use",
                                  "sys.settrace jumps over the tests", "replace a module in sys.modules",
                                  "override __import__", "builtins rebound as the solution's globals",
                                  "type rebound to defeat a type check", "an object equal to everything",
                                  "an int subclass equal to everything", "re._cache poisoned"])
def test_the_tricks_work_in_plain_python(name):
    """The tricks are real: solution then tests in one plain interpreter pass."""
    assert passes_in_plain_python(*FAKED_ENDS[name])


def passes_in_plain_python(solution: str, tests: str) -> bool:
    driver = "import sys\nns = {}\nexec(compile(sys.argv[1], '<solution>', 'exec'), ns)\n" \
             "exec(compile(sys.argv[2], '<tests>', 'exec'), ns)"
    return subprocess.run([sys.executable, "-c", driver, solution, tests], capture_output=True).returncode == 0


@needs_bwrap
@pytest.mark.parametrize("name", sorted(FAKED_ENDS))
def test_faked_end_of_tests_earns_nothing(code, name):
    verdict = code(*FAKED_ENDS[name])
    assert verdict.reward == 0.0 and not verdict.reason.startswith("verifier error"), verdict


def test_host_state_is_untouched_by_the_tricks():
    """The tricks above reach neither the tests' process nor this one: its names, modules and regex cache."""
    import re
    assert re.fullmatch(r"\d+", "no digits") is None and len([1]) == 1 and type("x") is str


def dotted(module: str) -> str:
    """A solution that loads ``module``'s extension as ``x.<module>`` (the name's first part is ``x``)."""
    return ("import _imp, importlib.machinery, os, sys\nd = [p for p in sys.path if p.endswith('lib-dynload')][0]\n"
            f"so = [n for n in os.listdir(d) if n.startswith('{module}.')][0]\n"
            f"m = _imp.create_dynamic(importlib.machinery.ModuleSpec('x.{module}', None, origin=os.path.join(d, so)))\n")


FORGERS = {
    "write candidate tokens to every descriptor":
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'0' * 32)\n    except OSError:\n"
        "        pass\nos._exit(0)",
    "read frames for the token":
        "import sys, os\ndef f(x):\n    fr = sys._getframe(1)\n    while fr:\n"
        "        for v in fr.f_locals.values():\n            if isinstance(v, bytes):\n"
        "                for fd in range(3, 64):\n                    try: os.write(fd, v)\n"
        "                    except OSError: pass\n        fr = fr.f_back\n    os._exit(0)",
    "frames through a traceback":
        "import os\ndef f(x):\n    try:\n        raise ValueError\n    except ValueError as e:\n"
        "        fr = e.__traceback__.tb_frame.f_back\n    os._exit(0)",
    "ctypes":
        "import ctypes\nctypes.CDLL(None).write(3, b'x', 1)\n" + GOOD,
    "fork and guess in several processes":
        "import os\ndef f(x):\n    for guess in range(20):\n        if os.fork() == 0:\n            return guess\n"
        "    os._exit(0)",
    "a second interpreter reads the token":
        "import subprocess\nsubprocess.run(['python3', '-c', 'pass'])\n" + GOOD,
    "native code from a file the solution wrote":
        "import _imp, importlib.machinery, os, shutil, sys\n"
        "d = [p for p in sys.path if p.endswith('lib-dynload')][0]\n"
        "so = [n for n in os.listdir(d) if n.startswith('array.')][0]\n"
        "shutil.copy(os.path.join(d, so), '/tmp/' + so)\n"
        "_imp.create_dynamic(importlib.machinery.ModuleSpec('array', None, origin='/tmp/' + so))\n" + GOOD,
    "ctypes' extension loaded under its own name":
        "import _imp, importlib.machinery, os, sys\nd = [p for p in sys.path if p.endswith('lib-dynload')][0]\n"
        "so = [n for n in os.listdir(d) if n.startswith('_ctypes.')][0]\n"
        "m = _imp.create_dynamic(importlib.machinery.ModuleSpec('_ctypes', None, origin=os.path.join(d, so)))\n"
        "m.dlopen(None)\n" + GOOD,
    "ctypes' extension under a dotted name (initialised from the last part)": dotted("_ctypes") + "m.dlopen(None)\n" + GOOD,
    "_posixsubprocess under a dotted name runs /bin/sh": dotted("_posixsubprocess") +
        "import os\nr, w = os.pipe()\nm.fork_exec([b'/bin/sh', b'-c', b'exit 0'], [b'/bin/sh'], True, (w,), None, None,"
        " -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)\n" + GOOD,
    "a test module's extension": dotted("_testcapi") + GOOD,
    # the verdict is the tests' process's: frames the solution writes reach it as answers at most
    "a verdict frame on every descriptor": "import os\nfor fd in range(64):\n    try:\n        os.write(fd, b'6\\n[\"ok\"]')\n"
                                           "    except OSError:\n        pass\n" + BAD,
    "a verdict frame as the answer": "import os, sys\ndef f(x):\n    os.write(3, b'6\\n[\"ok\"]')\n"
                                     "    sys.stdout.write('6\\n[\"ok\"]')\n    os._exit(0)",
    "a reply followed by a forged frame": "import os\ndef f(x):\n    os.write(4, b'13\\n[\"value\",4,[]]')\n    return 0",
    "an oversized answer hiding frames": "def f(x):\n    return ('24\\n[\"value\",4,[]]' * 10) * (1 << 17)",
}


@pytest.mark.parametrize("name", [n for n in FORGERS if "dotted" in n or "test module" in n])
def test_the_dotted_loads_work_in_plain_python(name):
    """The loads are real: without the runner's audit hook each one succeeds (and /bin/sh runs)."""
    run = subprocess.run([sys.executable, "-I", "-c", FORGERS[name] + "assert f(2) == 4"], capture_output=True)
    assert run.returncode == 0, run.stderr


@needs_bwrap
@pytest.mark.parametrize("name", sorted(FORGERS))
def test_forging_the_report_earns_nothing(code, name):
    verdict = code(FORGERS[name])
    assert verdict.reward == 0.0, verdict


# ---------------------------------------------------------------- reaching the host
@needs_bwrap
def test_project_home_etc_and_host_tmp_are_invisible(code, tmp_path):
    sentinel = tmp_path / "host-only"
    sentinel.write_text("x")
    home_files = sorted(set(os.listdir(Path.home())) - {".pyenv"})[:1] or [".no-such-file"]
    for path in [PROJECT / "README.md", sentinel, Path.home() / home_files[0], "/etc/passwd", "/proc/1/environ",
                 Path.home() / ".ssh"]:
        verdict = code(if_escaped(f"__import__('os').path.exists({str(path)!r})"))
        assert verdict.reward == 0.0, (path, verdict)


@needs_bwrap
def test_writes_stay_in_the_sandbox(code, tmp_path):
    target = tmp_path / "written"
    in_tmp = Path("/tmp") / f"rlsd-attack-{os.getpid()}"
    for path in (target, in_tmp, PROJECT / "written-by-solution"):
        write = f"try:\n    open({str(path)!r}, 'w').write('x')\nexcept OSError:\n    pass\n"
        verdict = code(write + if_escaped(f"__import__('os').path.isdir({str(tmp_path)!r})"))
        assert verdict.reward == 0.0 and not Path(path).exists(), (path, verdict)


@needs_bwrap
def test_native_code_and_commands_do_not_touch_the_host(code, tmp_path):
    target = tmp_path / "touched"
    for attack in [f"import ctypes\nctypes.CDLL(None).system(b'touch {target}')\n",
                   f"import os\nos.system('touch {target}')\n",
                   f"import subprocess\nsubprocess.run(['touch', '{target}'])\n",
                   f"import os\nos.posix_spawn('/usr/bin/touch', ['touch', '{target}'], {{}})\n"]:
        verdict = code(attack + GOOD)
        assert verdict.reward == 0.0 and not target.exists(), (attack, verdict)


@needs_bwrap
def test_no_network(code):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.1)
        port = server.getsockname()[1]
        verdict = code(if_escaped(f"__import__('socket').create_connection(('127.0.0.1', {port}), timeout=1)"))
        assert verdict.reward == 0.0, verdict
        with pytest.raises(socket.timeout):
            server.accept()
    assert code(if_escaped("__import__('socket').getaddrinfo('pypi.org', 443)")).reward == 0.0


@needs_bwrap
def test_environment_does_not_leak(code, monkeypatch):
    monkeypatch.setenv("RLSD_TEST_SECRET", "s3cret")
    assert code(if_escaped("__import__('os').environ.get('RLSD_TEST_SECRET')")).reward == 0.0


@needs_bwrap
def test_signals_reach_only_the_sandbox(code, patient):
    for attack in ["import os\nos.kill(-1, 9)\n", "import os\nos.kill(os.getppid(), 9)\n",
                   "import os\nos.killpg(0, 9)\n"]:
        assert code(attack + BAD).reward == 0.0
    assert patient(GOOD).reward == 1.0  # this process and the verifier survived


@needs_bwrap
def test_resource_bombs_are_bounded(code):
    start = time.monotonic()
    for attack in ["import os\nwhile True:\n    os.fork()\n",
                   "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()\n",
                   "x = bytearray(1 << 34)\n",
                   "open('/tmp/fill', 'wb').write(b'x' * (64 << 20))\n",
                   "import os\nfor i in range(10000):\n    open(f'/tmp/{i}', 'wb').write(b'x' * 65536)\n",
                   "while True:\n    pass\n"]:
        verdict = code(attack + GOOD)
        assert verdict.reward == 0.0, (attack, verdict)
    assert time.monotonic() - start < 30


FILL = """
import os
def written(folder):
    total = 0
    for i in range(64):
        try:
            fd = os.open(f"{folder}/fill{i}", os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return total
        try:
            for _ in range(16):
                total += os.write(fd, b"x" * 65536)
        except OSError:
            return total
        finally:
            os.close(fd)
    return total
TOTAL = sum(written(d) for d in ("/", "/dev", "/dev/shm", "/dev/pts", "/tmp", "/usr", os.path.dirname(os.__file__)))
def f(x):
    return TOTAL
"""


@needs_bwrap
def test_sandbox_filesystems_are_bounded_for_parallel_workers():
    """Every writable filesystem of a sandbox is a bounded tmpfs (/tmp and /dev/shm; the root, /dev and the
    system directories are read-only), so n workers at once hold at most n x (TMP_SIZE + SHM_SIZE) of the
    host's memory in files, besides n x memory_mb of address space."""
    workers, bound = 4, TMP_SIZE + SHM_SIZE
    shm_before = set(os.listdir("/dev/shm"))
    verifier = make_verifier("code", timeout=30.0, workers=workers)
    # each sandbox fills what it can; its test holds iff the total stays within the bound and is not 0
    verdicts = verifier.batch([(FILL, ex(f"assert {TMP_SIZE // 2} <= f(0) <= {bound}"))] * workers)
    assert [v.reward for v in verdicts] == [1.0] * workers, verdicts
    assert set(os.listdir("/dev/shm")) == shm_before


@needs_bwrap
def test_output_is_bounded_and_ignored(code, patient):
    flood = "import os, sys\nsys.stdout.write('x' * 10**8)\nsys.stderr.write('x' * 10**8)\n"
    assert patient(flood + GOOD).reward == 1.0  # the case: output does not change the reward
    verdict = code("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'y' * (8 << 20))\n"
                   "    except OSError:\n        pass\n" + BAD)
    assert verdict.reward == 0.0 and len(verdict.reason) < 5000


@needs_bwrap
def test_correct_solutions_still_pass(patient):
    solutions = [
        GOOD,
        "from functools import lru_cache\n@lru_cache(None)\ndef f(x):\n    return 2 * x",
        "import collections, dataclasses, heapq, itertools, json, random, re, typing, fractions, decimal\n"
        "@dataclasses.dataclass\nclass P:\n    v: int\nT = collections.namedtuple('T', 'a b')\n"
        "def f(x: typing.Optional[int]) -> int:\n    return P(json.loads(json.dumps(2 * x))).v",
        "import threading\nout = []\nt = threading.Thread(target=out.append, args=(2,))\nt.start()\nt.join()\n"
        "def f(x):\n    return out[0] * x",
        "import warnings, logging\nwarnings.warn('noisy')\nlogging.warning('noisy')\nprint('hello')\n"
        "open('/tmp/scratch', 'w').write('ok')\n" + GOOD,
        # frames, the garbage collector, signal handlers, new code objects and threads that outlive the
        # tests decide nothing now that the tests run in a process of their own, so they are not refused
        "import gc, signal, sys, threading, time\nframe = sys._getframe()\ngc.get_objects()\n"
        "signal.signal(signal.SIGALRM, lambda s, fr: None)\nc = (lambda: 0).__code__.replace(co_consts=(1,))\n"
        "threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n" + GOOD,
    ]
    for solution in solutions:
        verdict = patient(solution, TESTS + "\nimport math\nassert math.isclose(f(0.5), 1.0)")
        assert verdict.reward == 1.0, (solution, verdict)
    many_names = "\n".join(f"v{i} = {i}" for i in range(300))
    assert patient(GOOD, many_names + "\nassert f(v299) == 598").reward == 1.0


SOLUTION = """
import re
class Stack:
    def __init__(self):
        self.items = []
    def push(self, x):
        self.items.append(x)
    def pop(self):
        return self.items.pop()
def f(x=1, *, scale=2):
    return None if x < 0 else scale * x
def pair(a, b):
    return (a + b, {"sum": a + b, "parts": [a, b], "set": {a, b}}, b"raw", 1j * a)
def size(stack):
    return len(stack.items)
def word(n):
    return "x" * n
"""
TEST_FORMS = """
from math import isclose
import re
assert f(2) == 4 and f(x=3, scale=3) == 9 and f(-1) is None
assert type(f(2)) is int and isinstance(f(0.5), float) and isclose(f(0.1), 0.2)
total, info, raw, z = pair(1, 2)
assert total == 3 and info["parts"] == [1, 2] and info["set"] == {1, 2} and raw == b"raw" and z == 1j
assert pair(1, 2)[1]["sum"] == 3 and sorted(pair(2, 1)[1]["parts"]) == [1, 2]
for x, y in [(1, 2), (2, 4)]:
    assert f(x) == y
assert all(f(i) == 2 * i for i in range(10)) and [f(i) for i in range(3) if i] == [2, 4]
assert {i: f(i) for i in range(2)} == {0: 0, 1: 2} and len(word(5)) == 5 and word(3).upper() == "XXX"
assert re.fullmatch(r"x+", word(4)) and f(f(1)) == 4 and abs(-f(2)) == 4 and f(2) ** 2 == 16
s = Stack()
s.push(3)
s.push(4)
assert s.pop() == 4 and size(s) == 1 and s.items == [3]
"""


@needs_bwrap
def test_assert_style_tests_keep_working(patient):
    assert patient(SOLUTION, TEST_FORMS).reward == 1.0
    for wrong in ("assert f(2) == 5", "assert pair(1, 2)[0] == 4", "s = Stack()\nassert s.items == [1]",
                  "assert type(f(2.0)) is int", "assert f(-1) == 0"):
        verdict = patient(SOLUTION, wrong)
        assert verdict.reward == 0.0 and "failed" in verdict.reason, (wrong, verdict)


TESTS_IN_FULL_PYTHON = [
    "try:\n    f(1)\nexcept Exception:\n    pass\nassert f(2) == 4",
    "def check(g):\n    assert g(2) == 4\ncheck(f)",
    "assert (lambda: f(2))() == 4 and list(map(f, [1, 2])) == [2, 4] and sorted([3, 1], key=f) == [1, 3]",
    "import json, fractions\nassert json.loads(json.dumps(f(2))) == 4 and fractions.Fraction(f(1), 4) == 0.5",
    "assert f(2).__class__ is int and f'{f(2):>3}' == '  4'",
    "x = [1]\nx[0] = f(2)\nwhile x[0] < 8:\n    x[0] = f(x[0])\nassert x == [8]",
    "import unittest\nclass T(unittest.TestCase):\n    def test_f(self):\n        self.assertEqual(f(2), 4)\nunittest.main()",
]


@needs_bwrap
@pytest.mark.parametrize("tests", TESTS_IN_FULL_PYTHON)
def test_tests_are_full_python_in_their_own_process(patient, tests):
    assert patient(GOOD, tests).reward == 1.0
    assert patient(BAD, tests).reward == 0.0


IO_CASES = [{"input": "2\n", "output": "4\n"}, {"input": "5\n", "output": "10\n"}]
IO_TRICKS = {  # each program prints 0, or nothing, unless its trick works
    "a str subclass equal to everything": "class S(str):\n    __eq__ = lambda s, o: True\nprint(S('0'))",
    "output on descriptor 1 behind sys.stdout's back": "import os\nos.write(1, b'4\\n')",
    "exit code 0 without output": "import os\nos._exit(0)",
    "sys.stdout replaced by an object that claims the right text":
        "import sys\nclass Out:\n    def write(self, s): pass\n    def flush(self): pass\n"
        "    def getvalue(self): return '4\\n'\nsys.stdout = Out()\nprint(0)",
    "an output flood": "print('0' * (8 << 20))",
    "reading the expected output from the sandbox": "import os\nprint(sorted(os.listdir('/tmp')))",
}


@needs_bwrap
@pytest.mark.parametrize("name", sorted(IO_TRICKS))
def test_stdin_stdout_tricks_earn_nothing(code, name):
    verdict = code(IO_TRICKS[name], IO_CASES)
    assert verdict.reward == 0.0 and verdict.reason.startswith("failed"), verdict


@needs_bwrap
def test_solution_values_cannot_stall_the_host(code):
    """What the solution returns is worked on in the tests' process, which is killed at the timeout."""
    for solution, tests in [("def f(x):\n    return 10 ** 4000", "assert 2 ** f(2) == 4"),
                            ("def f(x):\n    return 10 ** 10", "assert len('x'.ljust(f(2))) == 4"),
                            ("def f(x):\n    return [[1]] * 100000", "assert sum(f(2), []) == [1]"),
                            ("def f(x):\n    return '%0*d'", "assert f(2) % (10 ** 9, 1) == '4'"),
                            (COLLIDING, "assert len(set(f(2))) == 4"),
                            ("def f(x):\n    return '(a+)+$'", "import re\nassert re.match(f(2), 'a' * 40 + 'b')")]:
        start = time.monotonic()
        verdict = code(solution, tests)
        assert verdict.reward == 0.0 and time.monotonic() - start < 6, verdict  # the timeout is 3 s


# ---------------------------------------------------------------- the tests in a process of their own
COLLIDING = "def f(x):\n    return [i * (2 ** 61 - 1) for i in range(40000)]\n"  # one hash value: set() is quadratic
OWN_PROCESS_TRICKS = {  # name: (solution, tests); each would pass if the tests shared the solution's interpreter
    "builtins.pow patched": ("import builtins\nbuiltins.pow = lambda *a: 16\n" + BAD, "assert pow(f(2), 2) == 16"),
    "builtins.bin patched": ("import builtins\nbuiltins.bin = lambda x: '0b100'\n" + BAD, "assert bin(f(2)) == '0b100'"),
    "builtins.hex patched": ("import builtins\nbuiltins.hex = lambda x: '0x4'\n" + BAD, "assert hex(f(2)) == '0x4'"),
    "builtins.format patched": ("import builtins\nbuiltins.format = lambda *a: '4'\n" + BAD,
                                "assert format(f(2), 'd') == '4'"),
    "builtins.bytes patched": ("import builtins\nbuiltins.bytes = lambda *a: b'4'\n" + BAD,
                               "assert bytes(str(f(2)), 'ascii') == b'4'"),
    "a global named like a builtin": ("pow = lambda *a: 16\ndivmod = lambda *a: (4, 0)\n" + BAD,
                                      "assert pow(f(2), 2) == 16 and divmod(f(2), 1) == (4, 0)"),
    "sorted in place, the input must stay": ("def f(a):\n    a.sort()\n    return a",
                                             "a = [3, 1, 2]\nassert f(a) == [1, 2, 3]\nassert a == [3, 1, 2]"),
    "an object whose arithmetic gives the answer": ("class A:\n    __add__ = __radd__ = lambda s, o: 4\n"
                                                    "def f(x):\n    return A()", "assert f(2) + 0 == 4"),
    "a container that contains everything": ("class C:\n    __contains__ = lambda s, x: True\n    __iter__ = lambda s: iter([])\n"
                                             "def primes(n):\n    return C()", "assert 2 in primes(10) and 7 in primes(10)"),
    "a str subclass equal to everything": ("class S(str):\n    __eq__ = lambda s, o: True\n    __hash__ = str.__hash__\n"
                                           "def f(x):\n    return S('no')", "assert f(2) == '4'"),
    "str() of an object gives a str subclass": ("class S(str):\n    __eq__ = lambda s, o: True\n    __hash__ = str.__hash__\n"
                                                "class A:\n    __str__ = lambda s: S('no')\ndef f(x):\n    return A()",
                                                "assert str(f(2)) == '4'"),
}


@pytest.mark.parametrize("name", sorted(set(OWN_PROCESS_TRICKS) - {"sorted in place, the input must stay"}))
def test_the_own_process_tricks_work_in_plain_python(name):
    assert passes_in_plain_python(*OWN_PROCESS_TRICKS[name])


@needs_bwrap
@pytest.mark.parametrize("name", sorted(OWN_PROCESS_TRICKS))
def test_tricks_on_the_tests_process_earn_nothing(code, name):
    verdict = code(*OWN_PROCESS_TRICKS[name])
    assert verdict.reward == 0.0 and verdict.reason.startswith("failed"), verdict


@needs_bwrap
def test_calls_are_by_value_result(patient):
    in_place = "def f(a, d=None):\n    a.sort()\n    if d is not None:\n        d['n'] = len(a)\n    return None"
    assert patient(in_place, "a, d = [3, 1, 2], {}\nf(a, d=d)\nassert a == [1, 2, 3] and d == {'n': 3}").reward == 1.0
    copy = "def f(a):\n    return sorted(a)"
    assert patient(copy, "a = [3, 1, 2]\nassert f(a) == [1, 2, 3]\nassert a == [3, 1, 2]").reward == 1.0
    nested = "def f(g):\n    g[0][0] = 9"
    assert patient(nested, "g = [[0, 1], [2]]\nf(g)\nassert g == [[9, 1], [2]]").reward == 1.0


HONEST = {  # (solution, tests) that plain Python passes and that earned 0 before
    "a program reading open(0)": ("a, b = map(int, open(0).read().split())\nprint(a + b)",
                                  [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6"}]),
    "a program writing to descriptor 1": ("import os, sys\nn = int(sys.stdin.readline())\nos.write(1, b'%d\\n' % (2 * n))",
                                          IO_CASES),
    "an int of more than 4300 digits": ("def f(n):\n    return 7 ** n", "assert f(9000) == 7 ** 9000 and f(3) == 343"),
    "a demonstration under __main__": ("def f(x):\n    return 2 * x\nif __name__ == '__main__':\n    print(f(int(input())))",
                                       TESTS),
    "a Python fence": ("Here:\n```Python\ndef f(x):\n    return 2 * x\n```\n", TESTS),
    "a dataclass with string annotations": ("from __future__ import annotations\nimport dataclasses\n"
                                            "@dataclasses.dataclass\nclass P:\n    v: int\ndef f(x):\n    return P(2 * x).v",
                                            TESTS),
    "a generator and an object with len": ("def gen(n):\n    yield from range(n)\nclass S:\n    def __init__(self):\n"
                                           "        self.items = []\n    def push(self, x):\n        self.items.append(x)\n"
                                           "    def __len__(self):\n        return len(self.items)",
                                           "assert list(gen(3)) == [0, 1, 2]\ns = S()\ns.push(1)\nassert len(s) == 1 and s\n"
                                           "assert [x for x in gen(2)] == [0, 1] and 1 in gen(3)"),
    "an expected exception": ("def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return 2 * x",
                              "try:\n    f(-1)\nexcept ValueError:\n    pass\nelse:\n    assert False\nassert f(2) == 4"),
}


@needs_bwrap
@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_answers_earn_one(patient, name):
    verdict = patient(*HONEST[name])
    assert verdict.reward == 1.0, verdict


@needs_bwrap
def test_one_slow_response_does_not_starve_the_others():
    """The host only waits on pipes: a response that keeps its tests' process busy until the timeout
    leaves the honest ones of the same batch their time."""
    verifier = make_verifier("code", timeout=3.0, workers=4)
    slow = (COLLIDING, ex("assert len(set(f(2))) == 40000"))
    verdicts = verifier.batch([slow] + [(GOOD, ex(TESTS))] * 3)
    assert [v.reward for v in verdicts] == [0.0, 1.0, 1.0, 1.0], verdicts


# ---------------------------------------------------------------- bounds of the sandbox as a whole
ATTEMPT = """
import errno, os, socket
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
"""  # a call's outcome: "allowed" or its errno's name
PROBES = ATTEMPT + """
def fill(folder):
    n = 0
    try:
        while n < 100000:
            os.mkdir(f"{folder}/d{n}")
            n += 1
    except OSError:
        pass
    return n
def sock(family, kind=socket.SOCK_STREAM):
    return lambda: socket.socket(family, kind).close()
RESULT = {
    "inodes in /tmp": fill("/tmp"), "inodes in /dev/shm": fill("/dev/shm"),
    "xattr": attempt(lambda: os.setxattr("/tmp", "user.big", b"x" * 60000)),
    "memfd": attempt(lambda: os.memfd_create("x")),
    "AF_VSOCK": attempt(sock(40)), "AF_INET": attempt(sock(socket.AF_INET)), "AF_INET6": attempt(sock(socket.AF_INET6)),
    "AF_NETLINK": attempt(sock(socket.AF_NETLINK, socket.SOCK_DGRAM)), "AF_PACKET": attempt(sock(17, socket.SOCK_RAW)),
    "AF_UNIX": attempt(lambda: [s.close() for s in socket.socketpair()]),
}
def f(x):
    return RESULT
"""


@needs_bwrap
def test_every_bound_of_the_sandbox_holds(patient):
    from rlsd.verifiers.sandbox import INODES
    tests = (f"r = f(0)\nassert 0 < r['inodes in /tmp'] < {INODES} and 0 < r['inodes in /dev/shm'] < {INODES}, r\n"
             "assert r['xattr'] == r['memfd'] == 'EPERM', r\n"
             "assert {r[k] for k in ('AF_VSOCK', 'AF_INET', 'AF_INET6', 'AF_NETLINK', 'AF_PACKET')} == {'EAFNOSUPPORT'}, r\n"
             "assert r['AF_UNIX'] == 'allowed', r")
    verdict = patient(PROBES, tests)
    assert verdict.reward == 1.0, verdict


def test_the_seccomp_filter_alone_refuses_processes_and_kernel_interfaces():
    """Below the audit hook: a process under the filter only (no hook, no sandbox) cannot fork, exec,
    make a namespace, a memfd, an extended attribute or a non-Unix socket; threads still work."""
    from rlsd.verifiers.sandbox import JAIL
    probe = JAIL + "\njail(False)\n" + ATTEMPT + """
import threading
out = {"fork": attempt(os.fork), "exec": attempt(lambda: os.execv("/bin/true", ["true"])),
       "memfd": attempt(lambda: os.memfd_create("x")), "vsock": attempt(lambda: socket.socket(40, socket.SOCK_STREAM)),
       "xattr": attempt(lambda: os.setxattr(os.getcwd(), "user.x", b"1")), "ctypes": "ctypes" in __import__("sys").modules}
t = threading.Thread(target=out.update, kwargs={"thread": "ran"})
t.start()
t.join()
print(sorted(out.items()))
"""
    run = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(sorted({"fork": "EPERM", "exec": "EPERM", "memfd": "EPERM", "vsock": "EAFNOSUPPORT",
                                             "xattr": "EPERM", "ctypes": False, "thread": "ran"}.items()))


@needs_bwrap
def test_memory_is_bounded_for_the_sandbox_as_a_whole(code):
    """Threads share the one address space (no second process can start), so the limit is the sandbox's."""
    threads = ("import threading\nkept = []\ndef grab():\n    try:\n        kept.append(bytearray(200 << 20))\n"
               "    except MemoryError:\n        pass\nts = [threading.Thread(target=grab) for _ in range(8)]\n"
               "[t.start() for t in ts]\n[t.join() for t in ts]\nN = len(kept)\ndef f(x):\n    return N")
    verdict = make_verifier("code", timeout=20.0, memory_mb=512)(threads, ex("assert f(0) == 8"))
    assert verdict.reward == 0.0 and "assertion failed" in verdict.reason, verdict


# ---------------------------------------------------------------- SQL
DB = "CREATE TABLE t(a INT, b TEXT); INSERT INTO t VALUES (1,'x'),(2,'y'),(3,'x');"


def test_sql_cannot_touch_files_or_settings(tmp_path):
    gold = ex("SELECT a FROM t", db=DB)
    for query in [f"ATTACH DATABASE '{tmp_path / 'a.db'}' AS e", f"VACUUM INTO '{tmp_path / 'v.db'}'",
                  "PRAGMA writable_schema = 1", "SELECT load_extension('x')", "DETACH DATABASE main",
                  "CREATE TABLE u(x)", "INSERT INTO t VALUES (4, 'z')", "SELECT * FROM pragma_table_info('t')"]:
        verdict = verify("sql", query, gold)
        assert verdict.reward == 0.0 and verdict.reason.startswith("malformed: SQL error"), verdict
    assert list(tmp_path.iterdir()) == []


def test_sql_works_on_a_copy_of_a_database_file(tmp_path):
    path = tmp_path / "user.db"
    con = sqlite3.connect(path)
    con.executescript(DB)
    con.close()
    before = path.read_bytes()
    gold = ex("SELECT a FROM t WHERE b = 'x'", db=str(path))
    assert verify("sql", "SELECT a FROM t WHERE b = 'x'", gold).reward == 1.0
    assert verify("sql", "DELETE FROM t", gold).reward == 0.0
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["user.db"]


def test_sql_rows_length_and_time_are_bounded():
    gold = ex("SELECT a FROM t", db=DB)
    many = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
    assert "too many rows" in verify("sql", many, gold, max_rows=1000).reason
    assert verify("sql", "SELECT randomblob(1000000000)", gold).reward == 0.0
    start = time.monotonic()
    slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
    assert verify("sql", slow, gold, timeout=0.5).reward == 0.0
    assert time.monotonic() - start < 5


def test_sql_single_long_c_calls_are_stopped_at_the_timeout():
    """One LIKE or instr() is one C call, between progress-handler steps: the worker is killed."""
    gold = ex("SELECT 1", db=DB)
    assert verify("sql", "SELECT 1", gold).reward == 1.0  # the worker pool is up before the clock starts
    strings = "WITH s(x, p) AS (SELECT printf('%.*c', {}, 'a'), replace(printf('%.*c', {}, '%'), '%', '{}') || 'b') "
    like = strings.format(100_000, 5_000, "%a") + "SELECT " + ", ".join(["x LIKE p"] * 50) + " FROM s"
    instr = strings.format(1_000_000, 500_000, "a") + "SELECT instr(x, p) FROM s"
    for query in (like, instr):
        start = time.monotonic()
        verdict = verify("sql", query, gold, timeout=0.5)
        assert verdict.reward == 0.0 and time.monotonic() - start < 3, verdict
    assert "pattern too complex" in verify("sql", like, gold).reason
    assert verify("sql", "SELECT 1", gold).reward == 1.0  # the killed worker was replaced


# ---------------------------------------------------------------- strings, JSON, math
HOSTILE_TEXT = ["9" * 200_000, "x" * 2_000_000, "[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000,
                "\\frac{" * 20_000, "\x00\udcff" * 1000, "the " * 300_000]


@pytest.mark.parametrize("name", ["exact", "normalized", "json_schema"])
def test_hostile_strings_get_zero_quickly(name):
    example = ex("42", schema={"type": "object", "required": ["a"]})
    start = time.monotonic()
    for text in HOSTILE_TEXT:
        verdict = verify(name, text, example)
        assert verdict.reward == 0.0 and not verdict.reason.startswith("verifier error"), (text[:20], verdict)
    assert time.monotonic() - start < 5


def test_json_huge_numbers_and_deep_nesting():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    for text in ['{"n": ' + "9" * 5000 + "}", '{"n": 1e999999}', '{"n": ' + "[" * 900 + "]" * 900 + "}"]:
        verdict = verify("json_schema", text, ex(None, schema=schema))
        assert verdict.reward == 0.0 and not verdict.reason.startswith("verifier error"), verdict


def test_json_non_finite_numbers_are_not_json():
    schema = {"type": "object", "properties": {"age": {"type": "number", "minimum": 0, "maximum": 150}},
              "required": ["age"]}
    assert verify("json_schema", '{"age": 36.5}', ex(None, schema=schema)).reward == 1.0
    for number in ("NaN", "Infinity", "-Infinity", "1e999", "-1e400"):
        verdict = verify("json_schema", '{"age": %s}' % number, ex(None, schema=schema))
        assert verdict.reward == 0.0 and verdict.reason.startswith("malformed"), (number, verdict)


def test_json_validation_is_stopped_at_the_timeout():
    """uniqueItems over mixed values is quadratic in one C call: the worker is killed."""
    example = ex(None, schema={"type": "array", "uniqueItems": True})
    assert verify("json_schema", "[1, 2]", example).reward == 1.0  # the worker pool is up before the clock starts
    mixed = json.dumps([x for i in range(5_000) for x in (i, str(i))])  # 68 KB
    start = time.monotonic()
    verdict = verify("json_schema", mixed, example, timeout=0.5)
    assert verdict.reward == 0.0 and "timeout" in verdict.reason and time.monotonic() - start < 3, verdict
    assert verify("json_schema", "[1, 2]", example).reward == 1.0


HEDGES = ["The answer is 1 or 2", "The answer is 1 (or maybe 2)", "The answer is 2 or 1", "The answer is 1. The answer is 2.",
          "The answer is 2. The answer is 1.", "Final answer: 1, 2", r"The answer is $\boxed{1}$ or 2.",
          r"$\boxed{1}$ and $\boxed{2}$", "The answer is $1$ or $2$"]
PLAIN_ANSWERS = [("The answer is 2.", "2"), ("We get 2+2=4, so the answer is 4. Check: 4-2=2.", "4"),
                 (r"Therefore, the answer is $2\sqrt{3}$.", r"2\sqrt{3}"), ("The answer is $10^3$", "1000"),
                 (r"x = 3, so the answer is $\boxed{2}$", "2"), ("The answer is $(1, 2)$", "(1, 2)"),
                 ("12+34=46;46+56=102; the answer is 102", "102"), ("I think 3 and then 4, final 5", "5")]


@pytest.mark.parametrize("gold", ["1", "2"])
def test_math_hedging_over_several_answers_earns_nothing(gold):
    for response in HEDGES:
        verdict = verify("math", response, ex(gold))
        assert verdict.reward == 0.0 and verdict.reason.startswith("wrong answer"), (response, verdict)


def test_math_single_answers_with_working_still_pass():
    for response, gold in PLAIN_ANSWERS:
        assert verify("math", response, ex(gold)).reward == 1.0, response


def test_math_hostile_latex_is_time_bounded():
    for text in [r"$\boxed{9^{9^{9^{9}}}}$", r"$\boxed{10^{10^{10^{10}}}}$", r"$\boxed{100000000!}$",
                 "$" + "x+" * 30_000 + "1$", "$" + "\\frac{1}{" * 3000 + "2" + "}" * 3000 + "$", "9" * 200_000]:
        start = time.monotonic()
        verdict = verify("math", text, ex("2"), timeout=2.0)
        assert verdict.reward == 0.0 and time.monotonic() - start < 12, verdict  # 2 s, or a worker's restart
    assert verify("math", r"$\boxed{\frac{1}{2}}$", ex("0.5")).reward == 1.0
