"""Test set-up. Where TRITON_INTERPRET is unset, it is decided before any Triton kernel is
defined: with a CUDA device the Triton backends run on the GPU (tests/test_gpu.py); without one
Triton's interpreter is switched on, so they run (slowly, on small shapes) on the CPU."""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch.distributed as dist  # noqa: E402

from inputs import FUSED_IMPLS, SMALL_CHUNK_BYTES  # noqa: E402
from rlsd_kernels.ops import get_backend  # noqa: E402


@pytest.fixture(autouse=True)
def small_chunks():
    """Make the chunked backends take several chunks on test shapes; restore afterwards."""
    backends = [get_backend(n) for n in FUSED_IMPLS if hasattr(get_backend(n), "chunk_bytes")]
    saved = [b.chunk_bytes for b in backends]
    for b in backends:
        b.chunk_bytes = SMALL_CHUNK_BYTES
    yield
    for b, s in zip(backends, saved):
        b.chunk_bytes = s


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.fixture
def one_process_group():
    """A gloo process group of one process (VocabParallel at world size 1)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()
