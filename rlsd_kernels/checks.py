"""Argument checks: every bad input gets a ValueError / TypeError naming the argument.

Value checks (NaN/inf, token ids out of range, log-probs above 0, mask values other than 0 and 1)
raise at once for CPU tensors; on an accelerator they are queued as device-side asserts
(``torch._assert_async``) so a loss never syncs the host. Under ``torch.compile`` they are skipped
(reading a value on the host would break the graph); every other check runs while tracing.
"""

from __future__ import annotations

import math
import numbers

import torch

from .math import LOSS_AGGS, compute_dtype


def _value_check(ok: torch.Tensor, message: str):
    if torch.compiler.is_compiling():
        return
    if ok.device.type == "cpu":
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)


def tensor(t, name: str):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def floating(t, name: str, ndim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if ndim is not None and t.dim() not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def finite(t, name: str):
    """One streaming pass, no [numel] temporaries. CPU: a sum is finite only if every element is
    (a non-finite sum may be an overflow of finite values, so that case is looked at exactly).
    Accelerators: max |t| (one reduction that propagates NaN), checked without a host sync."""
    if t.numel() == 0 or torch.compiler.is_compiling():
        return
    if t.device.type != "cpu":
        _value_check(torch.isfinite(torch.linalg.vector_norm(t, float("inf"))), f"{name} contains NaN or inf")
        return
    total = t.sum(dtype=compute_dtype(t))
    if torch.isfinite(total):
        return
    _value_check(torch.isfinite(t).all(), f"{name} contains NaN or inf")


def same_shape(t, name: str, shape, what: str):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), got {tuple(t.shape)}")


def same_device(device, **tensors):
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {device}: put all inputs on one device")


_MINMAX_INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def head(hidden, weight, bias, targets, temperature, hidden_ndim, vocab_size=None):
    """Checks of the LM-head inputs shared by every entry point. ``vocab_size``: the range of the
    token ids when ``weight`` is one shard of a larger head."""
    floating(hidden, "hidden", hidden_ndim)
    if hidden.dim() == 0:
        raise ValueError("hidden must have a last dimension (the hidden size), got a 0-d tensor")
    floating(weight, "weight", 2)
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must have shape [V, {hidden.shape[-1]}] (hidden size of hidden), "
                         f"got {tuple(weight.shape)}")
    V = weight.shape[0]
    if bias is not None:
        floating(bias, "bias", 1)
        same_shape(bias, "bias", (V,), "one entry per vocabulary row of weight")
        if bias.dtype != weight.dtype:
            raise TypeError(f"bias dtype {bias.dtype} differs from weight dtype {weight.dtype}")
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex() \
            or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor of token ids, got "
                        f"{getattr(targets, 'dtype', type(targets).__name__)}")
    same_shape(targets, "targets", hidden.shape[:-1], "hidden without its last dimension")
    number(temperature, "temperature", low=0.0, low_open=True)
    same_device(hidden.device, weight=weight, bias=bias, targets=targets)
    finite(hidden, "hidden")
    finite(weight, "weight")
    if bias is not None:
        finite(bias, "bias")
    if targets.numel():
        V = V if vocab_size is None else vocab_size
        ids = targets if targets.dtype in _MINMAX_INTS else targets.long()  # no min/max for uint16..64
        _value_check((ids.min() >= 0) & (ids.max() < V),
                     f"targets must be token ids in [0, {V}) (the vocabulary size of weight)")


def per_token(t, name: str, shape, device):
    """An optional [B, T] per-token input (logprobs, weights, masks)."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    same_shape(t, name, shape, "one value per token, like targets")
    same_device(device, **{name: t})
    if t.is_floating_point():
        finite(t, name)
    return t


def number(value, name: str, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """A finite real number (not a bool, string or tensor) within [low, high] (open ends where
    asked), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    ok = math.isfinite(v)
    if low is not None:
        ok = ok and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        if low is not None and high is not None:
            where = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            where = f" {'>' if low_open else '>='} {low:g}"
        else:
            where = "" if high is None else f" {'<' if high_open else '<='} {high:g}"
        raise ValueError(f"{name} must be a finite number{where}, got {value!r}")
    return v


