"""C++ (ATen + OpenMP) CPU epilogues for the fused linear + log-softmax losses.

Math (see CONTRACT.md), per row t of a float32 logits chunk z [n, V] (bias included, temperature
not applied), with s = z * inv_tau and p = exp(s - lse):

    lse_t = logsumexp_v s_tv
    lp_t  = s_{t, y_t} - lse_t
    ent_t = lse_t - sum_v p_tv s_tv
    dz_tv = inv_tau * (g_lp_t * (1[v = y_t] - p_tv) - g_ent_t * p_tv * (s_tv - lse_t + ent_t))

The extension is the prebuilt ``rlsd_kernels._C`` when present, otherwise it is JIT-compiled from
``csrc/epilogue.cpp`` (looked up in ``rlsd_kernels/csrc``, ``<repo>/csrc`` for a source checkout,
then ``<sys.prefix>/share/rlsd-kernels/csrc`` where setup.py's data_files put it) with
``torch.utils.cpp_extension.load`` into ``$RLSD_KERNELS_BUILD_DIR`` (default: torch's extension
cache), under a name carrying the source's hash, so two checkouts of different versions never share
a build or its lock. Loading happens on first use; nothing here raises at import.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_SOURCE_NAME = "epilogue.cpp"
_SOURCE_DIRS = (
    _PACKAGE_DIR / "csrc",
    _PACKAGE_DIR.parent / "csrc",
    Path(sys.prefix) / "share" / "rlsd-kernels" / "csrc",
)
_CFLAGS = ["-O3", "-march=native", "-fopenmp"]

_lock = threading.Lock()
_module: ModuleType | None = None
_reason: str | None = None  # why the extension is unavailable, once a load has failed


def _source() -> Path:
    for csrc in _SOURCE_DIRS:
        path = csrc / _SOURCE_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{_SOURCE_NAME} not found in any of {[str(d) for d in _SOURCE_DIRS]}")


def _load() -> ModuleType:
    try:
        from rlsd_kernels import _C  # prebuilt by setup.py

        return _C
    except ImportError:
        pass
    from torch.utils.cpp_extension import load

    build_dir = os.environ.get("RLSD_KERNELS_BUILD_DIR")
    if build_dir:
        os.makedirs(build_dir, exist_ok=True)
    source = _source()
    digest = hashlib.sha1(source.read_bytes()).hexdigest()[:12]  # one build (and build lock) per source version
    return load(
        name=f"rlsd_kernels_C_{digest}",
        sources=[str(source)],
        extra_cflags=_CFLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=build_dir,
        verbose=False,
    )


def _get() -> ModuleType | None:
    global _module, _reason
    with _lock:
        if _module is None and _reason is None:
            try:
                _module = _load()
            except Exception as exc:  # no compiler, missing headers, build error, ...
                _reason = f"{type(exc).__name__}: {exc}"
        return _module


def available() -> bool:
    """True if the extension is importable or builds (first call may compile, ~1 min); cached."""
    return _get() is not None


def unavailable_reason() -> str | None:
    """Why ``available()`` is False (None if it is True or has not been called)."""
    return _reason


def _ext() -> ModuleType:
    module = _get()
    if module is None:
        raise RuntimeError(f"rlsd_kernels C++ extension unavailable: {_reason}")
    return module


def _raise(error: str):
    """The extension reports bad arguments as a message (no C++ exception crosses into Python)."""
    if error:
        raise ValueError(error)


def row_stats(
    z: torch.Tensor, targets: torch.Tensor, inv_tau: float, want_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(lp [n], lse [n], ent [n] or None) for z [n, V] float32 contiguous, targets [n] int64."""
    n = z.shape[0] if z.dim() else 0
    lp = torch.empty(n, dtype=torch.float32)
    lse = torch.empty(n, dtype=torch.float32)
    ent = torch.empty(n if want_entropy else 0, dtype=torch.float32)
    _raise(_ext().row_stats(z, targets, float(inv_tau), bool(want_entropy), lp, lse, ent))
    return lp, lse, (ent if want_entropy else None)


def dlogits_(
    z: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    g_lp: torch.Tensor,
    g_ent: torch.Tensor | None,
    ent: torch.Tensor | None,
    inv_tau: float,
) -> None:
    """Overwrite z [n, V] with dz, given lse (and ent) from ``row_stats`` on the same z and inv_tau.

    g_ent None (or empty) skips the entropy term; otherwise ent is required.
    """
    _raise(_ext().dlogits_(z, targets, lse, g_lp, g_ent, ent, float(inv_tau)))
