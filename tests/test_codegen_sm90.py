"""Every Triton kernel of the GPU path, compiled for sm_90a (H100/H200) at the three heads of the
README's H100 table with the specialisation its launcher gives it, without a GPU
(benchmarks/codegen.py, in a process of its own where the kernels are compiled, not interpreted):
no register spills, shared memory within a block's 227 KB, wgmma on the tensor cores, and for
``triton-tma`` TMA loads and wgmma at least 128 wide, as benchmarks/NOTES.md (section 7) designs
them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed")
from benchmarks import codegen  # noqa: E402

if codegen.toolchain() is None:
    pytest.skip("Triton's bundled ptxas / cuobjdump are missing", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def heads():
    return {head: {row.kernel: row for row in rows} for head, rows in codegen.in_subprocess().items()}


def test_every_head_and_kernel_compiled(heads):
    assert sorted(heads) == sorted(codegen.HEADS)
    for rows in heads.values():
        assert len(rows) == 9 and sum(name.startswith("triton-tma") for name in rows) == 4


def test_no_spills_and_shared_memory_within_a_block(heads):
    for rows in heads.values():
        for row in rows.values():
            assert row.spill_bytes == 0 and row.sass["LDL/STL"] == 0, row
            assert 0 <= row.smem <= codegen.SMEM_LIMIT, row


def test_gemm_kernels_use_wgmma(heads):
    for rows in heads.values():
        for name, row in rows.items():
            if "epilogue" not in name:
                assert row.wgmma and row.sass["HGMMA"] > 0, row


def test_tma_kernels_load_by_tma_with_wide_wgmma(heads):
    for rows in heads.values():
        for name, row in rows.items():
            if name.startswith("triton-tma"):
                assert row.tma_loads > 0 and row.sass["UTMALDG"] > 0 and row.cp_async == 0, row
                assert row.widest_wgmma >= 128, row
            elif "epilogue" not in name:  # the pointer kernels: Ampere-style loads, narrower wgmma
                assert row.tma_loads == 0 and row.cp_async > 0 and row.widest_wgmma < 128, row


def test_the_checks_see_a_spill():
    """The same reading on a kernel that fails it: the dW kernel with 128-wide gradient slices
    (the width the dh kernel uses) spills registers, which is why it writes 64-wide ones."""
    code = ("import json, dataclasses; from benchmarks import codegen\n"
            "rows = codegen.report(codegen.HEADS['Llama-3-8B'], {'dw': 128})\n"
            "print(json.dumps([dataclasses.asdict(r) for r in rows if r.kernel == 'triton-tma dW']))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    (row,) = json.loads(done.stdout)
    assert row["spill_bytes"] > 0
