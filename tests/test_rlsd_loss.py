"""Every fused impl of rlsd_loss against the eager reference: loss, metrics and every gradient."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inputs import FUSED_IMPLS, make_case, max_rel_err, run

from rlsd_kernels import reference, rlsd_loss

# float64 is checked tightly; float32 against the float64 truth; bfloat16 by CCE's rule below.
TOL = {torch.float64: 1e-9, torch.float32: 2e-5}


def assert_close_to_truth(case, impl, dtype, **kwargs):
    case = case.cast(dtype)  # the truth is taken on the very same (rounded) inputs
    truth = run(case.cast(torch.float64), fn=reference.rlsd_loss, **kwargs)
    got = run(case, impl=impl, **kwargs)
    if dtype == torch.bfloat16:
        # The fused error against the float64 truth may not exceed eager bf16 PyTorch's by much.
        eager = run(case, impl="eager", **kwargs)
        for name, g, e, t in zip(("loss", "hidden", "weight", "bias"), (got[0],) + got[2], (eager[0],) + eager[2],
                                 (truth[0],) + truth[2]):
            assert max_rel_err(g, t) <= max_rel_err(e, t) + 1e-2, name
        return
    tol = TOL[dtype]
    assert max_rel_err(got[0], truth[0]) < tol, "loss"
    for name, g, t in zip(("hidden", "weight", "bias"), got[2], truth[2]):
        assert g.dtype == dtype, name
        assert max_rel_err(g, t) < tol, name
    for key, value in truth[1].items():
        assert abs(got[1][key].item() - value.item()) < max(tol, 1e-6) * (1 + abs(value.item())), key


@pytest.mark.parametrize("impl", ["eager"] + FUSED_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
def test_matches_reference(impl, dtype, bias, temperature):
    case = make_case(bias=bias)
    assert_close_to_truth(case, impl, dtype, temperature=temperature, lam=1.0, compute_entropy=True)


OPTIONS = {
    "grpo": dict(lam=0.0),
    "lam_half": dict(lam=0.5),
    "wide_credit": dict(eps_w=0.9),
    "dual_clip": dict(dual_clip=3.0, eps_low=0.05, eps_high=0.05),
    "kl_k1": dict(kl_coef=0.1, kl_type="k1"),
    "kl_k2": dict(kl_coef=0.1, kl_type="k2"),
    "kl_k3": dict(kl_coef=0.1, kl_type="k3"),
    "entropy": dict(entropy_coef=0.05),
    "negative_only": dict(negative_only=True),
    "seq_mean_token_mean": dict(loss_agg="seq-mean-token-mean"),
    "seq_mean_token_sum_norm": dict(loss_agg="seq-mean-token-sum-norm"),
    "normalizer": dict(normalizer=250.0),
    "normalizer_fraction": dict(normalizer=0.5),
}


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_option(impl, option):
    case = make_case()
    kwargs = dict(OPTIONS[option])
    if "kl_coef" in kwargs:
        case.extra["ref_logprobs"] = case.extra["old_logprobs"] + 0.3 * torch.randn_like(case.mask)
    assert_close_to_truth(case, impl, torch.float64, temperature=0.7, **kwargs)
    assert_close_to_truth(case, impl, torch.float32, temperature=0.7, **kwargs)


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("variant", ["teacher_logprobs", "per_token_adv", "no_old", "token_weights", "credit_mask"])
def test_input_variants(impl, variant):
    case = make_case(teacher="logprobs" if variant == "teacher_logprobs" else "hidden",
                     per_token_adv=variant == "per_token_adv", old=variant != "no_old")
    if variant == "token_weights":
        case.extra["token_weights"] = torch.rand_like(case.mask)
    if variant == "credit_mask":
        case.extra["credit_mask"] = (torch.rand_like(case.mask) > 0.5).float()
    assert_close_to_truth(case, impl, torch.float64)
    assert_close_to_truth(case, impl, torch.float32)


@pytest.mark.parametrize("impl", ["cpp", "chunked"])
def test_realistic_shape(impl):
    if impl not in FUSED_IMPLS:
        pytest.skip(f"{impl} not available here")
    from rlsd_kernels.ops import get_backend

    get_backend(impl).chunk_bytes = 2 << 20  # ~128 rows per chunk at V=4096
    case = make_case(B=4, T=256, H=256, V=4096, mask_p=0.1)
    assert_close_to_truth(case, impl, torch.float32, temperature=0.9, compute_entropy=True)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(1, 4), T=st.integers(1, 20), H=st.integers(1, 40), V=st.integers(2, 300),
       bias=st.booleans(), lam=st.sampled_from([0.0, 0.5, 1.0]), temperature=st.floats(0.3, 2.0),
       agg=st.sampled_from(["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]))
def test_hypothesis_shapes(B, T, H, V, bias, lam, temperature, agg):
    case = make_case(B=B, T=T, H=H, V=V, bias=bias, masked_row=None, mask_p=0.3)
    for impl in [i for i in FUSED_IMPLS if i != "triton"]:
        assert_close_to_truth(case, impl, torch.float64, lam=lam, temperature=temperature, loss_agg=agg)


def test_grpo_is_the_clipped_surrogate_written_out():
    """lam=0 equals the DAPO token-mean surrogate written independently of the library's math."""
    case = make_case(dtype=torch.float64)
    loss, _, _ = run(case, impl="eager", lam=0.0)
    lp = torch.log_softmax(case.hidden @ case.weight.T + case.bias, -1).gather(-1, case.targets[..., None])[..., 0]
    ratio = torch.exp(lp - case.extra["old_logprobs"])
    adv = case.advantages[:, None]
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 0.8, 1.28) * adv)
    expected = (per_token * case.mask).sum() / case.mask.sum()
    torch.testing.assert_close(loss, expected.detach())
    for impl in FUSED_IMPLS:
        torch.testing.assert_close(run(case, impl=impl, lam=0.0)[0], expected.detach())


