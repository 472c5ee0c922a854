"""Test set-up: Triton's interpreter must be switched on before any kernel is defined, so the
Triton backend runs (slowly, on small shapes) on a machine without a GPU."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from rlsd_kernels import available_impls  # noqa: E402
from rlsd_kernels.ops import get_backend  # noqa: E402

FUSED_IMPLS = [name for name in available_impls() if name != "eager"]
SMALL_CHUNK_BYTES = 16 << 10  # a few rows per chunk on test vocabularies: every loop runs several times


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
