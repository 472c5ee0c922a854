"""The one protocol every LM-head backend implements (the math is in ``ops/CONTRACT.md``).

A backend computes, for token rows h [N, H] against the LM head W [V, H] (+ b), the target log-prob
``lp``, the log-sum-exp ``lse`` and optionally the entropy ``ent`` of softmax((h W^T + b) * inv_tau),
and turns per-token coefficients g_lp = dL/dlp, g_ent = dL/dent into dh, dW, db. Every method takes
its arguments in one order, ``(h, W, b, y, inv_tau, ...)``, and returns a named tuple.

A loss of per-token terms reaches ``loss_and_grad`` as a :class:`rlsd_kernels.tokens.TokenTerms`,
called per chunk of rows as ``terms(rows, lp, ent, teacher_logprobs) -> (loss_t, g_lp, g_ent)``:
the detached per-token loss and its gradient coefficients (g_ent None when the loss does not
depend on the entropy).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, NamedTuple, Optional

import torch

if TYPE_CHECKING:
    from ..tokens import TokenTerms

Tensor = torch.Tensor


class Stats(NamedTuple):
    """Per-token statistics, float32 [N] (float64 for float64 inputs)."""

    lp: Tensor
    lse: Tensor
    ent: Optional[Tensor]
    teacher_logprobs: Optional[Tensor]


class Grads(NamedTuple):
    """Gradients in the compute dtype: dh [N, H], dW [V, H] and db [V] (None when not wanted)."""

    dh: Tensor
    dW: Optional[Tensor]
    db: Optional[Tensor]


class LossAndGrad(NamedTuple):
    loss_t: Tensor          # [N] per-token loss (already weighted by the aggregation)
    stats: Stats
    grads: Optional[Grads]  # None unless asked for


class JSDAndGrad(NamedTuple):
    jsd: Tensor             # [N] per-token JSD_beta(p_T || p_S), unweighted
    grads: Optional[Grads]


class HeadBackend(abc.ABC):
    """What every backend provides; ``loss_and_grad`` has a default composed of the other two."""

    name = "base"

    def vocab_size(self, W) -> int:
        """The vocabulary the targets index (a sharded head's is larger than its local W)."""
        return W.shape[0]

    def with_memory_budget(self, budget_bytes: Optional[int]) -> "HeadBackend":
        """This backend with at most ``budget_bytes`` of working memory (None: its default)."""
        return self

    @abc.abstractmethod
    def stats(self, h, W, b, y, inv_tau: float, compute_entropy: bool, teacher_hidden=None) -> Stats:
        """Student statistics (and the teacher's target log-prob when ``teacher_hidden`` is given)."""

    @abc.abstractmethod
    def backward(self, h, W, b, y, inv_tau: float, stats: Stats, g_lp, g_ent,
                 need_weight_grad: bool = True) -> Grads:
        """dh, dW, db of sum_t (g_lp_t lp_t + g_ent_t ent_t), given ``stats`` of the same inputs."""

    @abc.abstractmethod
    def jsd_loss_and_grad(self, h, W, b, teacher_hidden, inv_tau: float, beta: float, weights,
                          need_grad: bool, need_weight_grad: bool = True) -> JSDAndGrad:
        """Per-token JSD_beta(p_T || p_S) and the gradient of sum_t weights_t JSD_t (through p_S)."""

    def loss_and_grad(self, h, W, b, y, inv_tau: float, compute_entropy: bool, teacher_hidden,
                      terms: "TokenTerms", need_grad: bool, need_weight_grad: bool = True) -> LossAndGrad:
        """Statistics, per-token loss and (if ``need_grad``) the gradient. Chunked backends
        override it to form the gradient while each chunk's logits are in memory."""
        return two_passes(self, h, W, b, y, inv_tau, compute_entropy, teacher_hidden, terms, need_grad,
                          need_weight_grad)


def two_passes(algo, h, W, b, y, inv_tau, compute_entropy, teacher_hidden, terms, need_grad,
               need_weight_grad) -> LossAndGrad:
    """``loss_and_grad`` from ``algo.stats`` over all rows, the token terms once, then ``algo.backward``."""
    stats = algo.stats(h, W, b, y, inv_tau, compute_entropy, teacher_hidden)
    loss_t, g_lp, g_ent = terms(slice(0, h.shape[0]), stats.lp, stats.ent, stats.teacher_logprobs)
    grads = algo.backward(h, W, b, y, inv_tau, stats, g_lp, g_ent, need_weight_grad) if need_grad else None
    return LossAndGrad(loss_t, stats, grads)


def compute_dtype(h) -> torch.dtype:
    """Statistics and gradients are float32, float64 for float64 inputs."""
    return torch.float64 if h.dtype == torch.float64 else torch.float32
