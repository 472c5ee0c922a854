"""Random loss inputs, and the comparison of any impl with the float64 truth (tests/truth.py)."""

from dataclasses import dataclass, field

import torch
import truth

from rlsd_kernels import RLSDOptions, available_impls, fused_linear_logprobs, opsd_loss, reference, rlsd_loss
from rlsd_kernels.ops.triton import interpreted
from rlsd_kernels.options import FIELDS

# Fused impls that take these tests' CPU tensors: the Triton ones only under the interpreter (on a
# CUDA machine, TRITON_INTERPRET unset or 0, they are tested on the GPU by tests/test_gpu.py).
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
              old=True, mask_p=0.2, masked_row=1, temperature=1.0):
    """Logits of realistic spread (std ~3), a teacher that differs from the student, some tokens
    and (``masked_row``) one whole sequence masked out; old log-probs near the student's at
    ``temperature`` (the one the case is run at, so the PPO ratios stay near 1)."""
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
            logits = hidden @ weight.T + (0.0 if b is None else b)
            extra["old_logprobs"] = (torch.log_softmax(logits / temperature, -1).gather(
                -1, targets[..., None])[..., 0] + 0.1 * torch.randn(B, T)).clamp(max=0.0)  # log-probs are <= 0
    return Case(hidden, weight, b, targets, adv, mask, extra).cast(dtype)


def acting_case(B=4, T=12, H=16, V=40, dtype=torch.float32):
    """A case on which every option acts: advantages of both signs among the unmasked rows (row 2
    is masked), log-ratios to ``old_logprobs`` spread over [-1.8, 1.8] (both PPO clips and a dual clip
    at 3 fire), teacher log-ratios on both sides of the credit clip, and a ``ref_logprobs``."""
    hidden = torch.randn(B, T, H)
    weight = torch.randn(V, H) * (3.0 / H ** 0.5)
    b = torch.randn(V) * 0.5
    targets = torch.randint(0, V, (B, T))
    adv = torch.tensor([1.0, -1.0]).repeat(B)[:B] * (0.5 + torch.rand(B))
    mask = (torch.rand(B, T) > 0.15).float()
    mask[2] = 0
    with torch.no_grad():
        lp = torch.log_softmax(hidden @ weight.T + b, -1).gather(-1, targets[..., None])[..., 0]
    extra = {"ref_logprobs": (lp + 2 * torch.rand(B, T) - 1).clamp(max=0.0),  # log-probs are <= 0
             "old_logprobs": (lp - (3.6 * torch.rand(B, T) - 1.8)).clamp(max=0.0),
             "teacher_hidden": hidden + 0.1 * torch.randn(B, T, H)}
    return Case(hidden, weight, b, targets, adv, mask, extra).cast(dtype)


def with_options(kwargs: dict) -> dict:
    """``kwargs`` with RLSDOptions' fields among them gathered into one ``options=`` (the library's
    one way to pass them; tests/truth.py takes them as keywords)."""
    fields = {k: v for k, v in kwargs.items() if k in FIELDS}
    if not fields:
        return kwargs
    return {**{k: v for k, v in kwargs.items() if k not in FIELDS}, "options": RLSDOptions(**fields)}


def run(case: Case, fn=rlsd_loss, **kwargs):
    """Loss, metrics and gradients of the leaves (option fields as keywords, see ``with_options``)."""
    kwargs = with_options(kwargs) if fn is rlsd_loss else kwargs
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


# --- comparison with the float64 truth, shared by the CPU and the GPU tests ---------------------

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}  # relative to the largest true value
BF16_MARGIN = 1e-2          # a fused bf16 error may exceed eager bf16 PyTorch's by this much
# Eager bf16 PyTorch itself: its values within BF16_EAGER of the truth, its gradients at cosine
# similarity above BF16_EAGER_COS (per element they can be far off: a token whose ratio sits at a
# clip boundary flips in bf16; 0.83 seen where only two tokens carry a gradient).
BF16_EAGER, BF16_EAGER_COS = 5e-2, 0.75
BF16_METRIC = 5e-2          # |metric - truth| <= |eager's - truth| + this * (1 + |truth|) in bf16

# impl "truth" is tests/truth.py; impl "reference" is rlsd_kernels.reference (math.py with
# materialised logits); any other name goes to the public function with that impl.
PUBLIC = {"rlsd": rlsd_loss, "opsd": opsd_loss, "logprobs": fused_linear_logprobs}
NAMES = {"rlsd": "rlsd_loss", "opsd": "opsd_loss", "logprobs": "linear_logprobs"}


