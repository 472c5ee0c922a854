"""Triton (GPU) backend: fused linear + log-softmax statistics and gradients.

Importable without a GPU (and even without triton); launching needs CUDA or TRITON_INTERPRET=1
(which must be set before this package is first imported).
"""

try:
    from .logprobs import interpreted, linear_logprob_backward, linear_logprob_stats
    from .logprobs import available as _available

    _IMPORT_ERROR = None
except ImportError as _e:  # triton missing / broken
    _IMPORT_ERROR = _e

    def _unavailable(*args, **kwargs):
        raise RuntimeError(f"rlsd_kernels.ops.triton is unavailable: {_IMPORT_ERROR!r}")

    linear_logprob_stats = linear_logprob_backward = _unavailable

    def interpreted() -> bool:
        return False

    def _available() -> bool:
        return False


try:  # backend adapter (rlsd_kernels.ops.triton.head); absent if its dependencies are missing
    from .head import TritonHead  # noqa: F401
except ImportError:
    pass


def available() -> bool:
    """True iff triton imports and a CUDA device exists or TRITON_INTERPRET=1."""
    return _IMPORT_ERROR is None and _available()


__all__ = ["TritonHead", "available", "interpreted", "linear_logprob_stats", "linear_logprob_backward"]
