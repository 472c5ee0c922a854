"""The veRL adapter against veRL 0.9.1's ``vanilla`` policy loss and ``agg_loss``.

veRL 0.9.1 cannot be installed next to this project's stack (it pins transformers<5.11 and pulls
ray), so ``vanilla_reference`` and ``agg_loss_reference`` below re-implement
``compute_policy_loss_vanilla`` and ``agg_loss`` line by line from
``verl/trainer/ppo/core_algos.py`` of veRL 0.9.1 (and ``masked_mean``/``masked_sum`` from
``verl/utils/torch_functional.py``). Where veRL is importable, ``test_matches_installed_verl``
also checks against the installed code.
"""

import sys
import types

import pytest
import torch

from rlsd_kernels.integrations.verl import (AGG_MODES, RLSDPolicyLoss, logprobs_from_hidden, register,
                                            teacher_log_probs)

B, T = 5, 11


class ActorConfig(dict):
    """The fields of veRL's ActorConfig the policy losses read (BaseConfig is a Mapping with get())."""

    def __getattr__(self, key):
        return self[key]


def actor_config(**global_batch_info):
    return ActorConfig(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0,
                       global_batch_info=global_batch_info)


def masked_sum(values, mask, axis=None):
    return (torch.where(mask.bool(), values, 0.0) * mask).sum(axis=axis)


def masked_mean(values, mask, axis=None):
    return masked_sum(values, mask, axis) / (mask.sum(axis=axis) + 1e-8)


def agg_loss_reference(loss_mat, loss_mask, loss_agg_mode, dp_size=1, batch_num_tokens=None,
                       global_batch_size=None, loss_scale_factor=None):
    if loss_agg_mode == "token-mean":
        if batch_num_tokens is None:
            batch_num_tokens = loss_mask.sum()
        return masked_sum(loss_mat, loss_mask) / batch_num_tokens * dp_size
    if loss_agg_mode == "token-sum":
        return masked_sum(loss_mat, loss_mask) * dp_size
    if loss_agg_mode in ["seq-mean-token-sum", "seq-mean-token-sum-norm"]:
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        seq_mask = (torch.sum(loss_mask, dim=-1) > 0).float()
        if global_batch_size is None:
            global_batch_size = seq_mask.sum()
        loss = masked_sum(seq_losses, seq_mask) / global_batch_size * dp_size
        if loss_agg_mode == "seq-mean-token-sum-norm":
            loss /= loss_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor
        return loss
    seq_mask = torch.sum(loss_mask, dim=-1)
    seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (seq_mask + 1e-8)
    seq_mask = (seq_mask > 0).float()
    if global_batch_size is None:
        global_batch_size = seq_mask.sum()
    return masked_sum(seq_losses, seq_mask) / global_batch_size * dp_size


def vanilla_reference(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
                      rollout_is_weights=None):
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = masked_mean(-negative_approx_kl, response_mask)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - config.clip_ratio_low, 1 + config.clip_ratio_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = masked_mean(torch.gt(pg_losses2, pg_losses1).float(), response_mask)
    pg_losses3 = -advantages * config.clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_clipfrac_lower = masked_mean(torch.gt(clip_pg_losses1, pg_losses3) * (advantages < 0).float(), response_mask)
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights
    pg_loss = agg_loss_reference(pg_losses, response_mask, loss_agg_mode, **config.global_batch_info)
    return pg_loss, {"actor/pg_clipfrac": pg_clipfrac.item(), "actor/ppo_kl": ppo_kl.item(),
                     "actor/pg_clipfrac_lower": pg_clipfrac_lower.item()}


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
def test_matches_vanilla_at_lam_zero(mode, info, is_weights):
    lp, old, adv, mask, _ = batch()
    config = actor_config(**info)
    w = torch.rand(B, T) + 0.5 if is_weights else None
    want = loss_and_grad(vanilla_reference, lp, old, adv, mask, mode, config, w)
    got = loss_and_grad(RLSDPolicyLoss(lam=0.0), lp, old, adv, mask, mode, config, w)
    assert_same(got, want)
    assert want[1]["actor/pg_clipfrac_lower"] > 0 and want[1]["actor/pg_clipfrac"] > 0


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_rlsd_credit_is_vanilla_with_the_credited_advantage(lam):
    """Ahat = A ((1 - lam) + lam clamp(exp(sign(A)(lp_T - lp)), 1 - eps_w, 1 + eps_w)) fed to vanilla."""
    lp, old, adv, mask, teacher = batch()
    config = actor_config()
    w = torch.exp(torch.sign(adv) * (teacher - lp.detach()))
    ahat = adv * ((1 - lam) + lam * w.clamp(0.8, 1.2))
    want = loss_and_grad(vanilla_reference, lp, old, ahat, mask, "token-mean", config)
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
def test_logprobs_from_hidden_matches_logits(packed):
    """veRL's logprobs_from_logits / entropy_from_logits on (h W^T) / temperature."""
    H, V = 16, 53
    hidden = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, V, (B, T))
    h, y = (hidden.reshape(-1, H), ids.reshape(-1)) if packed else (hidden, ids)
    lp, ent = logprobs_from_hidden(h, weight, y, temperature=0.7)
    logits = h @ weight.T / 0.7
    lp_ref = torch.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    ent_ref = torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)
    assert lp.shape == y.shape and ent.shape == y.shape
    torch.testing.assert_close(lp, lp_ref)
    torch.testing.assert_close(ent, ent_ref)
    g = torch.randn_like(lp_ref)
    grads = torch.autograd.grad((lp * g).sum() + ent.sum(), [hidden, weight])
    grads_ref = torch.autograd.grad((lp_ref * g).sum() + ent_ref.sum(), [hidden, weight])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)


def test_register_uses_verls_registry(monkeypatch):
    """``register`` goes through ``verl.trainer.ppo.core_algos.register_policy_loss`` (a stand-in
    module here, so this runs without veRL)."""
    registry = {}

    def register_policy_loss(name):
        def decorator(fn):
            registry[name] = fn
            return fn
        return decorator

    for name in ("verl", "verl.trainer", "verl.trainer.ppo"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    core = types.ModuleType("verl.trainer.ppo.core_algos")
    core.register_policy_loss = register_policy_loss
    monkeypatch.setitem(sys.modules, "verl.trainer.ppo.core_algos", core)
    loss = register(lam=0.3)
    assert registry == {"rlsd": loss} and loss.lam == 0.3


@pytest.mark.parametrize("mode", AGG_MODES)
def test_matches_installed_verl(mode):
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl is not installed")
    lp, old, adv, mask, _ = batch()
    config = actor_config()
    want = loss_and_grad(core_algos.get_policy_loss_fn("vanilla"), lp, old, adv, mask, mode, config)
    got = loss_and_grad(RLSDPolicyLoss(lam=0.0), lp, old, adv, mask, mode, config)
    assert_same(got, want)
