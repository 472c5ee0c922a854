"""Triton (GPU) backends: the chunk loop with Triton epilogues (``"triton"``) and the fully tiled
kernels (``"triton-tiled"``).

Importable without a GPU (and even without triton); launching needs CUDA or TRITON_INTERPRET=1
(which must be set before this package is first imported).
"""

import os

import torch


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available() -> bool:
    """True iff triton imports and a CUDA device exists or TRITON_INTERPRET=1."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return bool(torch.cuda.is_available() or interpreted())
