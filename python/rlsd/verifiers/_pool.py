"""Killable worker processes for verifiers whose work can sit in one long C call.

A thread cannot interrupt a C call that holds the GIL (SymPy's big integers, ``jsonschema``'s
``uniqueItems`` on mixed values, SQLite's ``instr`` or ``LIKE``), and ``signal.alarm`` works in the
main thread only. So such work runs in a ``pebble`` process pool whose worker is killed at the
deadline and replaced. Each pool is started on first use (one worker per core, a bounded address
space). Workers are forked from multiprocessing's fork server, a clean single-threaded process that
imports the main module, this package and every pool's ``preload`` modules once, so a killed worker
is replaced in milliseconds rather than by a fresh interpreter importing them again.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import os
import threading
from concurrent.futures import TimeoutError as FutureTimeout

WORKER_MEMORY_MB = 4096
_PRELOAD = ["__main__", __package__]  # imported by the fork server when the first pool starts


class WorkerFailed(Exception):
    """The call's worker died (a crash, the memory limit) before it answered."""


class WorkerTimeout(WorkerFailed):
    """The call ran past its deadline; its worker was killed."""


def _start_worker(memory_mb: int, preload: tuple) -> None:
    import logging
    import resource
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # pebble's handler would wait for the long C call to return

    for name in preload:
        importlib.import_module(name)
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its timeouts log the whole input
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))


class WorkerPool:
    """``run(fn, args, timeout)``: ``fn(*args)`` in a worker, killed after ``timeout`` seconds."""

    def __init__(self, preload: tuple = (), memory_mb: int = WORKER_MEMORY_MB):
        self.preload, self.memory_mb = tuple(preload), memory_mb
        _PRELOAD.extend(self.preload)
        self._pool, self._lock = None, threading.Lock()

    def _instance(self):
        """The running pool; a new one when there is none yet, or when the last one stopped or broke."""
        with self._lock:
            if self._pool is not None and not self._pool.active:
                self._pool.stop()
                self._pool = None
            if self._pool is None:
                from pebble import ProcessPool
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(_PRELOAD)  # effective if the fork server is not running yet
                self._pool = ProcessPool(max_workers=os.cpu_count() or 1, initializer=_start_worker,
                                         initargs=(self.memory_mb, self.preload), context=context)
                atexit.register(self._pool.stop)  # the replaced pools stay stopped
            return self._pool

    def run(self, fn, args: tuple, timeout: float):
        """``fn(*args)``'s result (``fn`` must be a module-level function); raises :class:`WorkerTimeout`
        or :class:`WorkerFailed`. A pool that is no longer running is replaced, once per call."""
        from pebble import ProcessExpired
        try:
            future = self._instance().schedule(fn, args, timeout=timeout)
        except RuntimeError:  # "the Pool is not active": it broke between the check and the call
            future = self._instance().schedule(fn, args, timeout=timeout)
        try:
            return future.result()
        except FutureTimeout as exc:
            raise WorkerTimeout(f"timeout after {timeout}s") from exc
        except ProcessExpired as exc:
            raise WorkerFailed(f"the worker died ({exc})") from exc
