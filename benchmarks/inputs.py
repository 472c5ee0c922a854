"""Benchmark inputs, made the same way for every provider, and the LM-head shapes to sweep."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SEQ_LEN = 1024  # tokens per response; N tokens are N / SEQ_LEN sequences

# LM heads of real models: (hidden H, vocabulary V). "demo" is the shape of the `make demo` table.
PRESETS = {
    "demo": (512, 32768),
    "qwen2.5-0.5b": (896, 151936),
    "qwen2.5-7b": (3584, 152064),
    "llama-3-8b": (4096, 128256),
}

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class Shape:
    N: int
    H: int
    V: int
    dtype: str = "float32"

    @property
    def torch_dtype(self):
        return getattr(torch, self.dtype)

    @property
    def itemsize(self):
        return torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def batch(self):
        """(B, T): N tokens as B sequences of T tokens."""
        B = max(1, self.N // SEQ_LEN)
        return B, self.N // B

    def label(self):
        return f"N={self.N} H={self.H} V={self.V} {self.dtype}"

    def logits_bytes(self):
        """One [N, V] float32 buffer (the logits are float32 whatever the input dtype)."""
        return self.N * self.V * 4

    def input_bytes(self):
        """What :func:`make_inputs` holds: hidden, teacher hidden, weight, and the per-token tensors."""
        B, T = self.batch
        return (2 * self.N * self.H + self.V * self.H) * self.itemsize + self.N * (8 + 4 + 4 + 4 + 4) + B * 4

    def grad_bytes(self):
        """dL/dhidden and dL/dweight."""
        return (self.N * self.H + self.V * self.H) * self.itemsize


def make_inputs(shape: Shape, device="cpu", seed=0):
    """Student/teacher hidden states, LM head, sampled tokens, advantages, rollout log-probs."""
    g = torch.Generator().manual_seed(seed)
    B, T = shape.batch
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
        # the per-token upstream gradients of the logprobs kernel (drawn last: the above stay as they were)
        grad_logprobs=(torch.randn(B, T, generator=g) / shape.N).to(device),
        grad_entropy=(torch.randn(B, T, generator=g) / shape.N).to(device),
    )
