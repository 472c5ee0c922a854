"""The Triton kernels behind the backend interface.

Float64 inputs go through the chunked PyTorch path (Triton's float64 dots are neither fast nor
supported by every GPU); the full-vocabulary JSD also uses the chunked path's epilogue.
"""

from __future__ import annotations

import torch

from ..base import HeadBackend
from ..chunked import ChunkedHead
from .logprobs import linear_logprob_backward, linear_logprob_stats


class TritonHead(HeadBackend):
    name = "triton"

    def __init__(self):
        self._float64 = ChunkedHead("chunked")
        self.jsd_loss_and_grad = self._float64.jsd_loss_and_grad

    def stats(self, h, W, b, y, inv_tau, want_entropy, h_teacher=None):
        if h.dtype == torch.float64:
            return self._float64.stats(h, W, b, y, inv_tau, want_entropy, h_teacher)
        return linear_logprob_stats(h, W, b, y, inv_tau, want_entropy, h_teacher)

    def backward(self, h, W, b, y, inv_tau, lse, ent, g_lp, g_ent, need_weight_grad=True):
        if h.dtype == torch.float64:
            return self._float64.backward(h, W, b, y, inv_tau, lse, ent, g_lp, g_ent, need_weight_grad)
        return linear_logprob_backward(h, W, b, y, inv_tau, lse, g_lp.float(),
                                       None if g_ent is None else g_ent.float(), ent,
                                       need_weight_grad=need_weight_grad)
