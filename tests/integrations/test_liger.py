"""FusedLinearRLSDLigerLoss against Liger-Kernel's own LigerFusedLinearGRPOLoss on the CPU:
at lam = 0 the loss, the metrics and the gradients of input, weight and bias agree."""

import pytest
import torch

pytest.importorskip("liger_kernel", reason="liger-kernel is not installed")
from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss  # noqa: E402

from rlsd_kernels import RLSDOptions, fused_linear_logprobs, rlsd_loss  # noqa: E402
from rlsd_kernels.integrations.liger import FusedLinearRLSDLigerLoss  # noqa: E402

B, T, H, V = 4, 9, 16, 37
TOL = dict(rtol=1e-4, atol=1e-6)


def batch(temperature=1.0):
    x = torch.randn(B, T, H)
    w = torch.randn(V, H) * (3.0 / H ** 0.5)
    b = torch.randn(V) * 0.5
    ids = torch.randint(0, V, (B, T))
    mask = (torch.rand(B, T) > 0.25).float()
    mask[2] = 0  # one empty completion: "grpo" divides by all B rows, not the non-empty ones
    adv = torch.randn(B)
    with torch.no_grad():
        lp, _ = fused_linear_logprobs(x, w, ids, bias=b, temperature=temperature, impl="eager")
    old = lp + 0.3 * torch.randn(B, T)  # some ratios land outside [1 - eps_low, 1 + eps_high]
    ref = lp + 0.2 * torch.randn(B, T)
    return dict(x=x, w=w, b=b, ids=ids, mask=mask, adv=adv, old=old, ref=ref)


def call(module, d, old, ref, **extra):
    leaves = [d[k].detach().clone().requires_grad_() for k in ("x", "w", "b")]
    loss, metrics = module(leaves[0], leaves[1], d["ids"], d["mask"], d["adv"], bias=leaves[2],
                           ref_per_token_logps=d["ref"] if ref else None,
                           old_per_token_logps=d["old"] if old else None, **extra)
    loss.backward()
    return loss.detach(), [m.detach() for m in metrics], [t.grad for t in leaves]


def assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], **TOL)
    assert len(got[1]) == len(want[1])
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, **TOL)
    for name, g, w in zip(("input", "weight", "bias"), got[2], want[2]):
        torch.testing.assert_close(g, w, **TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("old", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_matches_liger_at_lam_zero(loss_type, old, beta):
    d = batch(temperature=0.8)
    opts = dict(beta=beta, use_ref_model=beta != 0, epsilon_low=0.2, epsilon_high=0.28, loss_type=loss_type,
                max_completion_length=T + 3, temperature=0.8)
    want = call(LigerFusedLinearGRPOLoss(compiled=False, **opts), d, old, beta != 0)
    got = call(FusedLinearRLSDLigerLoss(lam=0.0, **opts), d, old, beta != 0)
    assert_same(got, want)


def test_dapo_num_items_in_batch_ref_model_and_delta():
    """The global token count of DAPO, the reference log-probs from ref_input/ref_weight, and the
    two-sided clip ``delta`` (the dual clip here)."""
    d = batch()
    ref_input, ref_weight = d["x"] + 0.1 * torch.randn(B, T, H), d["w"]
    opts = dict(beta=0.1, loss_type="dapo", delta=2.0)
    extra = dict(ref_input=ref_input, ref_weight=ref_weight, ref_bias=d["b"], num_items_in_batch=57)
    d["adv"] = -d["adv"].abs()  # the dual clip acts on negative advantages
    d["old"] = d["old"] - 1.5 * (torch.rand(B, T) > 0.5)  # ratios above delta
    want = call(LigerFusedLinearGRPOLoss(compiled=False, **opts), d, True, False, **extra)
    got = call(FusedLinearRLSDLigerLoss(lam=0.0, **opts), d, True, False, **extra)
    assert_same(got, want)


def test_vllm_is_ratio_without_kl():
    d = batch()
    ratio = torch.rand(B, T) + 0.5
    opts = dict(beta=0.0, use_ref_model=False, loss_type="grpo")
    want = call(LigerFusedLinearGRPOLoss(compiled=False, **opts), d, True, False, vllm_is_ratio=ratio)
    got = call(FusedLinearRLSDLigerLoss(lam=0.0, **opts), d, True, False, vllm_is_ratio=ratio)
    assert_same(got, want)


def test_rlsd_teacher_arguments():
    """A self-teacher's hidden states, a separate teacher head and precomputed teacher log-probs
    give rlsd_loss's result."""
    d = batch()
    th = d["x"] + 0.5 * torch.randn(B, T, H)
    module = FusedLinearRLSDLigerLoss(beta=0.0, use_ref_model=False, lam=0.7, eps_w=0.3)
    want, _ = rlsd_loss(d["x"], d["w"], d["ids"], d["adv"], d["mask"], bias=d["b"], teacher_hidden=th,
                        old_logprobs=d["old"], options=RLSDOptions(lam=0.7, eps_w=0.3, eps_low=0.2, eps_high=0.2))
    got, _ = module(d["x"], d["w"], d["ids"], d["mask"], d["adv"], bias=d["b"], old_per_token_logps=d["old"],
                    teacher_input=th)
    torch.testing.assert_close(got, want)
    assert "credit_clip_frac" in module.last_metrics
    tw = d["w"] + 0.1 * torch.randn(V, H)
    lp_t, _ = fused_linear_logprobs(th, tw, d["ids"])
    a, _ = module(d["x"], d["w"], d["ids"], d["mask"], d["adv"], old_per_token_logps=d["old"], teacher_input=th,
                  teacher_weight=tw)
    b, _ = module(d["x"], d["w"], d["ids"], d["mask"], d["adv"], old_per_token_logps=d["old"],
                  teacher_logprobs=lp_t)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="teacher"):
        module(d["x"], d["w"], d["ids"], d["mask"], d["adv"])


@pytest.mark.parametrize("kwargs", [dict(loss_type="cispo"), dict(importance_sampling_level="sequence"),
                                    dict(use_bias_correction_kl=True), dict(delta=1.1)])
def test_unmapped_options_raise(kwargs):
    with pytest.raises(NotImplementedError):
        FusedLinearRLSDLigerLoss(**kwargs)
