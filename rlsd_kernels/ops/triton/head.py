"""The fully tiled Triton kernels behind the backend protocol (impl ``"triton-tiled"``).

The lowest-memory mode: no logits buffer at all, only [BLOCK_N, BLOCK_V] register tiles, at the
price of recomputing the logits in the backward (see ``logprobs.py``). Float64 inputs and the
full-vocabulary JSD go through the chunked PyTorch path.
"""

from __future__ import annotations

import torch

from ..base import Grads, HeadBackend, Stats
from ..chunked import ChunkedHead
from .logprobs import linear_logprob_backward, linear_logprob_stats


class TritonTiledHead(HeadBackend):
    name = "triton-tiled"

    def __init__(self):
        self._exact = ChunkedHead("chunked")

    def stats(self, h, W, b, y, inv_tau, compute_entropy, teacher_hidden=None):
        if h.dtype == torch.float64:
            return self._exact.stats(h, W, b, y, inv_tau, compute_entropy, teacher_hidden)
        return Stats(*linear_logprob_stats(h, W, b, y, inv_tau, compute_entropy, teacher_hidden))

    def backward(self, h, W, b, y, inv_tau, stats, g_lp, g_ent, need_weight_grad=True):
        if h.dtype == torch.float64:
            return self._exact.backward(h, W, b, y, inv_tau, stats, g_lp, g_ent, need_weight_grad)
        return Grads(*linear_logprob_backward(h, W, b, y, inv_tau, stats.lse, g_lp.float(),
                                              None if g_ent is None else g_ent.float(), stats.ent,
                                              need_weight_grad=need_weight_grad))

    def jsd_loss_and_grad(self, h, W, b, teacher_hidden, inv_tau, beta, weights, need_grad, need_weight_grad=True):
        return self._exact.jsd_loss_and_grad(h, W, b, teacher_hidden, inv_tau, beta, weights, need_grad,
                                             need_weight_grad)
