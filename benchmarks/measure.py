"""Timers and memory probes: the only code that differs between the CPU and a CUDA device.

Time: repetitions of every step interleaved (round-robin) so that drift of the machine hits all of
them alike; medians and the 20th/80th percentiles. CPU: ``time.perf_counter`` around the step.
CUDA: CUDA events recorded around the step, synchronised after it (the untimed setup and teardown
are synchronised too, so their queued work does not leak into the timed interval).

Memory: the peak of one fwd+bwd above what the process held once its inputs were made, measured
in a fresh subprocess (``benchmarks.memprobe``) so that neither input construction nor allocator
caches of other cases can hide or inflate it. CPU: the resident-set peak (VmHWM), reset through
/proc/self/clear_refs once the inputs exist. CUDA: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass
class Step:
    """``run(setup())`` is timed; ``setup`` (e.g. the forward before a timed backward) and
    ``teardown`` (dropping gradients) are not."""

    run: Callable
    setup: Optional[Callable] = None
    teardown: Optional[Callable] = None

    def __call__(self):
        state = self.setup() if self.setup else None
        self.run(state)
        if self.teardown:
            self.teardown()


def summary(samples):
    q = statistics.quantiles(samples, n=5, method="inclusive") if len(samples) > 1 else samples * 4
    return {"median": statistics.median(samples), "p20": q[0], "p80": q[3], "reps": len(samples)}


def _as_step(step):
    return step if isinstance(step, Step) else Step(run=lambda _: step())


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(step, device="cpu") -> float:
    """Seconds of ``step.run`` (setup and teardown excluded)."""
    device, step = torch.device(device), _as_step(step)
    state = step.setup() if step.setup else None
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step.run(state)
        end.record()
        end.synchronize()
        dt = start.elapsed_time(end) / 1e3
    else:
        t0 = time.perf_counter()
        step.run(state)
        dt = time.perf_counter() - t0
    del state
    if step.teardown:
        step.teardown()
    _sync(device)
    return dt


def time_interleaved(steps: dict, reps: int, warmup: int = 1, device="cpu"):
    """{name: Step or closure} -> {name: summary of seconds}; round-robin over the steps."""
    samples = {name: [] for name in steps}
    for _ in range(warmup):
        for step in steps.values():
            time_once(step, device)
    for _ in range(reps):
        for name, step in steps.items():
            samples[name].append(time_once(step, device))
    return {name: summary(s) for name, s in samples.items()}


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------

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


def reset_peak(device) -> int:
    """Start a peak measurement; returns the baseline in bytes."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return reset_peak_rss()


def peak_bytes(device) -> int:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_bytes()


def release_free_memory():
    """Hand freed heap pages back to the OS (glibc keeps some after large frees)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def available_bytes(device="cpu") -> int:
    """Memory a case may use: MemAvailable on the CPU, free device memory on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info.get("MemAvailable", info["MemFree"])


class ChildFailed(RuntimeError):
    pass


def run_child(module: str, spec: dict, timeout=None) -> dict:
    """``python -m <module> '<json spec>'`` in a fresh process; its last stdout line is JSON."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # a test session's interpreter switch is not a benchmark setting
    try:
        out = subprocess.run([sys.executable, "-m", module, json.dumps(spec)], capture_output=True, text=True,
                             env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"timed out after {timeout} s") from None
    if out.returncode != 0:
        if out.returncode < 0:
            raise ChildFailed(f"killed by signal {-out.returncode}" + (" (out of memory?)" if out.returncode == -9 else ""))
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        raise ChildFailed(f"exit {out.returncode}: {tail[:300]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_memory_in_subprocess(provider: str, shape, mode: str = "full", device: str = "cpu", timeout=None) -> int:
    """Bytes of peak above the inputs for one ``mode`` step of ``provider`` at ``shape``."""
    return probe_memory(provider, shape, mode, device, timeout)["peak_above_inputs"]


def probe_memory(provider: str, shape, mode: str = "full", device: str = "cpu", timeout=None) -> dict:
    """{"peak_above_inputs": bytes, "seconds": time of that one step} from ``benchmarks.memprobe``."""
    spec = dict(provider=provider, N=shape.N, H=shape.H, V=shape.V, dtype=shape.dtype, mode=mode, device=device)
    return run_child("benchmarks.memprobe", spec, timeout)
