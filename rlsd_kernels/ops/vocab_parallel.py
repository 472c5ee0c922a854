"""Vocabulary-parallel LM head: each rank holds rows [start, start + V_r) of W (and b).

The chunk loop of :class:`ChunkedHead` is kept; only the per-chunk reductions change. With
s = z / tau on the local shard, every rank computes its local max m_r, sum-exp
S_r = sum_v exp(s_v - m), the target logit if the target is in its shard (else 0) and, for the
entropy, E_r = sum_v exp(s_v - m) s_v; one all-reduce (max) and one all-reduce (sum) then give

    lse = m + log sum_r S_r,   lp = s_y - lse,   ent = lse - (sum_r E_r) / (sum_r S_r)

on every rank, so the per-token loss and its coefficients are identical everywhere. dz is local
(the one-hot term only where the target lives), dW and db stay local, and dh = sum_r dz_r W_r is
all-reduced. Collectives are explicit: this backend exists only when a process group is passed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import checks
from .chunked import ChunkedHead, Epilogues


class VocabParallel(ChunkedHead):
    """Pass as ``impl=VocabParallel(group)`` with the local shard of the LM head as ``weight``."""

    low_precision_gemms = False  # its epilogues write dz in place, in the statistics dtype

    def __init__(self, group=None, chunk_bytes=None):
        if group is not None and not isinstance(group, dist.ProcessGroup):
            raise TypeError(f"group must be a torch.distributed ProcessGroup (None: the default group), "
                            f"got {type(group).__name__}")
        super().__init__("vocab-parallel", chunk_bytes=checks.count(chunk_bytes, "chunk_bytes"))
        self.group = group

    def vocab_range(self, W):
        """(start of this rank's shard, total vocabulary size): shard sizes are gathered once per call."""
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(sizes, torch.tensor([W.shape[0]], dtype=torch.int64), group=self.group)
        sizes = [int(s) for s in sizes]
        rank = dist.get_rank(self.group)
        return sum(sizes[:rank]), sum(sizes)

    def vocab_size(self, W):
        return self.vocab_range(W)[1]

    def _plan(self, h, W, b, vocab_size=None, buffer=True):
        """As the base, with this rank's offset; chunks are sized by the whole vocabulary so that
        every rank takes the same chunks (and so the same collectives) whatever its shard size."""
        self._start, total = self.vocab_range(W)
        return super()._plan(h, W, b, total, buffer)

    def _local_targets(self, y, V_local):
        local = (y >= self._start) & (y < self._start + V_local)
        return local, (y - self._start).clamp(0, V_local - 1)

    def _epilogues(self, dtype):
        return Epilogues(self._row_stats, self._dlogits_)

    def _row_stats(self, z, y, inv_tau, want_entropy):
        local, y_local = self._local_targets(y, z.shape[1])
        s = z * inv_tau
        m = s.amax(-1)
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=self.group)
        e = torch.exp(s - m.unsqueeze(1))
        parts = [e.sum(-1), torch.where(local, s.gather(1, y_local.unsqueeze(1)).squeeze(1), 0.0)]
        if want_entropy:
            parts.append((e * s).sum(-1))
        parts = torch.stack(parts)
        dist.all_reduce(parts, group=self.group)
        lse = m + parts[0].log()
        ent = lse - parts[2] / parts[0] if want_entropy else None
        return parts[1] - lse, lse, ent

    def _dlogits_(self, z, y, lse, g_lp, g_ent, ent, inv_tau):
        """dz on the local shard; the one-hot term only on the rank that holds the target."""
        local, y_local = self._local_targets(y, z.shape[1])
        z.mul_(inv_tau).sub_(lse.unsqueeze(1))  # log p
        coef = g_lp.unsqueeze(1)
        if g_ent is not None:
            coef = (z + ent.unsqueeze(1)).mul_(g_ent.unsqueeze(1)).add_(coef)
        z.exp_().mul_(coef).mul_(-inv_tau)
        z.scatter_add_(1, y_local.unsqueeze(1), torch.where(local, inv_tau * g_lp, 0.0).unsqueeze(1).to(z.dtype))

    def _accumulate(self, dz, hc, plan, sl, grads):
        super()._accumulate(dz, hc, plan, sl, grads)
        dist.all_reduce(grads.dh[sl], group=self.group)

    def jsd_loss_and_grad(self, *args, **kwargs):
        raise NotImplementedError("the full-vocabulary JSD is not implemented for a vocabulary-parallel head")
