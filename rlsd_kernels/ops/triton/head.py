"""The fully tiled Triton kernels behind the backend protocol (impls ``"triton-tiled"`` and
``"triton-tma"``).

The lowest-memory mode: no logits buffer at all, only [BLOCK_N, BLOCK_V] register tiles, at the
price of recomputing the logits in the backward (see ``logprobs.py``). ``triton-tma`` runs the same
algorithm with TMA operand loads and 128 x 128 tiles (``tma.py``) where the shapes allow, the
pointer kernels elsewhere. Float64 inputs and the full-vocabulary JSD go through the chunked
PyTorch path.
"""

from __future__ import annotations

import torch

from ..base import Grads, HeadBackend, HeadCall, Stats
from ..chunked import ChunkedHead
from . import tma
from .logprobs import linear_logprob_backward, linear_logprob_stats


class TritonTiledHead(HeadBackend):
    name = "triton-tiled"

    def __init__(self):
        self._exact = ChunkedHead("chunked")

    def stats(self, call: HeadCall):
        if call.h.dtype == torch.float64:
            return self._exact.stats(call)
        return Stats(*linear_logprob_stats(call.h, call.W, call.b, call.y, call.inv_tau, call.compute_entropy,
                                           call.teacher_hidden))

    def backward(self, call: HeadCall, stats, g_lp, g_ent):
        if call.h.dtype == torch.float64:
            return self._exact.backward(call, stats, g_lp, g_ent)
        return Grads(*linear_logprob_backward(call.h, call.W, call.b, call.y, call.inv_tau, stats.lse, g_lp.float(),
                                              None if g_ent is None else g_ent.float(), stats.ent,
                                              need_weight_grad=call.need_weight_grad))

    def jsd_loss_and_grad(self, call: HeadCall, beta, weights):
        return self._exact.jsd_loss_and_grad(call, beta, weights)


class TritonTmaHead(TritonTiledHead):
    name = "triton-tma"

    def stats(self, call: HeadCall):
        if call.h.dtype == torch.float64 or not tma.supported(call.h, call.W):
            return super().stats(call)
        return Stats(*tma.linear_logprob_stats(call.h, call.W, call.b, call.y, call.inv_tau, call.compute_entropy,
                                               call.teacher_hidden))

    def backward(self, call: HeadCall, stats, g_lp, g_ent):
        if call.h.dtype == torch.float64 or not tma.supported(call.h, call.W):
            return super().backward(call, stats, g_lp, g_ent)
        ent = stats.ent
        if g_ent is not None and ent is None:
            ent = tma.linear_logprob_stats(call.h, call.W, call.b, call.y, call.inv_tau, True)[2]
        return Grads(*tma.linear_logprob_backward(call.h, call.W, call.b, call.y, call.inv_tau, stats.lse, g_lp,
                                                  g_ent, ent, need_weight_grad=call.need_weight_grad))