def flag(value, name: str) -> bool:
    """A bool (Python or NumPy); other truthy values such as "no" or 2 are refused."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def count(value, name: str, allow_none=True):
    """A whole number > 0 (bytes, rows), or None when allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a whole number > 0{' (or None)' if allow_none else ''}, got {value!r}")
    return int(value)


def mask(t, shape, device):
    """The [B, T] response mask: any dtype (bool, integer, float), every value 0 or 1."""
    tensor(t, "mask")
    same_shape(t, "mask", shape, "one entry per token, like targets")
    same_device(device, mask=t)
    if t.is_floating_point():
        finite(t, "mask")
    if t.dtype != torch.bool and t.numel():
        _value_check(((t == 0) | (t == 1)).all(), "mask must hold only 0 and 1 (a weight per token goes in "
                     "token_weights)")
    return t


LOGPROB_TOLERANCE = 1e-4  # a log-prob may exceed 0 by this much: the rounding of a low-precision log-softmax


def logprobs(t, name: str, mask_, tolerance=LOGPROB_TOLERANCE):
    """Log-probs are <= 0 (up to ``tolerance``; inf: not checked) wherever ``mask_`` counts the
    token; masked positions may hold anything finite."""
    if t is not None and t.numel() and tolerance != math.inf:
        _value_check(((t <= tolerance) | (mask_ == 0)).all(),
                     f"{name} must be log-probabilities (<= 0, with a rounding tolerance of "
                     f"{tolerance:g}) at the unmasked tokens, got a larger value")


def normalizer(value, device):
    """The aggregation's denominator: None, a finite number > 0, or a one-element tensor holding
    one (checked on the device without a host sync)."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        return number(value, "normalizer", low=0.0, low_open=True)
    if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
        raise ValueError(f"normalizer must be a number > 0 or a one-element real tensor, got "
                         f"{value.dtype} of shape {tuple(value.shape)}")
    if value.device.type != "cpu":
        same_device(device, normalizer=value)
    v = value.reshape(())
    _value_check(torch.isfinite(v) & (v > 0), "normalizer must be a finite number > 0")
    return value


def loss_inputs(vocab_size, hidden, weight, targets, mask_, bias, temperature, teacher_hidden, loss_agg, normalizer_,
                logprob_tolerance=LOGPROB_TOLERANCE, **optional):
    """The tensor arguments shared by the losses (``optional``: the optional [B, T] ones, by name;
    ``vocab_size``: as in :func:`head`; ``logprob_tolerance`` as in :func:`logprobs`, for the old and
    reference log-probs)."""
    head(hidden, weight, bias, targets, temperature, 3, vocab_size)
    shape = targets.shape
    mask(mask_, shape, hidden.device)
    same_device(hidden.device, teacher_hidden=teacher_hidden)
    if teacher_hidden is not None:
        floating(teacher_hidden, "teacher_hidden", 3)
        same_shape(teacher_hidden, "teacher_hidden", hidden.shape, "like hidden")
        if teacher_hidden.dtype != hidden.dtype:
            raise TypeError(f"teacher_hidden dtype {teacher_hidden.dtype} differs from hidden dtype {hidden.dtype}")
        finite(teacher_hidden, "teacher_hidden")
    if teacher_hidden is not None and optional.get("teacher_logprobs") is not None:
        raise ValueError("pass teacher_hidden or teacher_logprobs, not both (one of them would be ignored)")
    for name, t in optional.items():
        per_token(t, name, shape, hidden.device)
        if name.endswith("logprobs"):
            logprobs(t, name, mask_, logprob_tolerance if name in ("old_logprobs", "ref_logprobs") else LOGPROB_TOLERANCE)
        if name == "rollout_is_weights" and t is not None and t.numel():
            _value_check(((t >= 0) | (mask_ == 0)).all(), f"{name} must be >= 0 at the unmasked tokens (importance "
                                                           "weights), got a negative value")
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {loss_agg!r}")
    normalizer(normalizer_, hidden.device)
