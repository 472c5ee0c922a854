"""Argument checks: every bad input gets a ValueError / TypeError naming the argument.

Value checks (NaN/inf, token ids out of range) raise at once for CPU tensors; on an accelerator
they are queued as device-side asserts (``torch._assert_async``) so a loss never syncs the host.
"""

from __future__ import annotations

import torch


def _value_check(ok: torch.Tensor, message: str):
    if ok.device.type == "cpu":
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)


def floating(t, name: str, ndim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if ndim is not None and t.dim() not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def finite(t, name: str):
    """A sum is finite only if every element is (one streaming pass, no [numel] bool tensor);
    a non-finite sum may still be an overflow of finite values, so that case is looked at exactly."""
    if t.numel() == 0:
        return
    total = t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    if t.device.type == "cpu" and torch.isfinite(total):
        return
    _value_check(torch.isfinite(t).all(), f"{name} contains NaN or inf")


def same_shape(t, name: str, shape, what: str):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), got {tuple(t.shape)}")


def same_device(device, **tensors):
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but hidden is on {device}: put all inputs on one device")


def head(hidden, weight, bias, targets, temperature, hidden_ndim, vocab_size=None):
    """Checks of the LM-head inputs shared by every entry point. ``vocab_size``: the range of the
    token ids when ``weight`` is one shard of a larger head."""
    floating(hidden, "hidden", hidden_ndim)
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
    if not (isinstance(temperature, (int, float)) and temperature > 0 and temperature != float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    same_device(hidden.device, weight=weight, bias=bias, targets=targets)
    finite(hidden, "hidden")
    finite(weight, "weight")
    if bias is not None:
        finite(bias, "bias")
    if targets.numel():
        V = V if vocab_size is None else vocab_size
        _value_check((targets.min() >= 0) & (targets.max() < V),
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


def positive(value, name: str, allow_zero=True):
    ok = isinstance(value, (int, float)) and (value >= 0 if allow_zero else value > 0)
    if not ok or value != value:
        raise ValueError(f"{name} must be a number {'>=' if allow_zero else '>'} 0, got {value!r}")
