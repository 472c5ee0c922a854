"""FusedLinearRLSDLigerLoss against Liger-Kernel's own LigerFusedLinearGRPOLoss on the CPU:
at lam = 0 the loss, the metrics and the gradients of input, weight and bias agree."""

import pytest
import torch

pytest.importorskip("liger_kernel", reason="liger-kernel is not installed")
from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss  # noqa: E402

from rlsd_kernels import RLSDOptions, fused_linear_logprobs, rlsd_loss  # noqa: E402
from rlsd_kernels.integrations.liger import FusedLinearRLSDLigerLoss  # noqa: E402
from rlsd_kernels.integrations.loss_types import LOSS_TYPES, policy_loss  # noqa: E402

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


VARIANTS = {  # Liger's loss types and options beyond the PPO clip, each where it acts on ``batch``
    "cispo": dict(loss_type="cispo", epsilon_high=1.5),
    "sapo": dict(loss_type="sapo", sapo_temperature_pos=2.0, sapo_temperature_neg=0.5),
    "vespo": dict(loss_type="vespo", vespo_k_pos=1.5, vespo_lambda_pos=1.0),
    "luspo": dict(loss_type="luspo"),
    "luspo_gspo": dict(loss_type="luspo", importance_sampling_level="sequence"),
    "gspo": dict(importance_sampling_level="sequence"),
    "gspo_grpo": dict(importance_sampling_level="sequence", loss_type="grpo"),
    "delta": dict(delta=1.1),
    "bias_correction_kl": dict(beta=0.1, use_bias_correction_kl=True),
    "gspo_bias_correction_kl": dict(beta=0.1, use_bias_correction_kl=True, importance_sampling_level="sequence"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("ratio", [None, "per_token", "per_sequence"])
def test_variants_match_liger_at_lam_zero(variant, ratio):
    """Every loss type and option of Liger 0.8.5 beyond the PPO clip, with and without the vLLM
    ratio ([B, T] or [B, 1]): loss, metrics and gradients equal Liger's at lam = 0 (LUSPO on a full
    mask where Liger's per-token loss is [B, T]: it leaves the mask out of that sum, see the
    adapter's differences)."""
    d = batch(temperature=0.8)
    if variant == "luspo" or (variant == "luspo_gspo" and ratio == "per_token"):
        d["mask"] = torch.ones_like(d["mask"])
    opts = dict(dict(beta=0.0, use_ref_model=False, epsilon_high=0.28, temperature=0.8), **VARIANTS[variant])
    opts["use_ref_model"] = opts["beta"] != 0
    extra = {} if ratio is None else {"vllm_is_ratio": torch.rand(B, T if ratio == "per_token" else 1) + 0.5}
    want = call(LigerFusedLinearGRPOLoss(compiled=False, **opts), d, True, opts["beta"] != 0, **extra)
    got = call(FusedLinearRLSDLigerLoss(lam=0.0, **opts), d, True, opts["beta"] != 0, **extra)
    assert_same(got, want)
    assert any((g - w).abs().max() > 1e-3 for g, w in zip(want[2], call(LigerFusedLinearGRPOLoss(
        compiled=False, **dict(opts, **{k: v for k, v in DEFAULTS.items() if k in VARIANTS[variant]})),
        d, True, opts["beta"] != 0, **extra)[2])), "the variant changes Liger's gradients on this batch"


DEFAULTS = dict(loss_type="dapo", epsilon_high=0.28, importance_sampling_level="token", delta=None,
                use_bias_correction_kl=False, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, vespo_k_pos=2.0,
                vespo_lambda_pos=3.0, beta=0.0)


@pytest.mark.parametrize("variant", ["cispo", "gspo", "sapo"])
def test_variants_match_liger_in_bf16(variant):
    """bf16 inputs: the drop-in's error against the float64 truth of Liger's own module is within
    Liger's bf16 error plus 1e-2 (relative to the largest entry)."""
    d = batch(temperature=0.8)
    opts = dict(dict(beta=0.0, use_ref_model=False, epsilon_high=0.28, temperature=0.8), **VARIANTS[variant])
    low = {k: (v.to(torch.bfloat16) if k in ("x", "w", "b") else v) for k, v in d.items()}
    high = {k: (v.double() if v.is_floating_point() else v) for k, v in d.items()}
    truth = call(LigerFusedLinearGRPOLoss(compiled=False, **opts), high, True, False)
    liger = call(LigerFusedLinearGRPOLoss(compiled=False, **opts), low, True, False)
    ours = call(FusedLinearRLSDLigerLoss(lam=0.0, **opts), low, True, False)
    for t, a, b in zip([truth[0]] + list(truth[2]), [liger[0]] + list(liger[2]), [ours[0]] + list(ours[2])):
        scale = t.abs().max().item()
        err_liger = (a.double() - t).abs().max().item() / scale
        err_ours = (b.double() - t).abs().max().item() / scale
        assert err_ours <= err_liger + 1e-2, (err_ours, err_liger)


def test_rlsd_credit_composes_with_every_variant():
    """At lam > 0 each variant's loss is rlsd_loss's with the same options (the credit in place of A)."""
    d = batch()
    th = d["x"] + 0.5 * torch.randn(B, T, H)
    for variant in sorted(VARIANTS):
        opts = dict(dict(beta=0.0, use_ref_model=False), **VARIANTS[variant])
        opts["use_ref_model"] = opts["beta"] != 0
        module = FusedLinearRLSDLigerLoss(lam=0.7, **opts)
        got, _ = module(d["x"], d["w"], d["ids"], d["mask"], d["adv"], bias=d["b"], old_per_token_logps=d["old"],
                        ref_per_token_logps=d["ref"], teacher_input=th)
        normalizer = module._normalizer(d["mask"], None)
        want, _ = rlsd_loss(d["x"], d["w"], d["ids"], d["adv"], d["mask"], bias=d["b"], teacher_hidden=th,
                            old_logprobs=d["old"], ref_logprobs=d["ref"] if opts["beta"] else None,
                            options=module.options, loss_agg=LOSS_TYPES[module.loss_type], normalizer=normalizer)
        torch.testing.assert_close(got, want, msg=variant)
        assert module.options.lam == 0.7 and module.options.policy_loss == policy_loss(module.loss_type)
