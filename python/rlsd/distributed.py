"""Data parallelism under ``torchrun``: one process per device, DDP over the student's forward.

Every rank draws the same prompts and generates the same rollouts (same seed, same weights), so
rewards, advantages, dynamic sampling and the curriculum need no communication and equal those of
a single process exactly. Each rank then trains on ``samples[rank::world_size]``, normalised by the
denominator of the whole step, and DDP sums the ranks' gradients: the update is the
single-process update. Rollouts are therefore replicated, not split, across ranks.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .model import last_hidden_states


def init_distributed(device: torch.device):
    """(rank, world_size, device) from torchrun's environment; (0, 1, device) when not launched
    distributed. gloo on the CPU, NCCL on CUDA with one GPU per process (``cuda:LOCAL_RANK``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


class DecoderBody(torch.nn.Module):
    """The LM as a module whose forward returns the last hidden states [B, L, H]. DDP wraps it, so
    the student pass runs through DDP's forward and its gradient hooks reduce every parameter,
    ``lm_head.weight`` included (the fused loss uses it outside the forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return last_hidden_states(self.model, input_ids, attention_mask)


def wrap_student(model, device: torch.device) -> DistributedDataParallel:
    return DistributedDataParallel(DecoderBody(model), device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()
