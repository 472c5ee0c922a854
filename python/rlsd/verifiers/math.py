"""Mathematical equivalence with ``math-verify`` (LaTeX / plain expressions, boxed answers).

Parsing and comparing run in worker processes (``pebble``) that are killed at the time limit:
math-verify's own alarm-based timeout cannot interrupt SymPy inside one long C call (``9^{9^{9^9}}``)
and works in the main thread only. Workers have a memory limit and are started on first use.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from concurrent.futures import TimeoutError as FutureTimeout

from . import Verdict, register

MAX_CHARS = 100_000     # longer responses are refused before parsing
WORKER_MEMORY_MB = 4096

_pool = None
_pool_lock = threading.Lock()


def _start_worker(memory_mb: int) -> None:
    import logging
    import resource

    import math_verify  # noqa: F401  imported here, not inside the first timed call

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its timeouts log the whole input
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))


def _pool_instance():
    global _pool
    with _pool_lock:
        if _pool is None:
            from pebble import ProcessPool
            _pool = ProcessPool(max_workers=os.cpu_count() or 1, initializer=_start_worker,
                                initargs=(WORKER_MEMORY_MB,), context=multiprocessing.get_context("spawn"))
            atexit.register(_pool.stop)
        return _pool


def equivalent(response: str, answer: str, seconds: int) -> str:
    """'ok', 'wrong answer' or 'malformed: ...' (runs in a worker)."""
    from math_verify import parse, verify

    gold = parse(answer if "$" in answer else f"${answer}$", parsing_timeout=seconds)
    pred = parse(response, parsing_timeout=seconds)
    if not pred:
        return "malformed: no mathematical answer found"
    return "ok" if verify(gold, pred, timeout_seconds=seconds) else "wrong answer"


@register("math")
def math_answer(response: str, example, timeout: float = 10.0) -> Verdict:
    """Reward 1 iff the last answer in the response is mathematically equal to the reference, found
    within ``timeout`` seconds (the worker is killed then; math-verify's own limit per step is a third)."""
    if len(response) > MAX_CHARS:
        return Verdict(0.0, f"malformed: response longer than {MAX_CHARS} characters")
    future = _pool_instance().schedule(equivalent, (response, str(example.answer), max(1, int(timeout / 3))),
                                       timeout=timeout)
    try:
        reason = future.result()
    except FutureTimeout:
        return Verdict(0.0, f"timeout after {timeout}s")
    return Verdict(float(reason == "ok"), reason)
