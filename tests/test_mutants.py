"""Cases that kill the mutants of math.py and the PyTorch epilogues that the other tests let live
(docs/mutation.md): inputs at the edges that the random cases never reach. Public functions only,
against the float64 truth of tests/truth.py."""

import pytest
import torch
import truth
from inputs import acting_case, assert_close_to_truth, call, max_rel_err
from test_low_precision_plan import low_precision_on_cpu  # noqa: F401 (a fixture: the CUDA bf16 plan on the CPU)

from rlsd_kernels import fused_linear_logprobs

# The chunk loop with the PyTorch epilogues (float32 and float64); math.py is the same for every impl.
IMPLS = ["chunked"]


def _lp(case):
    """The student's target log-probs (float64, detached)."""
    return call(case.cast(torch.float64), "logprobs", "truth").values[0]


def _spread(case, lo, hi):
    """Per-token offsets cycling through [lo, hi] (every token a different one)."""
    n = case.mask.numel()
    return torch.linspace(lo, hi, n, dtype=torch.float64)[torch.randperm(n)].view(case.mask.shape)


def _unlikely_targets(case):
    """The case with a head scaled x8 and, as targets, each token's least likely one: log-probs
    below -30, so old / ref log-probs up to 30 above them are still log-probs (<= 0)."""
    weight = case.weight.detach() * 8.0
    case.targets = (case.hidden.detach() @ weight.T + case.bias.detach()).argmin(-1)
    case.weight = weight.requires_grad_()
    assert _lp(case).max() < -30.0
    return case


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("side", [-1.0, 1.0])
def test_log_ratios_beyond_the_clamp(impl, side):
    """lp - lp_old and lp_ref - lp spread over [15, 30] on one side of 0, past the +-20 clamp before
    exp on about two thirds of the tokens (clamped tokens carry no gradient); k3 is past its own
    clamp at 10 there. Targets the student finds very unlikely leave room above lp on both sides."""
    case = _unlikely_targets(acting_case(dtype=torch.float64))
    lp = _lp(case)
    case.extra["old_logprobs"] = lp - side * _spread(case, 15.0, 30.0)
    case.extra["ref_logprobs"] = lp + side * _spread(case, 15.0, 30.0)
    for kl_type in ("k1", "k2", "k3"):
        assert_close_to_truth(case, impl, torch.float64, kl_coef=0.1, kl_type=kl_type, lam=0.0)
    assert_close_to_truth(case, impl, torch.float64, dual_clip=3.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_one_valid_token(impl, agg):
    """Sequences with exactly one valid token, and a batch with a single one: the denominators
    (clamped to >= 1 for empty ones) are 1 there."""
    case = acting_case(dtype=torch.float64)
    case.mask.zero_()
    case.mask[0, 3] = 1.0
    assert_close_to_truth(case, impl, torch.float64, loss_agg=agg, compute_entropy=True)
    case.mask[1, 5] = 1.0
    case.mask[3, 0:4] = 1.0
    assert_close_to_truth(case, impl, torch.float64, loss_agg=agg, compute_entropy=True)
    assert_close_to_truth(case, impl, torch.float64, api="opsd", loss_agg=agg)


@pytest.mark.parametrize("impl", IMPLS)
def test_float64_normalizer_not_a_float32_number(impl):
    """normalizer = 1/3 is used in float64 (rounded to float32 it is off by a relative 1e-8)."""
    case = acting_case(dtype=torch.float64)
    assert_close_to_truth(case, impl, torch.float64, normalizer=1.0 / 3.0)
    assert_close_to_truth(case, impl, torch.float64, api="opsd", normalizer=1.0 / 3.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_and_unit_advantages(impl):
    """Per-token advantages of exactly 0, +1 and -1 next to others: the metrics that count only
    tokens with A != 0 (credit clip) or of one sign (PPO clips) must leave the zeros out."""
    case = acting_case(dtype=torch.float64)
    adv = torch.randn(case.mask.shape, dtype=torch.float64)
    adv[:, 0:3] = 0.0
    adv[:, 3:5] = 1.0
    adv[:, 5:7] = -1.0
    case.advantages = adv
    case.extra["old_logprobs"] = _lp(case) - _spread(case, -1.0, 1.0)
    for kwargs in ({}, dict(negative_only=True), dict(dual_clip=2.0), dict(lam=0.5, eps_w=0.1)):
        assert_close_to_truth(case, impl, torch.float64, **kwargs)


@pytest.mark.parametrize("impl", IMPLS)
def test_ratios_of_exactly_one_with_zero_clip_widths(impl):
    """A teacher equal to the student (w = 1 exactly) and no old_logprobs (rho = 1 exactly), with
    eps_w = eps_low = eps_high = 0: every clamp leaves every token where it is, so no clip fraction
    counts one."""
    case = acting_case(dtype=torch.float64)
    case.extra["teacher_hidden"] = case.hidden.detach().clone()
    del case.extra["old_logprobs"]
    want = assert_close_to_truth(case, impl, torch.float64, eps_w=0.0, eps_low=0.0, eps_high=0.0)
    assert want.metrics["credit_clip_frac"].item() == 0.0 and want.metrics["ppo_clip_frac"].item() == 0.0


def test_vocabulary_blocks_with_targets_on_their_edges(low_precision_on_cpu):  # noqa: F811
    """The bf16 plan's gradient sweep over blocks of 20 vocabulary rows (memory_budget = N x 6 bytes
    x 20), the one caller of the epilogue whose targets fall outside the block: targets on the first
    and the last row of each block (seen from the block before, a first row is one past its end)."""
    V, H = 123, 16
    h = torch.randn(2, 8, H).bfloat16().requires_grad_()
    w = (torch.randn(V, H) * 0.5).bfloat16().requires_grad_()
    y = torch.tensor([0, 19, 20, 39, 40, 59, 60, 79, 80, 99, 100, 119, 120, 122, 1, 21]).view(2, 8)
    u = torch.linspace(-1, 1, y.numel()).view(y.shape)
    lp, ent = fused_linear_logprobs(h, w, y, return_entropy=True, temperature=1.3, impl="chunked",
                                    memory_budget=16 * 6 * 20)
    g = torch.autograd.grad((lp.float() * u).sum() + 0.3 * ent.float().sum(), [h, w])
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    lp64, ent64 = truth.linear_logprobs(h64, w64, y, None, 1.3, True)
    g64 = torch.autograd.grad((lp64 * u.double()).sum() + 0.3 * ent64.sum(), [h64, w64])
    assert max_rel_err(lp, lp64) < 1e-2 and max_rel_err(ent, ent64) < 1e-2
    for a, b in zip(g, g64):
        assert max_rel_err(a, b) < 3e-2


# The policy-loss variants' edges (docs/mutation.md, "The variants' run").

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("level", ["sequence", "sequence-token"])
def test_sequence_ratio_with_one_valid_token_and_log_ratios_beyond_the_clamp(impl, level):
    """GSPO's per-sequence mean of lp - lp_old: a sequence with exactly one valid token (its mean is
    that token's), and per-token log-ratios past +-20 on both sides, clamped before the mean."""
    case = _unlikely_targets(acting_case(dtype=torch.float64))
    case.mask[2] = 0.0
    case.mask[2, 4] = 1.0
    lp = _lp(case)
    side = torch.where(torch.arange(case.mask.shape[1]) % 2 == 0, 1.0, -1.0).double()
    case.extra["old_logprobs"] = lp - side * _spread(case, 15.0, 30.0)
    case.extra["old_logprobs"][2, 4] = lp[2, 4] - 0.1  # the one-token sequence inside the clip
    assert_close_to_truth(case, impl, torch.float64, is_level=level, lam=0.5)


@pytest.mark.parametrize("impl", IMPLS)
def test_vespo_log_ratios_and_rollout_weights_beyond_their_clamps(impl):
    """VESPO's log-weight: one token per sequence with lp - lp_old past +-20 (clamped before the
    sum) while the others keep the sum inside [log 1e-8, 20], so phi is far from 0 and 1; and
    rollout weights below 1e-8 and above e^20 (their logs clamped to [log 1e-8, 20])."""
    case = _unlikely_targets(acting_case(dtype=torch.float64))
    lp = _lp(case)
    B, T = case.mask.shape
    case.mask.fill_(1.0)
    delta = torch.full((B, T), 0.1, dtype=torch.float64)
    delta[:, 0] = torch.tensor([25.0, -25.0, 22.0, -22.0], dtype=torch.float64)[:B]
    delta[:, 1] = -torch.sign(delta[:, 0]) * 19.0  # the clamped sum stays near 0
    case.extra["old_logprobs"] = lp - delta
    opts = dict(policy_loss="vespo", vespo_k_pos=1.5, vespo_lambda_pos=1.0, vespo_k_neg=1.0, vespo_lambda_neg=0.5)
    assert_close_to_truth(case, impl, torch.float64, **opts)
    weights = torch.ones(B, T, dtype=torch.float64)
    weights[:, 2] = torch.tensor([1e-12, 1e12, 1e-10, 1e10], dtype=torch.float64)[:B]
    weights[:, 3] = 1.0 / weights[:, 2]
    case.extra["rollout_is_weights"] = weights
    assert_close_to_truth(case, impl, torch.float64, **opts)


@pytest.mark.parametrize("impl", IMPLS)
def test_vespo_far_off_policy_sequences(impl):
    """Every sequence's summed log-ratio below log 1e-8: phi from the clamped log-weight, tiny but
    compared relatively in float64."""
    case = acting_case(dtype=torch.float64)
    case.mask.fill_(1.0)
    lp = _lp(case)
    case.extra["old_logprobs"] = torch.zeros_like(lp)  # lp - lp_old = lp: a few nats below 0 per token
    assert (torch.where(case.mask != 0, lp, 0.0).sum(-1) < -18.5).all()
    assert_close_to_truth(case, impl, torch.float64, policy_loss="vespo", vespo_k_pos=0.5, vespo_lambda_pos=1.0,
                          vespo_k_neg=0.5, vespo_lambda_neg=1.0)