@dataclass
class Result:
    values: list   # [loss] for the losses, [lp, entropy?] for the log-probs
    metrics: dict
    grads: list    # of hidden, weight and bias (those present)

    def cpu(self):
        return Result([v.cpu() for v in self.values], {k: v.cpu() for k, v in self.metrics.items()},
                      [g.cpu() for g in self.grads])


def call(case: Case, api: str, impl: str, **kwargs) -> Result:
    """Values, metrics and gradients of ``api`` ("rlsd", "opsd", "logprobs") on ``case``."""
    if impl in ("truth", "reference"):
        fn = getattr(truth if impl == "truth" else reference, NAMES[api])
    else:
        fn, kwargs = PUBLIC[api], dict(kwargs, impl=impl)
    if api == "rlsd" and impl != "truth":
        kwargs = with_options(kwargs)
    if api == "rlsd":
        loss, metrics = fn(case.hidden, case.weight, case.targets, case.advantages, case.mask, bias=case.bias,
                           **case.extra, **kwargs)
        values, objective = [loss], loss
    elif api == "opsd":
        extra = {k: v for k, v in case.extra.items() if k in ("teacher_hidden", "teacher_logprobs", "token_weights")}
        loss, metrics = fn(case.hidden, case.weight, case.targets, case.mask, bias=case.bias, **extra, **kwargs)
        values, objective = [loss], loss
    else:
        lp, ent = fn(case.hidden, case.weight, case.targets, bias=case.bias, **kwargs)
        upstream = torch.linspace(-1, 1, lp.numel(), dtype=lp.dtype, device=lp.device).view(lp.shape)
        values, metrics = [lp] + ([ent] if ent is not None else []), {}
        objective = (lp * upstream).sum() + (0.3 * ent.sum() if ent is not None else 0)
    grads = list(torch.autograd.grad(objective, case.leaves())) if objective.requires_grad else []
    return Result([v.detach() for v in values], {k: v.detach() for k, v in metrics.items()}, grads)


def assert_close_to_truth(case: Case, impl: str, dtype, api="rlsd", device="cpu", tol=TOL, **kwargs) -> Result:
    """``impl`` on ``case`` in ``dtype`` (on ``device``) against the float64 truth on the same
    rounded inputs: values, gradients and metrics, within ``tol[dtype]``; bf16 by the rule of
    BF16_*. Returns the truth."""
    case = case.cast(dtype)
    want = call(case.cast(torch.float64), api, "truth", **kwargs)
    got = call(case.to(device), api, impl, **kwargs).cpu()
    assert set(got.metrics) == set(want.metrics), "metric names"
    assert len(got.values) == len(want.values) and len(got.grads) == len(want.grads)
    named = list(zip(["value"] * len(want.values) + ["grad"] * len(want.grads),
                     got.values + got.grads, want.values + want.grads))
    for name, g, t in named:
        assert g.shape == t.shape and (name == "value" or g.dtype == dtype), name
    if dtype == torch.bfloat16:
        eager = call(case.to(device), api, "eager", **kwargs).cpu()
        for (name, g, t), e in zip(named, eager.values + eager.grads):
            if name == "value":
                assert max_rel_err(e, t) < BF16_EAGER, "eager bf16 value"
            else:
                assert torch.cosine_similarity(e.double().flatten(), t.flatten(), 0) > BF16_EAGER_COS, "eager bf16 grad"
            assert max_rel_err(g, t) <= max_rel_err(e, t) + BF16_MARGIN, name
        for key, t in want.metrics.items():
            e_err = abs(eager.metrics[key].item() - t.item())
            assert abs(got.metrics[key].item() - t.item()) <= e_err + BF16_METRIC * (1 + abs(t.item())), key
        return want
    tol = tol[dtype]
    for name, g, t in named:
        assert max_rel_err(g, t) < tol, name
    for key, t in want.metrics.items():
        assert abs(got.metrics[key].item() - t.item()) < max(tol, 1e-6) * (1 + abs(t.item())), key
    return want


# dtypes of the option tests, by "is a Triton impl": the interpreter is slow, so those take float64
# only there (the same kernels in float32 are checked by every test_matches_truth)
OPTION_DTYPES = {False: (torch.float64, torch.float32), True: (torch.float64,)}


def assert_differs(a: Result, b: Result, margin=1e-3):
    """The option acts: the loss and every gradient change by more than ``margin`` (relative)."""
    for x, y in zip(a.values + a.grads, b.values + b.grads):
        assert max_rel_err(x, y) > margin, "the option changes nothing on this case"
