"""Every impl of rlsd_loss (and math.py through rlsd_kernels.reference) against the float64 truth
of tests/truth.py: loss, metrics and every gradient, on cases where every option acts."""

import pytest
import torch
import truth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inputs import (FUSED_IMPLS, OPTION_DTYPES, acting_case, assert_close_to_truth, assert_differs, call, make_case,
                    max_rel_err, run)

from rlsd_kernels import RLSDOptions, autograd, rlsd_loss

IMPLS = ["reference", "eager"] + FUSED_IMPLS  # "reference": math.py on materialised logits


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
def test_matches_truth(impl, dtype, bias, temperature):
    case = make_case(bias=bias, temperature=temperature)
    assert_close_to_truth(case, impl, dtype, temperature=temperature, lam=1.0, compute_entropy=True)


def _with(**extra):
    """An input variant: the acting case with these extra tensors (None removes one)."""
    def variant(case):
        case.extra.update({k: v for k, v in extra.items() if v is not None})
        for k in [k for k, v in extra.items() if v is None]:
            del case.extra[k]
        return case
    return variant


def _no_bias(case):
    case.bias = None
    return case


def _teacher_logprobs(case):
    """The teacher given as log-probs: the teacher's own, moved by noise (so the credit changes)."""
    lp_t, _ = truth.linear_logprobs(case.extra["teacher_hidden"], case.weight, case.targets, case.bias)
    return _with(teacher_hidden=None, teacher_logprobs=(lp_t + 0.3 * torch.randn_like(lp_t)).clamp(max=0.0).float())(case)


def _per_token_adv(case):
    """Advantages per token, with both signs inside sequence 0."""
    adv = case.advantages[:, None].expand_as(case.mask).clone()
    adv[0, :4] = -adv[0, :4]
    case.advantages = adv
    return case


def _token_weights(case):
    return _with(token_weights=torch.rand_like(case.mask))(case)


def _rollout_weights(case):
    return _with(rollout_is_weights=torch.rand_like(case.mask) + 0.5)(case)


def _credit_mask(case):
    return _with(credit_mask=(torch.rand_like(case.mask) > 0.5).float())(case)


# option -> (keyword arguments, input variant); each is compared with the defaults on the acting case
OPTIONS = {
    "grpo": (dict(lam=0.0), None),
    "lam_half": (dict(lam=0.5), None),
    "eps_w": (dict(eps_w=0.35), None),
    "eps_low": (dict(eps_low=0.5), None),
    "eps_high": (dict(eps_high=0.6), None),
    "dual_clip": (dict(dual_clip=3.0), None),
    "kl_k1": (dict(kl_coef=0.1, kl_type="k1"), None),
    "kl_k2": (dict(kl_coef=0.1, kl_type="k2"), None),
    "kl_k3": (dict(kl_coef=0.1, kl_type="k3"), None),
    "entropy": (dict(entropy_coef=0.05), None),
    "negative_only": (dict(negative_only=True), None),
    "seq_mean_token_mean": (dict(loss_agg="seq-mean-token-mean"), None),
    "seq_mean_token_sum_norm": (dict(loss_agg="seq-mean-token-sum-norm"), None),
    "normalizer": (dict(normalizer=25.0), None),
    "normalizer_fraction": (dict(normalizer=0.5), None),
    "temperature": (dict(temperature=0.7), None),
    "no_bias": ({}, _no_bias),
    "no_old": ({}, _with(old_logprobs=None)),
    "token_weights": ({}, _token_weights),
    "credit_mask": ({}, _credit_mask),
    "teacher_logprobs": ({}, _teacher_logprobs),
    "per_token_adv": ({}, _per_token_adv),
    # the policy-loss variants (docs/math.md), each with the RLSD credit (lam = 1)
    "gspo": (dict(is_level="sequence"), None),
    "gspo_token": (dict(is_level="sequence-token"), None),
    "gspo_token_adv": (dict(is_level="sequence-token"), _per_token_adv),
    "delta": (dict(delta=1.1), None),
    "cispo": (dict(policy_loss="cispo", eps_high=2.0), None),
    "sapo": (dict(policy_loss="sapo", sapo_tau_pos=2.0, sapo_tau_neg=0.5), None),
    "vespo": (dict(policy_loss="vespo", vespo_k_pos=1.5, vespo_lambda_pos=1.0, vespo_k_neg=1.0,
                   vespo_lambda_neg=0.5), None),
    "kl_is_corrected": (dict(kl_coef=0.1, kl_is_corrected=True), None),
    "kl_is_corrected_gspo": (dict(kl_coef=0.1, kl_is_corrected=True, is_level="sequence"), None),
    "rollout_is_weights": ({}, _rollout_weights),
    "vespo_rollout_is_weights": (dict(policy_loss="vespo", vespo_lambda_pos=1.0, vespo_lambda_neg=0.5),
                                 _rollout_weights),
}


