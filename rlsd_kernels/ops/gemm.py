"""The GEMMs of a chunk: logits z = h W^T (+ b), dh = dz W, dW = dz^T h, db = sum dz.

On CUDA with bfloat16 / float16 operands the GEMMs run in that dtype on the tensor cores and write
float32 results (``torch.mm(..., out_dtype=torch.float32)``, float32 accumulation inside); dh is
accumulated over vocabulary blocks in float32 by ``addmm(..., out_dtype=torch.float32)``. A torch
build without those GEMMs (checked once per device and dtype, against a float32 product) takes
the float32 path of every other device and dtype: operands converted to float32, GEMMs in place.
"""

from __future__ import annotations

import functools

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def low_precision(h) -> bool:
    """Whether this call's GEMMs run in the operands' low-precision dtype (CUDA bf16 / fp16)."""
    return h.is_cuda and h.dtype in LOW_PRECISION and has_out_dtype(h.device, h.dtype)


@functools.cache
def has_out_dtype(device: torch.device, dtype: torch.dtype) -> bool:
    """mm / addmm with ``out_dtype=float32`` work for these operands (and give the float32 product)."""
    try:
        a = torch.randn(16, 32, device=device).to(dtype)
        b = torch.randn(32, 8, device=device).to(dtype)
        c = torch.mm(a, b, out_dtype=torch.float32)
        torch.addmm(c, a, b, out_dtype=torch.float32, out=c)
        return bool(torch.allclose(c, 2 * (a.float() @ b.float()), rtol=1e-3, atol=1e-3))
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def mm_f32(a, b, out):
    """out (float32) = a @ b for low-precision a, b: tensor-core products, float32 accumulation."""
    return torch.mm(a, b, out_dtype=torch.float32, out=out)


def addmm_f32(acc, a, b):
    """acc (float32) += a @ b for low-precision a, b."""
    return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)


def logits(hc, W, b, out):
    """z = hc W^T + b into ``out`` ([n, V], float32 or float64); ``b`` is in out's dtype."""
    if hc.dtype == out.dtype:
        return torch.mm(hc, W.t(), out=out) if b is None else torch.addmm(b, hc, W.t(), out=out)
    mm_f32(hc, W.t(), out)
    return out if b is None else out.add_(b)


def backward(dz, hc, W, grads, sl, first: bool):
    """dh[sl] = dz W; dW = / += dz^T hc; db = / += sum_rows dz (``first``: the first chunk writes)."""
    dh, dW, db = grads
    if dz.dtype == dh.dtype:
        torch.mm(dz, W, out=dh[sl])
        if dW is not None:
            torch.mm(dz.t(), hc, out=dW) if first else dW.addmm_(dz.t(), hc)
    else:
        mm_f32(dz, W, dh[sl])
        if dW is not None:
            mm_f32(dz.t(), hc, dW) if first else addmm_f32(dW, dz.t(), hc)
    if db is not None:
        part = dz.sum(0, dtype=db.dtype)
        db.copy_(part) if first else db.add_(part)
