"""Backends, one per file; this module names them, says which run here and picks one for ``auto``.

- ``eager``:        materialised logits and autograd (the baseline)
- ``chunked``:      row chunks, BLAS/cuBLAS GEMMs, PyTorch epilogues (any device, no compiler needed)
- ``cpp``:          the same chunk loop with fused C++/OpenMP epilogues from ``csrc/`` (CPU)
- ``triton``:       the same chunk loop with Triton epilogues; bf16/fp16 tensor-core GEMMs on CUDA
- ``triton-tiled``: fully tiled Triton kernels: no logits buffer at all, the lowest-memory mode
- ``triton-tma``:   the tiled kernels with TMA operand loads and 128 x 128 tiles for Hopper (not yet
                    measured on a GPU, so ``auto`` does not pick it)
Triton backends need CUDA (or ``TRITON_INTERPRET=1`` on the CPU).

A backend crosses the losses' custom ops (``rlsd_kernels.autograd``) as a string: a name above, or
the key :func:`impl_key` gives a backend object (such as ``VocabParallel``); :func:`select` turns
it back into the backend of a call.
"""

from __future__ import annotations

import functools
import weakref

from .base import HeadBackend
from .chunked import TORCH_EPILOGUES, ChunkedHead, Epilogues
from .eager import EagerHead
from .triton import interpreted as triton_interpreted

FUSED = ("chunked", "cpp", "triton", "triton-tiled", "triton-tma")
IMPLS = ("eager",) + FUSED
MIN_CHUNK_ROWS = 64  # below this many rows per chunk ``auto`` prefers the tiled kernels on CUDA


_OBJECTS = weakref.WeakValueDictionary()  # impl_key -> a backend object the caller holds


def impl_key(impl) -> str:
    """``impl`` as a string: a name (or "auto") as it is, a backend object by a key that
    :func:`select` finds while the object lives. An unknown name raises a ValueError naming impl."""
    if isinstance(impl, HeadBackend):
        key = f"object:{impl.name}:{id(impl):x}"
        _OBJECTS[key] = impl
        return key
    if impl != "auto" and impl not in IMPLS:
        raise ValueError(f"impl must be 'auto', one of {IMPLS} or a backend object, got {impl!r}")
    return impl


def select(key: str, device, weight=None, memory_budget=None) -> HeadBackend:
    """The backend of a call on ``device``: an :func:`impl_key`'s object, or the named backend
    (``auto``: see :func:`auto`), with ``memory_budget`` bytes of working memory (None: its default)."""
    if key in _OBJECTS:
        return _OBJECTS[key].with_memory_budget(memory_budget)
    name = resolve_impl(key, device, weight, memory_budget)
    if name.startswith("triton") and device.type != "cuda" and not triton_interpreted():
        raise ValueError(f"impl={name!r} runs on CUDA tensors, got hidden on {device} "
                         "(on the CPU only under TRITON_INTERPRET=1, Triton's interpreter)")
    return get_backend(name).with_memory_budget(memory_budget)


def resolve_impl(impl: str, device, weight=None, memory_budget=None) -> str:
    """The backend name ``impl`` stands for (``auto``: see :func:`auto`)."""
    if impl == "auto":
        V, size = (1, 4) if weight is None else (weight.shape[0], weight.element_size())
        return auto(device, V, size, memory_budget)
    if impl not in IMPLS:
        raise ValueError(f"impl must be 'auto', one of {IMPLS} or a backend object, got {impl!r}")
    return impl


@functools.cache
def get_backend(name: str) -> HeadBackend:
    if name == "eager":
        return EagerHead()
    if name == "chunked":
        return ChunkedHead("chunked", TORCH_EPILOGUES)
    if name == "cpp":
        from . import cpp

        if not cpp.available():
            raise RuntimeError(f"impl='cpp' is not available here: {cpp.unavailable_reason()}")
        return ChunkedHead("cpp", Epilogues(cpp.row_stats, cpp.dlogits_))
    if name in ("triton", "triton-tiled", "triton-tma"):
        from . import triton

        if not triton.available():
            raise RuntimeError(f"impl={name!r} needs triton and a CUDA device (or TRITON_INTERPRET=1 on the CPU)")
        if name == "triton-tiled":
            from .triton.head import TritonTiledHead

            return TritonTiledHead()
        if name == "triton-tma":
            from .triton.head import TritonTmaHead

            return TritonTmaHead()
        from .triton import epilogue

        return ChunkedHead("triton", Epilogues(epilogue.row_stats, epilogue.dlogits_))
    raise ValueError(f"impl must be 'auto' or one of {IMPLS} (or a backend object), got {name!r}")


def usable(name: str) -> bool:
    """Whether backend ``name`` can run on this machine (builds the C++ extension on first call)."""
    try:
        get_backend(name)
    except (RuntimeError, ImportError):
        return False
    return True


def auto(device, vocab_size: int, element_size: int, memory_budget=None) -> str:
    """``impl="auto"``: on CUDA the Triton chunk loop, or the tiled kernels when ``memory_budget``
    (bytes of working memory) holds fewer than MIN_CHUNK_ROWS rows of logits; on the CPU the C++
    epilogues; the PyTorch chunk loop where neither runs."""
    if device.type == "cuda":
        per_row = vocab_size * (4 + (element_size if element_size < 4 else 0))
        tiny = memory_budget is not None and memory_budget < MIN_CHUNK_ROWS * per_row
        preferred = ("triton-tiled", "triton", "chunked") if tiny else ("triton", "chunked")
    else:
        preferred = ("cpp", "chunked")
    return next(name for name in preferred if usable(name))
