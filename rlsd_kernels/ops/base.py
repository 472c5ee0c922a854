"""The one protocol every LM-head backend implements (the math is in ``ops/CONTRACT.md``).

A backend computes, for token rows h [N, H] against the LM head W [V, H] (+ b), the target log-prob
``lp``, the log-sum-exp ``lse`` and optionally the entropy ``ent`` of softmax((h W^T + b) * inv_tau),
and turns per-token coefficients g_lp = dL/dlp, g_ent = dL/dent into dh, dW, db. What a call is
about (the head's tensors, the temperature, the teacher, the flags) comes in one frozen
:class:`HeadCall`; every method takes it first and returns a named tuple:

    stats(call) -> Stats
    backward(call, stats, g_lp, g_ent) -> Grads
    loss_and_grad(call, terms) -> LossAndGrad
    jsd_loss_and_grad(call, beta, weights) -> JSDAndGrad

A loss of per-token terms reaches ``loss_and_grad`` as a :class:`rlsd_kernels.tokens.TokenTerms`,
called per chunk of rows as ``terms(rows, lp, ent, teacher_logprobs) -> (loss_t, g_lp, g_ent)``:
the detached per-token loss and its gradient coefficients (g_ent None when the loss does not
depend on the entropy). When ``terms.needs_all_rows``, every backend calls it once on all rows
(:func:`two_passes`).
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from ..tokens import TokenTerms

Tensor = torch.Tensor


@dataclass(frozen=True)
class HeadCall:
    """One call of a backend: rows ``h`` [N, H] (and the teacher's, [N, H]) against ``W`` [V, H]
    (+ ``b`` [V]), targets ``y`` [N] int64 (None for the JSD), ``inv_tau`` = 1 / temperature;
    ``compute_entropy``: the statistics include the entropy; ``need_grad``: the loss methods form
    the gradient; ``need_weight_grad``: it includes dW and db."""

    h: Tensor
    W: Tensor
    b: Optional[Tensor]
    y: Optional[Tensor]
    inv_tau: float
    teacher_hidden: Optional[Tensor] = None
    compute_entropy: bool = False
    need_grad: bool = False
    need_weight_grad: bool = False

    @property
    def rows(self) -> int:
        return self.h.shape[0]

    def take(self, rows) -> "HeadCall":
        """The same call on ``rows`` (a slice or an index) of h, y and the teacher's rows."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return self.replace(h=self.h[rows], y=pick(self.y), teacher_hidden=pick(self.teacher_hidden))

    def replace(self, **changes) -> "HeadCall":
        return dataclasses.replace(self, **changes)


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
    grads: Optional[Grads]  # None unless call.need_grad


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
    def stats(self, call: HeadCall) -> Stats:
        """Student statistics (and the teacher's target log-prob when ``call.teacher_hidden`` is given)."""

    @abc.abstractmethod
    def backward(self, call: HeadCall, stats: Stats, g_lp, g_ent) -> Grads:
        """dh (and with ``call.need_weight_grad`` dW, db) of sum_t (g_lp_t lp_t + g_ent_t ent_t),
        given ``stats`` of the same call."""

    @abc.abstractmethod
    def jsd_loss_and_grad(self, call: HeadCall, beta: float, weights) -> JSDAndGrad:
        """Per-token JSD_beta(p_T || p_S) of ``call.h`` against ``call.teacher_hidden`` and (with
        ``call.need_grad``) the gradient of sum_t weights_t JSD_t (through p_S)."""

    def loss_and_grad(self, call: HeadCall, terms: TokenTerms) -> LossAndGrad:
        """Statistics, per-token loss and (with ``call.need_grad``) the gradient. Chunked backends
        override it to form the gradient while each chunk's logits are in memory (unless
        ``terms.needs_all_rows``)."""
        return two_passes(self, call, terms)


def two_passes(algo, call: HeadCall, terms: TokenTerms) -> LossAndGrad:
    """``loss_and_grad`` from ``algo.stats`` over all rows, the token terms once, then ``algo.backward``."""
    stats = algo.stats(call)
    loss_t, g_lp, g_ent = terms(slice(0, call.rows), stats.lp, stats.ent, stats.teacher_logprobs)
    grads = algo.backward(call, stats, g_lp, g_ent) if call.need_grad else None
    return LossAndGrad(loss_t, stats, grads)
