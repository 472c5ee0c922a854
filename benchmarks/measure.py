"""Timers and memory probes.

CPU time: ``time.perf_counter`` around a closure, repetitions of every provider interleaved so that
drift of the machine hits all of them alike; medians and the 20th/80th percentiles.
CPU memory: the peak resident set (VmHWM) of a fresh subprocess above what it held once its inputs
were made; the peak is reset (/proc/self/clear_refs) after the inputs exist, so neither their
construction nor allocator caches of other cases can hide or inflate it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time


def summary(samples):
    q = statistics.quantiles(samples, n=5, method="inclusive") if len(samples) > 1 else samples * 4
    return {"median": statistics.median(samples), "p20": q[0], "p80": q[3]}


def time_interleaved(steps: dict, reps: int, warmup: int = 1):
    """{name: closure} -> {name: summary of seconds}; round-robin over providers."""
    samples = {name: [] for name in steps}
    for _ in range(warmup):
        for step in steps.values():
            step()
    for _ in range(reps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - t0)
    return {name: summary(s) for name, s in samples.items()}


def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak_rss() -> int:
    """Reset the resident-set peak to the current resident set; returns that, in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def peak_memory_in_subprocess(provider: str, shape) -> int:
    """Bytes of resident-set peak above the inputs for one fwd+bwd of ``provider`` at ``shape``."""
    cmd = [sys.executable, "-m", "benchmarks.memprobe", provider, str(shape.N), str(shape.H), str(shape.V), shape.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_above_inputs"]