def test_the_acting_case_fires_every_clip():
    """Both PPO clips, the dual clip and both sides of the credit clip fire on the acting case."""
    case = acting_case(dtype=torch.float64)
    metrics = call(case, "rlsd", "truth").metrics
    for key in ("ppo_clip_low_frac", "ppo_clip_high_frac", "credit_clip_low_frac", "credit_clip_high_frac"):
        assert 0.05 < metrics[key].item() < 0.6, key
    lp = call(case, "logprobs", "truth").values[0]
    rho = torch.exp(lp - case.extra["old_logprobs"])
    adv = case.advantages[:, None].expand_as(rho)
    valid = case.mask != 0
    assert ((rho > 3.0) & (adv < 0) & valid).any() and (valid & (adv > 0)).any() and (valid & (adv < 0)).any()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_option(impl, option):
    """The option changes the loss and every gradient, and the result is the truth's."""
    kwargs, variant = OPTIONS[option]
    case = acting_case()
    on = case if variant is None else variant(case.cast(torch.float32))
    assert_differs(call(on.cast(torch.float64), "rlsd", "truth", **kwargs),
                   call(case.cast(torch.float64), "rlsd", "truth"))
    for dtype in OPTION_DTYPES[impl.startswith("triton")]:
        assert_close_to_truth(on, impl, dtype, **kwargs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("option", ["dual_clip", "entropy", "kl_k2", "negative_only", "credit_mask"])
def test_options_in_bf16(impl, option):
    kwargs, variant = OPTIONS[option]
    case = acting_case() if variant is None else variant(acting_case())
    assert_close_to_truth(case, impl, torch.bfloat16, **kwargs)


@pytest.mark.parametrize("impl", ["cpp", "chunked"])
def test_realistic_shape(impl):
    if impl not in FUSED_IMPLS:
        pytest.skip(f"{impl} not available here")
    from rlsd_kernels.ops import get_backend

    get_backend(impl).chunk_bytes = 2 << 20  # ~128 rows per chunk at V=4096
    case = make_case(B=4, T=256, H=256, V=4096, mask_p=0.1, temperature=0.9)
    assert_close_to_truth(case, impl, torch.float32, temperature=0.9, compute_entropy=True)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(1, 4), T=st.integers(1, 20), H=st.integers(1, 40), V=st.integers(2, 300),
       bias=st.booleans(), lam=st.sampled_from([0.0, 0.5, 1.0]), temperature=st.floats(0.3, 2.0),
       agg=st.sampled_from(["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]))
def test_hypothesis_shapes(B, T, H, V, bias, lam, temperature, agg):
    case = make_case(B=B, T=T, H=H, V=V, bias=bias, masked_row=None, mask_p=0.3, temperature=temperature)
    for impl in ["reference"] + [i for i in FUSED_IMPLS if i != "triton"]:
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
    """Two micro-batches, each normalised by the global denominator, sum to the truth of the big
    batch: loss, dL/dW, dL/db, and dL/dh row by row."""
    case = acting_case(dtype=torch.float64)
    want = call(case, "rlsd", "truth", loss_agg=agg)
    m = case.mask
    normalizer = {"token-mean": m.sum().item(), "seq-mean-token-mean": (m.sum(-1) > 0).sum().item(),
                  "seq-mean-token-sum-norm": m.numel()}[agg]
    total, dh, dw_db = 0.0, [], None
    for rows in (slice(0, 1), slice(1, 4)):
        loss, _ = rlsd_loss(case.hidden[rows], case.weight, case.targets[rows], case.advantages[rows], m[rows],
                            bias=case.bias, teacher_hidden=case.extra["teacher_hidden"][rows],
                            old_logprobs=case.extra["old_logprobs"][rows], loss_agg=agg, normalizer=normalizer,
                            impl=impl)
        g = torch.autograd.grad(loss, [case.hidden, case.weight, case.bias])
        total = total + loss.detach()
        dh.append(g[0][rows])
        dw_db = g[1:] if dw_db is None else [a + b for a, b in zip(dw_db, g[1:])]
    assert max_rel_err(total, want.values[0]) < 1e-10
    for g, t in zip([torch.cat(dh)] + list(dw_db), want.grads):
        assert max_rel_err(g, t) < 1e-10


@pytest.mark.parametrize("impl", [i for i in FUSED_IMPLS if i != "triton"])
def test_gradcheck(impl):
    """Finite differences see through stop-gradients, so the credit (lam) is off here; the
    surrogate, KL and entropy terms are all differentiated exactly."""
    case = make_case(B=2, T=3, H=4, V=7, dtype=torch.float64, mask_p=0.0, masked_row=None, teacher=None,
                     temperature=0.7)
    case.extra["ref_logprobs"] = case.extra["old_logprobs"] - 0.2

    def f(h, w, b):
        return rlsd_loss(h, w, case.targets, case.advantages, case.mask, bias=b, impl=impl, temperature=0.7,
                         options=RLSDOptions(lam=0.0, entropy_coef=0.1, kl_coef=0.2), **case.extra)[0]

    assert torch.autograd.gradcheck(f, (case.hidden, case.weight, case.bias))


def _inside(impl):
    """A custom op's handler under a TorchDispatchMode: its implementation, with the mode on."""
    def handler(mode, func, types, args, kwargs):
        with mode:
            return impl(*args, **kwargs)
    return handler


@pytest.mark.parametrize("impl", FUSED_IMPLS)
def test_no_tokens_by_vocab_tensor_is_allocated(impl):
    """The fused path never creates a tensor with as many elements as the [N, V] logits."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.is_floating_point():  # the interpreter's byte copies
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    for op, op_impl in autograd.IMPLEMENTATIONS.items():  # look inside the custom ops
        torch.library.register_torch_dispatch(op, Largest, _inside(op_impl))
    case = make_case(B=4, T=64, H=32, V=512, mask_p=0.0, masked_row=None)
    n_by_v = case.targets.numel() * case.weight.shape[0]
    with Largest():
        loss, _ = rlsd_loss(case.hidden, case.weight, case.targets, case.advantages, case.mask, bias=case.bias,
                            impl=impl, **case.extra)
        loss.backward()
    assert 0 < Largest.numel < n_by_v / 4


def test_module_form_matches_function_and_follows_lam():
    from rlsd_kernels import FusedLinearRLSDLoss

    case = make_case(dtype=torch.float64, temperature=0.7)
    module = FusedLinearRLSDLoss(temperature=0.7, options=RLSDOptions(lam=1.0), impl="chunked")
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
