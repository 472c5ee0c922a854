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
a build or its lock. A build lock left by a killed build (older than ``_STALE_LOCK_S``) is removed
with a warning instead of waited on forever. Loading happens on first use; nothing here raises at
import.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import threading
import time
import warnings
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
_STALE_LOCK_S = 600.0  # a build takes ~1 min; a lock this old belongs to a build that was killed

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
    from torch.utils.cpp_extension import _get_build_directory, load

    source = _source()
    digest = hashlib.sha1(source.read_bytes()).hexdigest()[:12]  # one build (and build lock) per source version
    name = f"rlsd_kernels_C_{digest}"
    build_dir = os.environ.get("RLSD_KERNELS_BUILD_DIR")
    if build_dir:
        os.makedirs(build_dir, exist_ok=True)
    _remove_stale_lock(Path(build_dir or _get_build_directory(name, verbose=False)) / "lock")
    return load(
        name=name,
        sources=[str(source)],
        extra_cflags=_CFLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=build_dir,
        verbose=False,
    )


def _remove_stale_lock(lock: Path) -> None:
    """torch waits forever on a build lock; one older than _STALE_LOCK_S has no live owner."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > _STALE_LOCK_S:
        warnings.warn(f"removing the stale extension build lock {lock} ({age:.0f} s old)", stacklevel=3)
        lock.unlink(missing_ok=True)


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


# The C++ guards' status codes, in csrc/epilogue.cpp's order (0 = fine).
STATUS = ("ok", "bad z", "bad targets", "target out of range", "bad inv_tau", "bad lp", "bad lse", "bad ent",
          "bad g_lp", "bad g_ent", "ent required")


def _raise(status: int):
    """A non-zero status from the C++ guards (unreachable through the checks below)."""
    if status:
        raise ValueError(f"C++ epilogue rejected its arguments: {STATUS[status] if status < len(STATUS) else status}")


def _check_row_vector(x, name: str, n: int):
    if not isinstance(x, torch.Tensor) or x.dim() != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype}")
    if x.device.type != "cpu" or not x.is_contiguous():
        raise ValueError(f"{name} must be a contiguous CPU tensor")


def _check(z, targets, inv_tau: float):
    """Every argument is checked here, in Python, before the extension runs: its errors are
    Python exceptions on any toolchain (the C++ side only guards, with status codes)."""
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise ValueError(f"z must be 2-D [n, V], got {getattr(z, 'shape', type(z).__name__)}")
    if z.dtype != torch.float32:
        raise ValueError(f"z must be float32, got {z.dtype}")
    if z.device.type != "cpu":
        raise ValueError("z must be a CPU tensor")
    if not z.is_contiguous():
        raise ValueError("z must be contiguous")
    n, V = z.shape
    if V <= 0:
        raise ValueError("z must have V > 0 columns")
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.shape[0] != n:
        raise ValueError(f"targets must have shape [{n}], got {getattr(targets, 'shape', type(targets).__name__)}")
    if targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64, got {targets.dtype}")
    if targets.device.type != "cpu" or not targets.is_contiguous():
        raise ValueError("targets must be a contiguous CPU tensor")
    bad = ((targets < 0) | (targets >= V)).nonzero()
    if bad.numel():
        t = int(bad[0, 0])
        raise ValueError(f"targets[{t}] = {int(targets[t])} is out of range [0, {V})")
    if not (inv_tau > 0 and math.isfinite(inv_tau)):
        raise ValueError(f"inv_tau must be finite and > 0, got {inv_tau}")


def row_stats(
    z: torch.Tensor, targets: torch.Tensor, inv_tau: float, compute_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(lp [n], lse [n], ent [n] or None) for z [n, V] float32 contiguous, targets [n] int64."""
    _check(z, targets, inv_tau)
    n = z.shape[0]
    lp = torch.empty(n, dtype=torch.float32)
    lse = torch.empty(n, dtype=torch.float32)
    ent = torch.empty(n if compute_entropy else 0, dtype=torch.float32)
    _raise(_ext().row_stats(z, targets, float(inv_tau), bool(compute_entropy), lp, lse, ent))
    return lp, lse, (ent if compute_entropy else None)


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
    _check(z, targets, inv_tau)
    n = z.shape[0]
    _check_row_vector(lse, "lse", n)
    _check_row_vector(g_lp, "g_lp", n)
    if n and g_ent is not None and g_ent.numel():
        _check_row_vector(g_ent, "g_ent", n)
        if ent is None or not ent.numel():
            raise ValueError("ent is required when g_ent is given")
        _check_row_vector(ent, "ent", n)
    _raise(_ext().dlogits_(z, targets, lse, g_lp, g_ent, ent, float(inv_tau)))
