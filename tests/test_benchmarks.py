"""The benchmark suite (benchmarks/): a smoke run, the out-of-memory planner, the eager estimate.

These check that the suite runs and reports; they are not performance tests (the figures of a
--quick run on a busy test machine mean nothing).
"""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import measure, report, suite
from benchmarks.inputs import MiB, PRESETS, Shape
from benchmarks.providers import default_provider, default_selection, registry

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_quick_run_writes_csv_table_and_plots_with_a_row_per_provider(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--results", str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("bench.csv", "bench.md", "time_quick.png", "memory_quick.png"):
        assert (tmp_path / name).stat().st_size > 0, name

    columns, rows = _rows(tmp_path / "bench.csv")
    assert columns == report.COLUMNS
    for r in rows:  # a figure exactly when the status is ok; otherwise the reason
        assert r["status"], r
        assert (r["status"] == "ok") == (r["y_value_50"] != ""), r
        assert r["metric_unit"] == {"time": "ms", "memory": "MiB"}[r["metric_name"]]

    (series, H, V), = suite.QUICK["series"]
    small, large = suite.QUICK["tokens"]
    key = {(r["kernel_provider"], int(r["x_value"]), r["kernel_operation_mode"], r["metric_name"]): r for r in rows}
    default = default_provider(CPU)
    for name in default_selection(CPU):
        for mode in ("forward", "backward", "full"):
            assert (name, small, mode, "time") in key, (name, mode)
            assert key[(name, large, mode, "time")]["status"].startswith("skipped: N above --max-time-tokens")
        for N in (small, large):
            assert (name, N, "full", "memory") in key, (name, N)
        reason = registry()[name].unavailable(CPU)
        status = key[(name, small, "full", "time")]["status"]
        if reason:  # e.g. rlsd-triton, cce on the CPU: the row says why
            assert status == f"not run: {reason}"
    for name in ("gemm-floor", "eager", default):
        assert key[(name, small, "full", "time")]["status"] == "ok"
    assert float(key[("gemm-floor", small, "full", "time")]["ratio_to_floor"]) == 1.0
    assert float(key[("eager", small, "full", "time")]["ratio_to_eager"]) == 1.0
    for name in (default, "eager"):
        for N in (small, large):
            assert key[(name, N, "full", "memory")]["status"] == "ok"
            assert float(key[(name, N, "full", "memory")]["y_value_50"]) > 0

    table = (tmp_path / "bench.md").read_text()
    assert table in out.stdout
    assert f"| {default} (default) |" in table
    assert "not run: needs a CUDA GPU" in table


def test_out_of_memory_is_reported_not_attempted(tmp_path, monkeypatch):
    def no_child(*args, **kwargs):
        raise AssertionError(f"a case was attempted: {args}")

    monkeypatch.setattr(measure, "run_child", no_child)
    suite.main(["--preset", "qwen2.5-0.5b", "--tokens", "32768", "--providers", "eager",
                    "--max-time-tokens", "0", "--mem-budget-gib", "24", "--results", str(tmp_path), "--no-plots"])
    shape = Shape(32768, *PRESETS["qwen2.5-0.5b"])
    need = (shape.input_bytes() + registry()["eager"].extra_bytes(shape)) / 2**30
    assert need > 24  # three [32768, 151936] float32 buffers: more than this machine has
    _, rows = _rows(tmp_path / "bench.csv")
    assert {(r["kernel_operation_mode"], r["metric_name"]) for r in rows} == {
        ("forward", "time"), ("backward", "time"), ("full", "time"), ("full", "memory")}
    for r in rows:
        m = re.fullmatch(r"out of memory \(needs ([\d.]+) GiB, ([\d.]+) GiB available\)", r["status"])
        assert m, r["status"]
        assert float(m.group(1)) == pytest.approx(need, abs=0.05)
        assert float(m.group(2)) == pytest.approx(24.0)
        assert r["y_value_50"] == ""
    assert "out of memory (needs" in (tmp_path / "bench.md").read_text()


def test_long_trace_plans_the_default_impl_and_reports_eager_out_of_memory(tmp_path, monkeypatch):
    calls = []

    def fake_child(module, spec, timeout=None):
        calls.append((module, spec))
        return {"peak_above_inputs": 300 * MiB, "seconds": 1.5}

    monkeypatch.setattr(measure, "run_child", fake_child)
    suite.main(["--long-trace", "--mem-budget-gib", "24", "--results", str(tmp_path)])
    preset, N = suite.LONG_TRACE
    H, V = PRESETS[preset]
    default = default_provider(CPU)
    assert calls == [("benchmarks.memprobe", dict(provider=default, N=N, H=H, V=V, dtype="float32", mode="full",
                                                    device="cpu"))]
    _, rows = _rows(tmp_path / "long_trace.csv")
    got = {(r["kernel_provider"], r["metric_name"]): r for r in rows}
    assert float(got[(default, "memory")]["y_value_50"]) == 300
    assert float(got[(default, "time")]["y_value_50"]) == 1500
    assert got[("eager", "memory")]["status"].startswith("out of memory (needs")


def test_eager_memory_estimate_matches_a_measured_peak():
    shape = Shape(1024, 128, 16384)
    measured = measure.peak_memory_in_subprocess("eager", shape)
    estimate = registry()["eager"].extra_bytes(shape)
    assert 0.75 < measured / estimate < 1.25, (measured / MiB, estimate / MiB)


def test_gpu_targets_plan_the_three_cases_with_memory_in_the_timing_process(tmp_path, monkeypatch):
    """On CUDA one timing process per case also returns the peaks (no memory process is started)."""
    specs = []

    def fake_child(module, spec, timeout=None):
        assert module == "benchmarks.timecase" and spec["memory"], (module, spec)
        specs.append(spec)
        fake = {"median": 0.01, "p20": 0.01, "p80": 0.01}
        return {"times": {n: {m: fake for m in spec["modes"]} for n in spec["providers"]}, "failed": {},
                "memory": {n: 7 * MiB for n in spec["providers"]}}

    monkeypatch.setattr(measure, "run_child", fake_child)
    monkeypatch.setattr(measure, "available_bytes", lambda device="cpu": 80 << 30)
    monkeypatch.setattr(suite.Suite, "in_process_memory", property(lambda self: True))
    suite.main(["--gpu-targets", "--dtype", "bfloat16", "--providers", "gemm-floor,eager,rlsd-chunked",
                "--max-time-tokens", "0", "--mem-budget-gib", "80", "--results", str(tmp_path), "--no-plots"])
    assert [(s["H"], s["V"], s["N"]) for s in specs] == [
        (*PRESETS[p], n) for p, n in suite.GPU_TARGETS]
    _, rows = _rows(tmp_path / "bench.csv")
    memory = [r for r in rows if r["metric_name"] == "memory" and r["status"] == "ok"]
    assert {r["kernel_provider"] for r in memory} == {"gemm-floor", "eager", "rlsd-chunked"}
    assert all(float(r["y_value_50"]) == 7 for r in memory)


def test_timing_process_measures_each_providers_peak(monkeypatch):
    from benchmarks import timecase

    res = timecase.run(dict(providers=["eager", "rlsd-chunked"], modes=["full"], N=64, H=16, V=512,
                            dtype="float32", device="cpu", reps=1, warmup=1, memory=True))
    assert set(res["memory"]) == {"eager", "rlsd-chunked"} and not res["failed"]
    assert all(isinstance(b, int) for b in res["memory"].values())
