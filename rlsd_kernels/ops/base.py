"""What every fused backend provides (the math is in ``ops/CONTRACT.md``).

A backend computes, for rows h [N, H] against the LM head W [V, H] (+ b), the target log-prob
``lp``, the log-sum-exp ``lse`` and optionally the entropy ``ent`` of softmax((h W^T + b) / tau),
and turns per-token coefficients g_lp = dL/dlp, g_ent = dL/dent into dh, dW, db, without
holding a [N, V] tensor.

``TokenFn(rows, lp, ent, lp_teacher) -> (loss_t, g_lp, g_ent)`` is the per-token loss of a chunk of
rows (a ``slice``): it returns the detached per-token loss and its gradient coefficients.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

TokenFn = Callable[[slice, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]],
                   tuple]


class HeadBackend:
    name = "base"

    def vocab_size(self, W) -> int:
        """The vocabulary the targets index (a sharded head's is larger than its local W)."""
        return W.shape[0]

    def stats(self, h, W, b, y, inv_tau: float, want_entropy: bool, h_teacher=None):
        """-> (lp, lse, ent or None, lp_teacher or None), all float32 [N]."""
        raise NotImplementedError

    def backward(self, h, W, b, y, inv_tau: float, lse, ent, g_lp, g_ent, need_weight_grad=True):
        """-> (dh [N, H], dW [V, H] or None, db [V] or None), float32."""
        raise NotImplementedError

    def loss_and_grad(self, h, W, b, y, inv_tau: float, want_entropy: bool, h_teacher,
                      token_fn: TokenFn, need_grad: bool, need_weight_grad: bool = True):
        """Forward statistics, per-token loss and (if ``need_grad``) the gradient, composed from
        :meth:`stats` and :meth:`backward`. Backends that can interleave them per chunk override it.

        -> (loss_t [N], lp [N], ent [N] or None, lp_teacher [N] or None, (dh, dW, db) or None)
        """
        lp, lse, ent, lp_teacher = self.stats(h, W, b, y, inv_tau, want_entropy, h_teacher)
        loss_t, g_lp, g_ent = token_fn(slice(0, h.shape[0]), lp, ent, lp_teacher)
        grads = (self.backward(h, W, b, y, inv_tau, lse, ent, g_lp, g_ent, need_weight_grad)
                 if need_grad else None)
        return loss_t, lp, ent, lp_teacher, grads
