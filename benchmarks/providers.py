"""What is benchmarked: each provider turns the shared inputs into a fwd+bwd closure.

``rlsd-<impl>`` is our fused loss, ``eager`` the reference that materialises the logits, and
``gemm-floor`` the four GEMMs a fused RLSD step cannot avoid (student logits, teacher logits,
dL/dhidden, dL/dweight) on their own.
"""

from __future__ import annotations

import torch

from rlsd_kernels import rlsd_loss


def rlsd_step(impl):
    def make(x):
        def step():
            loss, _ = rlsd_loss(x["hidden"], x["weight"], x["targets"], x["advantages"], x["mask"],
                                teacher_hidden=x["teacher_hidden"], old_logprobs=x["old_logprobs"], impl=impl)
            loss.backward()
            x["hidden"].grad = x["weight"].grad = None
        return step
    return make


def gemm_floor(x):
    h = x["hidden"].detach().reshape(-1, x["hidden"].shape[-1])
    h_t = x["teacher_hidden"].reshape(-1, h.shape[1])
    w = x["weight"].detach()
    logits = torch.empty(h.shape[0], w.shape[0], dtype=h.dtype)

    def step():
        torch.mm(h, w.t(), out=logits)      # student logits
        torch.mm(h_t, w.t(), out=logits)    # teacher logits
        torch.mm(logits, w)                 # dL/dhidden
        torch.mm(logits.t(), h)             # dL/dweight
    return step


def gemm_floor_flops(N, H, V):
    return 4 * 2 * N * H * V


def providers(impls):
    out = {f"rlsd-{name}": rlsd_step(name) for name in impls if name != "eager"}
    out["eager"] = rlsd_step("eager")
    out["gemm-floor"] = gemm_floor
    return out
