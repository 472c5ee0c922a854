"""Random loss inputs and the float64 truth the fused paths are compared against."""

from dataclasses import dataclass, field

import torch

from rlsd_kernels import available_impls, rlsd_loss
from rlsd_kernels.ops.triton import interpreted

# Fused impls that take these tests' CPU tensors: the Triton ones only under the interpreter (on a
# CUDA machine with TRITON_INTERPRET=0 they are tested on the GPU by tests/test_gpu.py).
FUSED_IMPLS = [name for name in available_impls() if name != "eager" and (interpreted() or not name.startswith("triton"))]
SMALL_CHUNK_BYTES = 16 << 10  # a few rows per chunk on test vocabularies: every loop runs several times


@dataclass
class Case:
    hidden: torch.Tensor
    weight: torch.Tensor
    bias: object
    targets: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    extra: dict = field(default_factory=dict)  # other tensor kwargs of rlsd_loss

    def leaves(self):
        return [t for t in (self.hidden, self.weight, self.bias) if t is not None]

    def to(self, device):
        """A copy on ``device`` (leaves require grad again)."""
        leaf = lambda t: None if t is None else t.detach().to(device).requires_grad_()  # noqa: E731
        return Case(leaf(self.hidden), leaf(self.weight), leaf(self.bias), self.targets.to(device),
                    self.advantages.to(device), self.mask.to(device), {k: v.to(device) for k, v in self.extra.items()})

    def cast(self, dtype):
        """A copy with floating tensors in ``dtype`` (leaves require grad again)."""
        leaf = lambda t: None if t is None else t.detach().to(dtype).requires_grad_()  # noqa: E731
        other = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
        return Case(leaf(self.hidden), leaf(self.weight), leaf(self.bias), self.targets,
                    other(self.advantages), self.mask, {k: other(v) for k, v in self.extra.items()})


def make_case(B=3, T=47, H=31, V=123, dtype=torch.float32, bias=True, teacher="hidden", per_token_adv=False,
              old=True, mask_p=0.2, masked_row=1):
    """Logits of realistic spread (std ~3), a teacher that differs from the student, some tokens
    and (``masked_row``) one whole sequence masked out."""
    hidden = torch.randn(B, T, H)
    weight = torch.randn(V, H) * (3.0 / H ** 0.5)
    b = torch.randn(V) * 0.5 if bias else None
    targets = torch.randint(0, V, (B, T))
    adv = torch.randn(B, T) if per_token_adv else torch.randn(B)
    mask = (torch.rand(B, T) > mask_p).float()
    if masked_row is not None and masked_row < B:
        mask[masked_row] = 0
    extra = {}
    if teacher == "hidden":
        extra["teacher_hidden"] = hidden + 0.5 * torch.randn(B, T, H)
    elif teacher == "logprobs":
        extra["teacher_logprobs"] = -torch.rand(B, T) * 5
    if old:
        with torch.no_grad():
            extra["old_logprobs"] = torch.log_softmax(hidden @ weight.T / 1.0, -1).gather(
                -1, targets[..., None])[..., 0] + 0.1 * torch.randn(B, T)
    return Case(hidden, weight, b, targets, adv, mask, extra).cast(dtype)


def run(case: Case, fn=rlsd_loss, **kwargs):
    """Loss, metrics and gradients of the leaves."""
    for t in case.leaves():
        t.grad = None
    loss, metrics = fn(case.hidden, case.weight, case.targets, case.advantages, case.mask,
                       bias=case.bias, **case.extra, **kwargs)
    grads = torch.autograd.grad(loss, case.leaves(), allow_unused=True) if loss.requires_grad else None
    return loss.detach(), metrics, grads


def max_rel_err(a, b):
    """max |a - b| / max |b| (the scale of the true values), in float64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item() if b.numel() else 0.0
