"""fused_linear_logprobs (every impl, and rlsd_kernels.reference) against the float64 truth of
tests/truth.py: values and gradients through both outputs."""

import pytest
import torch
import truth
from inputs import FUSED_IMPLS, max_rel_err

from rlsd_kernels import fused_linear_logprobs, reference


def logprob_case(shape, H, V, dtype, bias):
    hidden = torch.randn(*shape, H, dtype=torch.float64)
    weight = torch.randn(V, H, dtype=torch.float64) * (3.0 / H ** 0.5)
    b = torch.randn(V, dtype=torch.float64) if bias else None
    targets = torch.randint(0, V, shape)
    cast = lambda t: None if t is None else t.to(dtype).requires_grad_()  # noqa: E731
    return cast(hidden), cast(weight), cast(b), targets


def values_and_grads(hidden, weight, bias, targets, impl, temperature, entropy):
    """impl "truth": tests/truth.py; "reference": rlsd_kernels.reference (both with autograd)."""
    if impl in ("truth", "reference"):
        lp, ent = (truth if impl == "truth" else reference).linear_logprobs(hidden, weight, targets, bias,
                                                                             temperature, entropy)
    else:
        lp, ent = fused_linear_logprobs(hidden, weight, targets, bias=bias, temperature=temperature,
                                        return_entropy=entropy, impl=impl)
    upstream = torch.linspace(-1, 1, lp.numel(), dtype=lp.dtype).view(lp.shape)
    objective = (lp * upstream).sum() + (0.3 * ent.sum() if entropy else 0)
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    return [lp.detach()] + ([ent.detach()] if entropy else []) + list(torch.autograd.grad(objective, leaves))


@pytest.mark.parametrize("impl", ["reference", "eager"] + FUSED_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 47), (141,), (2, 3, 5)])
@pytest.mark.parametrize("entropy", [True, False])
def test_matches_truth(impl, dtype, shape, entropy):
    temperature = 0.7 if entropy else 1.3
    hidden, weight, bias, targets = logprob_case(shape, 31, 123, dtype, bias=entropy)
    got = values_and_grads(hidden, weight, bias, targets, impl, temperature, entropy)
    as64 = lambda t: None if t is None else t.detach().double().requires_grad_()  # noqa: E731
    want = values_and_grads(as64(hidden), as64(weight), as64(bias), targets, "truth", temperature, entropy)
    assert got[0].shape == targets.shape
    if dtype == torch.bfloat16:
        eager = values_and_grads(hidden, weight, bias, targets, "eager", temperature, entropy)
        for g, e, t in zip(got, eager, want):
            assert max_rel_err(e, t) < 5e-2 and max_rel_err(g, t) <= max_rel_err(e, t) + 1e-2
        return
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for g, t in zip(got, want):
        assert max_rel_err(g, t) < tol


@pytest.mark.parametrize("impl", [i for i in FUSED_IMPLS if not i.startswith("triton")])
def test_gradcheck(impl):
    hidden, weight, bias, targets = logprob_case((2, 3), 4, 7, torch.float64, bias=True)

    def f(h, w, b):
        lp, ent = fused_linear_logprobs(h, w, targets, bias=b, temperature=0.8, return_entropy=True, impl=impl)
        return lp, ent

    assert torch.autograd.gradcheck(f, (hidden, weight, bias))


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_no_grad_forward(impl):
    hidden, weight, bias, targets = logprob_case((4, 9), 16, 50, torch.float32, bias=False)
    with torch.no_grad():
        lp, ent = fused_linear_logprobs(hidden, weight, targets, impl=impl)
    assert ent is None and not lp.requires_grad
    ref = torch.log_softmax(hidden.detach() @ weight.detach().T, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-5)
