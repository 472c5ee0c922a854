"""Benchmark inputs, made the same way for every provider."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SEQ_LEN = 1024  # tokens per response; N tokens are N / SEQ_LEN sequences


@dataclass(frozen=True)
class Shape:
    N: int
    H: int
    V: int
    dtype: str = "float32"

    @property
    def torch_dtype(self):
        return getattr(torch, self.dtype)

    def label(self):
        return f"N={self.N} H={self.H} V={self.V} {self.dtype}"

    def logits_bytes(self):
        return self.N * self.V * 4


def make_inputs(shape: Shape, device="cpu", seed=0):
    """Student/teacher hidden states, LM head, sampled tokens, advantages, rollout log-probs."""
    g = torch.Generator().manual_seed(seed)
    B = max(1, shape.N // SEQ_LEN)
    T = shape.N // B
    dt = shape.torch_dtype

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dt)

    hidden = randn(B, T, shape.H).requires_grad_()
    return dict(
        hidden=hidden,
        weight=randn(shape.V, shape.H, scale=shape.H ** -0.5).requires_grad_(),
        targets=torch.randint(0, shape.V, (B, T), generator=g).to(device),
        advantages=torch.randn(B, generator=g).to(device),
        mask=torch.ones(B, T, device=device),
        teacher_hidden=randn(B, T, shape.H),
        old_logprobs=(-torch.rand(B, T, generator=g) * 8).to(device),
    )