def test_rlsd_credit_by_hand():
    """One token per case: the credit scales |A| by clamp(w) and never flips its sign."""
    from rlsd_kernels.math import rlsd_credit

    delta = torch.tensor([0.1, 0.1, -5.0, -5.0, 5.0, 0.0])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, 0.0])
    ahat, w = rlsd_credit(delta, adv, lam=1.0, eps_w=0.2)
    expected = torch.tensor([1.0 * torch.exp(torch.tensor(0.1)).item(), -1.0 * torch.exp(torch.tensor(-0.1)).item(),
                             0.8, -1.2, 2.4, 0.0])
    torch.testing.assert_close(ahat, expected)
    half, _ = rlsd_credit(delta, adv, lam=0.5, eps_w=0.2)
    torch.testing.assert_close(half, 0.5 * adv + 0.5 * expected)


@pytest.mark.parametrize("impl", FUSED_IMPLS + ["eager"])
def test_fully_masked_batch_gives_zero_loss_on_the_graph(impl):
    case = make_case(mask_p=1.1)
    loss, metrics, grads = run(case, impl=impl)
    assert loss.item() == 0.0
    assert grads is not None and all(torch.count_nonzero(g) == 0 for g in grads)
    assert all(torch.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("impl", FUSED_IMPLS + ["eager"])
def test_zero_advantages_give_zero_gradient(impl):
    case = make_case()
    case.advantages = torch.zeros_like(case.advantages)
    loss, _, grads = run(case, impl=impl)
    assert loss.item() == 0.0
    assert all(g.abs().max() == 0 for g in grads)


@pytest.mark.parametrize("impl", FUSED_IMPLS)
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_normalizer_makes_accumulation_equal_one_batch(impl, agg):
    """Two micro-batches, each normalised by the global denominator, sum to the big batch."""
    case = make_case(B=4, dtype=torch.float64, masked_row=3)
    full_loss, _, full_grads = run(case, impl=impl, loss_agg=agg)
    m = case.mask
    normalizer = {"token-mean": m.sum().item(), "seq-mean-token-mean": (m.sum(-1) > 0).sum().item(),
                  "seq-mean-token-sum-norm": m.numel()}[agg]
    total, grads = 0.0, None
    for rows in (slice(0, 1), slice(1, 4)):
        loss, _ = rlsd_loss(case.hidden[rows], case.weight, case.targets[rows], case.advantages[rows], m[rows],
                            bias=case.bias, teacher_hidden=case.extra["teacher_hidden"][rows],
                            old_logprobs=case.extra["old_logprobs"][rows], loss_agg=agg, normalizer=normalizer,
                            impl=impl)
        g = torch.autograd.grad(loss, [case.weight, case.bias])
        total = total + loss.detach()
        grads = g if grads is None else [a + b for a, b in zip(grads, g)]
    torch.testing.assert_close(total, full_loss)
    for g, f in zip(grads, full_grads[1:]):
        torch.testing.assert_close(g, f)


@pytest.mark.parametrize("impl", [i for i in FUSED_IMPLS if i != "triton"])
def test_gradcheck(impl):
    """Finite differences see through stop-gradients, so the credit (lam) is off here; the
    surrogate, KL and entropy terms are all differentiated exactly."""
    case = make_case(B=2, T=3, H=4, V=7, dtype=torch.float64, mask_p=0.0, masked_row=None, teacher=None)
    case.extra["ref_logprobs"] = case.extra["old_logprobs"] - 0.2

    def f(h, w, b):
        return rlsd_loss(h, w, case.targets, case.advantages, case.mask, bias=b, impl=impl, temperature=0.7,
                         lam=0.0, entropy_coef=0.1, kl_coef=0.2, **case.extra)[0]

    assert torch.autograd.gradcheck(f, (case.hidden, case.weight, case.bias))


@pytest.mark.parametrize("impl", [i for i in FUSED_IMPLS if i != "triton-tiled"])  # the interpreter copies its
def test_no_tokens_by_vocab_tensor_is_allocated(impl):                            # arguments' storages as bytes
    """The fused path never creates a tensor with as many elements as the [N, V] logits."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    case = make_case(B=4, T=64, H=32, V=512, mask_p=0.0, masked_row=None)
    n_by_v = case.targets.numel() * case.weight.shape[0]
    with Largest():
        loss, _ = rlsd_loss(case.hidden, case.weight, case.targets, case.advantages, case.mask, bias=case.bias,
                            impl=impl, **case.extra)
        loss.backward()
    assert 0 < Largest.numel < n_by_v / 4


def test_module_form_matches_function_and_follows_lam():
    from rlsd_kernels import FusedLinearRLSDLoss

    case = make_case(dtype=torch.float64)
    module = FusedLinearRLSDLoss(temperature=0.7, lam=1.0, impl="chunked")
    loss, _ = module(case.hidden, case.weight, case.targets, case.advantages, case.mask, bias=case.bias, **case.extra)
    torch.testing.assert_close(loss, run(case, impl="chunked", temperature=0.7)[0])
    module.lam = 0.0
    loss, _ = module(case.hidden, case.weight, case.targets, case.advantages, case.mask, bias=case.bias, **case.extra)
    torch.testing.assert_close(loss, run(case, impl="chunked", temperature=0.7, lam=0.0)[0])


def test_metrics_read_what_the_paper_reads():
    """Clip fractions are fractions, the credit clip counts only tokens with A != 0, and a teacher
    equal to the student gives delta = 0 and no credit clipping."""
    case = make_case(dtype=torch.float64, teacher="hidden")
    case.extra["teacher_hidden"] = case.hidden.detach().clone()
    _, metrics, _ = run(case, impl="chunked")
    assert abs(metrics["delta_abs_mean"].item()) < 1e-12 and metrics["credit_clip_frac"].item() == 0.0
    for key in ("credit_clip_frac", "ppo_clip_frac"):
        assert 0.0 <= metrics[key].item() <= 1.0
    case.extra["teacher_hidden"] = case.hidden.detach() * 3.0
    _, metrics, _ = run(case, impl="chunked")
    assert metrics["credit_clip_frac"].item() > 0.2 and metrics["delta_abs_mean"].item() > 0.1
