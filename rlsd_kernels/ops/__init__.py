"""Fused backends, one per file; this module names them and says which run here.

- ``chunked``: row chunks, BLAS GEMMs, PyTorch epilogues (any device, no compiler needed)
- ``cpp``:     the same chunk loop with fused C++/OpenMP epilogues from ``csrc/`` (CPU)
- ``triton``:  tiled Triton kernels (CUDA; on the CPU only under ``TRITON_INTERPRET=1``)
"""

from __future__ import annotations

import functools

from .base import HeadBackend
from .chunked import ChunkedHead

FUSED = ("chunked", "cpp", "triton")


@functools.cache
def get_backend(name: str) -> HeadBackend:
    if name == "chunked":
        return ChunkedHead("chunked")
    if name == "cpp":
        from . import cpp

        if not cpp.available():
            raise RuntimeError(f"impl='cpp' is not available here: {cpp.unavailable_reason()}")
        return ChunkedHead("cpp", cpp.row_stats, cpp.dlogits_)
    if name == "triton":
        from .triton import TritonHead, available

        if not available():
            raise RuntimeError("impl='triton' needs a CUDA device (or TRITON_INTERPRET=1 on the CPU)")
        return TritonHead()
    raise ValueError(f"impl must be 'auto', 'eager' or one of {FUSED}, got {name!r}")


def usable(name: str) -> bool:
    """Whether backend ``name`` can run on this machine (builds the C++ extension on first call)."""
    try:
        get_backend(name)
    except (RuntimeError, ImportError):
        return False
    return True
