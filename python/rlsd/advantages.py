"""Group-relative advantages and the RLSD lam schedule."""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, kind: str = "grpo", eps: float = 1e-6) -> torch.Tensor:
    """Advantages [G, n] from rewards [G, n] (G groups of n responses to one prompt).

    grpo:   A_i = (R_i - mean_G R) / (std_G R + eps)
    drgrpo: A_i =  R_i - mean_G R                      (Dr.GRPO: no std normalisation)
    A group of one response has advantage 0.
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    if kind == "grpo":
        return centred / (rewards.std(dim=1, keepdim=True) + eps)
    if kind == "drgrpo":
        return centred
    raise ValueError(f"advantage must be 'grpo' or 'drgrpo', got {kind!r}")


def lam_at(step: int, lam: float, schedule: str = "constant", lam_end: float = 0.0, decay_steps: int = 50,
           warmup_steps: int = 0) -> float:
    """lam for the batch after ``step`` optimizer steps (0 for the first batch).

    constant:      lam
    linear:        lam + (lam_end - lam) min(step / decay_steps, 1)
    warmup-decay:  the authors' schedule, on their step count g = step + 1 (W warmup, D decay steps):
                   lam g / W                      while g < W
                   lam max(1 - (g - W) / D, 0)    after, if D > 0 (else lam)
    """
    if schedule == "constant":
        return lam
    if schedule == "linear":
        return lam + (lam_end - lam) * min(step / max(decay_steps, 1), 1.0)
    if schedule == "warmup-decay":
        g = step + 1
        if warmup_steps > 0 and g < warmup_steps:
            return lam * g / warmup_steps
        return lam * max(1.0 - (g - warmup_steps) / decay_steps, 0.0) if decay_steps > 0 else lam
    raise ValueError(f"lam_schedule must be 'constant', 'linear' or 'warmup-decay', got {schedule!r}")
