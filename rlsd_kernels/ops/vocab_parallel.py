"""Vocabulary-parallel LM head: each rank holds rows [start, start + V_r) of W (and b).

The row sweep of :class:`ChunkedHead` is kept; only the per-chunk reductions change. With
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
from .chunked import ChunkedHead, Epilogues, torch_dlogits_


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

    def _plan(self, h, W, b, gemm_in_input_dtype, buffer=True, vocab_size=None):
        """As the base, with this rank's offset; chunks are sized by the whole vocabulary so that
        every rank takes the same chunks (and so the same collectives) whatever its shard size."""
        self._start, total = self.vocab_range(W)
        return super()._plan(h, W, b, gemm_in_input_dtype, buffer, total)

    def _epilogues(self, dtype):
        return Epilogues(self._row_stats, self._dlogits_)

    def _row_stats(self, z, y, inv_tau, compute_entropy):
        V_local = z.shape[1]
        local = (y >= self._start) & (y < self._start + V_local)
        s = z * inv_tau
        m = s.amax(-1)
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=self.group)
        e = torch.exp(s - m.unsqueeze(1))
        y_local = (y - self._start).clamp(0, V_local - 1)
        parts = [e.sum(-1), torch.where(local, s.gather(1, y_local.unsqueeze(1)).squeeze(1), 0.0)]
        if compute_entropy:
            parts.append((e * s).sum(-1))
        parts = torch.stack(parts)
        dist.all_reduce(parts, group=self.group)
        lse = m + parts[0].log()
        ent = lse - parts[2] / parts[0] if compute_entropy else None
        return parts[1] - lse, lse, ent

    def _dlogits_(self, z, y, lse, g_lp, g_ent, ent, inv_tau):
        """dz on the local shard: targets in another rank's shard fall outside [0, V_local) and add
        no one-hot term."""
        torch_dlogits_(z, y - self._start, lse, g_lp, g_ent, ent, inv_tau)

    def _accumulate(self, dz, hc, plan, sl, grads):
        super()._accumulate(dz, hc, plan, sl, grads)
        dist.all_reduce(grads.dh[sl], group=self.group)

    def jsd_loss_and_grad(self, *args, **kwargs):
        raise NotImplementedError("the full-vocabulary JSD is not implemented for a vocabulary-parallel head")
