"""The veRL adapter against veRL 0.9.1's own code (``verl/trainer/ppo/core_algos.py`` and
``verl/utils/experimental/torch_functional.py``), installed in ``.venv-verl`` (``make verl-env``):
at lam = 0 the registered ``rlsd`` policy loss is veRL's ``vanilla`` loss for every aggregation,
with and without ``global_batch_info``; ``logprobs_from_hidden`` is veRL's ``FusedLinearForPPO``."""

import pytest
import torch

core_algos = pytest.importorskip("verl.trainer.ppo.core_algos",
                                 reason="verl is not installed: run these tests in .venv-verl (make verl-env)")
from verl.utils.experimental.torch_functional import FusedLinearForPPO  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402

from rlsd_kernels.integrations.verl import (AGG_MODES, RLSDPolicyLoss, logprobs_from_hidden, register,  # noqa: E402
                                            teacher_log_probs)
from rlsd_kernels.math import rlsd_credit  # noqa: E402

B, T = 5, 11


def actor_config(**global_batch_info):
    """veRL's own ActorConfig (what the actor passes to the policy loss)."""
    config = ActorConfig(strategy="fsdp", rollout_n=1, ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=1,
                         clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
    config.global_batch_info.update(global_batch_info)
    return config


def vanilla(*args, **kwargs):
    return core_algos.get_policy_loss_fn("vanilla")(*args, **kwargs)


def batch():
    lp = (-3 * torch.rand(B, T)).requires_grad_()
    mask = (torch.rand(B, T) > 0.3).float()
    mask[3] = 0
    old = lp.detach() + 0.4 * torch.randn(B, T)
    old[0, :4] -= 2.0  # ratios above clip_ratio_c = 3 on a negative-advantage row: the dual clip acts
    adv = torch.randn(B, 1).expand(B, T).clone()
    adv[0] = -adv[0].abs()
    mask[0, :4] = 1
    teacher = lp.detach() + 0.5 * torch.randn(B, T)
    return lp, old, adv, mask, teacher


def loss_and_grad(fn, lp, *args, **kwargs):
    lp.grad = None
    loss, metrics = fn(*args[:1], lp, *args[1:], **kwargs)
    loss.backward()
    return loss.detach(), metrics, lp.grad.clone()


def assert_same(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[2], want[2], rtol=1e-6, atol=1e-7)
    for key, value in want[1].items():
        assert got[1][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


GLOBAL_INFOS = [{}, dict(dp_size=2, batch_num_tokens=70, global_batch_size=9, loss_scale_factor=16)]


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("info", GLOBAL_INFOS)
@pytest.mark.parametrize("is_weights", [False, True])
def test_registered_loss_at_lam_zero_is_vanilla(mode, info, is_weights):
    """What veRL's ppo_loss calls for loss_mode=rlsd after register(lam=0), with its keywords."""
    register(lam=0.0)
    lp, old, adv, mask, teacher = batch()
    w = torch.rand(B, T) + 0.5 if is_weights else None
    kwargs = dict(loss_agg_mode=mode, config=actor_config(**info), rollout_is_weights=w)
    want = loss_and_grad(vanilla, lp, old, adv, mask, **kwargs)
    with teacher_log_probs(teacher):
        got = loss_and_grad(core_algos.get_policy_loss_fn("rlsd"), lp, old, adv, mask, **kwargs)
    assert_same(got, want)
    assert want[1]["actor/pg_clipfrac_lower"] > 0 and want[1]["actor/pg_clipfrac"] > 0


@pytest.mark.parametrize("policy", ["gspo", "cispo", "sapo"])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("is_weights", [False, True])
def test_registered_variants_at_lam_zero_are_verls(policy, mode, is_weights):
    """register(f"rlsd_{policy}", policy=policy) at lam = 0 is veRL's loss of that name: value,
    gradient and metrics."""
    register(f"rlsd_{policy}", lam=0.0, policy=policy)
    lp, old, adv, mask, teacher = batch()
    w = torch.rand(B, T) + 0.5 if is_weights else None
    kwargs = dict(loss_agg_mode=mode, config=actor_config(), rollout_is_weights=w)
    want = loss_and_grad(core_algos.get_policy_loss_fn(policy), lp, old, adv, mask, **kwargs)
    got = loss_and_grad(core_algos.get_policy_loss_fn(f"rlsd_{policy}"), lp, old, adv, mask, **kwargs)
    assert_same(got, want)
    other = loss_and_grad(vanilla, lp, old, adv, mask, **kwargs)
    assert (other[2] - want[2]).abs().max() > 1e-4, "the variant differs from vanilla on this batch"


@pytest.mark.parametrize("policy", ["vanilla", "gspo", "cispo", "sapo"])
def test_rlsd_credit_composes_with_every_policy(policy):
    """At lam > 0 each registered variant is veRL's loss of the credited advantage Ahat, for the
    per-token losses (the credit is per token, and so are they); GSPO-token too, whose gradient
    reaches each token through its own ratio."""
    lp, old, adv, mask, teacher = batch()
    loss = RLSDPolicyLoss(lam=0.8, eps_w=0.3, policy=policy)
    config = actor_config()
    ahat, _ = rlsd_credit((teacher - lp).detach(), adv, 0.8, 0.3)
    want = loss_and_grad(core_algos.get_policy_loss_fn(policy), lp, old, ahat, mask, "token-mean", config)
    got = loss_and_grad(loss, lp, old, adv, mask, "token-mean", config, teacher_log_prob=teacher)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[2], want[2], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_rlsd_credit_is_vanilla_with_the_credited_advantage(lam):
    """Ahat = A ((1 - lam) + lam clamp(exp(sign(A)(lp_T - lp)), 1 - eps_w, 1 + eps_w)) fed to vanilla."""
    lp, old, adv, mask, teacher = batch()
    config = actor_config()
    w = torch.exp(torch.sign(adv) * (teacher - lp.detach()))
    ahat = adv * ((1 - lam) + lam * w.clamp(0.8, 1.2))
    want = loss_and_grad(vanilla, lp, old, ahat, mask, "token-mean", config)
    loss = RLSDPolicyLoss(lam=lam, eps_w=0.2)
    got = loss_and_grad(loss, lp, old, adv, mask, "token-mean", config, teacher_log_prob=teacher)
    assert_same(got, want)
    assert 0.0 < got[1]["actor/rlsd_credit_clip_frac"] < 1.0
    with teacher_log_probs(teacher):
        via_context = loss_and_grad(loss, lp, old, adv, mask, "token-mean", config)
    assert_same(via_context, want)
    with pytest.raises(ValueError, match="teacher"):
        loss(old, lp, adv, mask, "token-mean", config)


def test_unknown_agg_mode_raises():
    lp, old, adv, mask, _ = batch()
    with pytest.raises(ValueError, match="loss_agg_mode"):
        RLSDPolicyLoss(lam=0.0)(old, lp, adv, mask, "seq-sum", actor_config())


@pytest.mark.parametrize("packed", [False, True])
def test_logprobs_from_hidden_matches_fused_linear_for_ppo(packed):
    """veRL's FusedLinearForPPO (torch backend): padded [B, T, H] and packed [N, H] hidden states."""
    H, V = 16, 53
    hidden = (0.5 * torch.randn(B, T, H)).requires_grad_()
    weight = (0.5 * torch.randn(V, H)).requires_grad_()
    ids = torch.randint(0, V, (B, T))
    h, y = (hidden.reshape(-1, H), ids.reshape(-1)) if packed else (hidden, ids)
    lp, ent = logprobs_from_hidden(h, weight, y, temperature=0.7)
    lp_ref, ent_ref = FusedLinearForPPO(chunk_size=7)(h, weight, y, temperature=0.7)
    assert lp.shape == y.shape and ent.shape == y.shape
    tol = dict(rtol=1e-5, atol=1e-5)  # float32 both
    torch.testing.assert_close(lp, lp_ref, **tol)
    torch.testing.assert_close(ent, ent_ref, **tol)
    g = torch.randn_like(lp_ref)
    grads = torch.autograd.grad((lp * g).sum() + ent.sum(), [hidden, weight])
    grads_ref = torch.autograd.grad((lp_ref * g).sum() + ent_ref.sum(), [hidden, weight])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, **tol)


def test_register_puts_the_loss_in_verls_registry():
    loss = register(lam=0.3)
    assert core_algos.get_policy_loss_fn("rlsd") is loss and loss.lam == 0.3

