"""benchmarks/gpu_e2e.py's CPU smoke run: every part of the GPU end-to-end check runs (tiny sizes)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run_passes_every_part(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_e2e", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {p["part"]: p["status"] for p in summary["parts"]} == dict.fromkeys(
        ("install", "kernel_tests", "rlsd_train", "trl", "long_step"), "ok"), summary["parts"]
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads((tmp_path / "pip_plan.json").read_text())
    assert [i["metadata"]["name"] for i in plan["install"]] == ["rlsd-kernels"]
    with open(tmp_path / "long_step" / "long_step.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["head"], r["status"]) for r in rows) == [("eager", "ok"), ("fused", "ok")]
    assert all(float(r["loss_peak_gib"]) > 0 and float(r["step_s"]) > 0 for r in rows)
    assert "| long_step | ok |" in (tmp_path / "summary.md").read_text()
