"""Per-call overhead of the code verifier's sandbox and its batch throughput.

    PYTHONPATH=python python -m rlsd.verifiers.bench [--calls 40] [--batch 128]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import warnings

from ..data import Example
from . import make_verifier
from .sandbox import bwrap_command, check_bwrap, python_executable

TESTS = "assert f(2) == 4\nassert f(5) == 10"
GOOD = "def f(x):\n    return 2 * x\n"


def median_ms(fns: dict, calls: int) -> dict:
    """Median wall time of each function, calls interleaved so that load changes hit all alike."""
    times = {name: [] for name in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    example = Example(prompt="", answer=TESTS)
    py = [python_executable(), "-I", "-S", "-c", "pass"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unsandboxed = make_verifier("code", sandbox="none")
    sandboxed = make_verifier("code")
    fns = {"python -c pass": lambda: subprocess.run(py, check=True),
           "bwrap + python -c pass": lambda: subprocess.run(bwrap_command(py, check_bwrap()), check=True),
           "code verifier, sandbox=none": lambda: unsandboxed(GOOD, example),
           "code verifier, bwrap": lambda: sandboxed(GOOD, example)}
    for name, ms in median_ms(fns, args.calls).items():
        print(f"{name:28s} {ms:6.1f} ms (median of {args.calls})")
    for workers in (1, 2, 4, 8):
        verifier = make_verifier("code", workers=workers)
        start = time.perf_counter()
        verdicts = verifier.batch([(GOOD, example)] * args.batch)
        rate = args.batch / (time.perf_counter() - start)
        assert all(v.reward == 1.0 for v in verdicts), verdicts
        print(f"batch of {args.batch}, workers={workers}: {rate:5.1f} calls/s")


if __name__ == "__main__":
    main()
