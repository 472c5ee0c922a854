"""Hostile inputs to the kernel API (rlsd_loss, opsd_loss, fused_linear_logprobs,
FusedLinearRLSDLoss, impl names, VocabParallel): every bad argument gets a clear error naming it,
and odd but valid inputs (views, empty or all-masked batches, any integer dtype, frozen leaves,
float64) give the right value."""

import math

import pytest
import torch
import torch.distributed as dist
from inputs import FUSED_IMPLS, make_case, max_rel_err, with_options

from rlsd_kernels import (FusedLinearRLSDLoss, RLSDOptions, VocabParallel, fused_linear_logprobs, opsd_loss,
                          rlsd_loss)

IMPLS = ["eager"] + FUSED_IMPLS  # those that take CPU tensors here
FAST = [i for i in IMPLS if not i.startswith("triton")]  # Triton runs in its (slow) interpreter here
TRITON = [i for i in IMPLS if i.startswith("triton")]
NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def small(B=2, T=5, H=8, V=11, dtype=torch.float32, **kw):
    return make_case(B=B, T=T, H=H, V=V, dtype=dtype, **kw)


def rlsd_args(case, **overrides):
    args = dict(hidden=case.hidden, weight=case.weight, targets=case.targets, advantages=case.advantages,
                mask=case.mask, bias=case.bias, **case.extra)
    args.update(overrides)
    args.setdefault("impl", "chunked")
    return args


def call_rlsd(args):
    """rlsd_loss on ``args`` (RLSDOptions' fields among them gathered into ``options=``)."""
    args = with_options(args)
    pos = [args.pop(k) for k in ("hidden", "weight", "targets", "advantages", "mask")]
    return rlsd_loss(*pos, **args)


def call_opsd(case, form, **overrides):
    args = dict(hidden=case.hidden, weight=case.weight, targets=case.targets, mask=case.mask, bias=case.bias,
                teacher_hidden=case.extra["teacher_hidden"], form=form, impl="chunked")
    args.update(overrides)
    pos = [args.pop(k) for k in ("hidden", "weight", "targets", "mask")]
    return opsd_loss(*pos, **args)


def poisoned(t, value):
    """A copy of ``t`` with one element set to ``value`` (at an unmasked position of row 0)."""
    t = t.detach().clone()
    t.view(-1)[1] = value
    return t


def grads_of(loss, leaves):
    leaves = [t for t in leaves if t is not None and t.requires_grad]
    return torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)


# ----------------------------------------------------------------------------------------------
# Shapes, dtypes, devices, ids: rlsd_loss
# ----------------------------------------------------------------------------------------------

META = torch.device("meta")
BAD = {
    # hidden
    "hidden_list": (lambda c: dict(hidden=c.hidden.tolist()), TypeError, "hidden"),
    "hidden_int": (lambda c: dict(hidden=c.hidden.long()), TypeError, "hidden"),
    "hidden_bool": (lambda c: dict(hidden=c.hidden > 0), TypeError, "hidden"),
    "hidden_2d": (lambda c: dict(hidden=c.hidden[0]), ValueError, "hidden"),
    "hidden_4d": (lambda c: dict(hidden=c.hidden[None]), ValueError, "hidden"),
    "hidden_meta": (lambda c: dict(hidden=c.hidden.to(META)), ValueError, "device|hidden"),
    # weight
    "weight_1d": (lambda c: dict(weight=c.weight[0]), ValueError, "weight"),
    "weight_3d": (lambda c: dict(weight=c.weight[None]), ValueError, "weight"),
    "weight_wrong_H": (lambda c: dict(weight=c.weight[:, :-1]), ValueError, "weight"),
    "weight_int": (lambda c: dict(weight=c.weight.long()), TypeError, "weight"),
    "weight_float64": (lambda c: dict(weight=c.weight.double()), TypeError, "weight"),
    "weight_float16": (lambda c: dict(weight=c.weight.half()), TypeError, "weight"),
    "weight_bfloat16": (lambda c: dict(weight=c.weight.bfloat16()), TypeError, "weight"),
    "weight_meta": (lambda c: dict(weight=c.weight.to(META)), ValueError, "weight"),
    "weight_empty_vocab": (lambda c: dict(weight=c.weight[:0], bias=c.bias[:0]), ValueError, "weight|targets"),
    # bias
    "bias_2d": (lambda c: dict(bias=c.bias[None]), ValueError, "bias"),
    "bias_wrong_V": (lambda c: dict(bias=c.bias[:-1]), ValueError, "bias"),
    "bias_int": (lambda c: dict(bias=c.bias.long()), TypeError, "bias"),
    "bias_float64": (lambda c: dict(bias=c.bias.double()), TypeError, "bias"),
    "bias_list": (lambda c: dict(bias=c.bias.tolist()), TypeError, "bias"),
    "bias_meta": (lambda c: dict(bias=c.bias.to(META)), ValueError, "bias"),
    # targets
    "targets_list": (lambda c: dict(targets=c.targets.tolist()), TypeError, "targets"),
    "targets_float": (lambda c: dict(targets=c.targets.float()), TypeError, "targets"),
    "targets_bool": (lambda c: dict(targets=c.targets > 3), TypeError, "targets"),
    "targets_complex": (lambda c: dict(targets=c.targets.to(torch.complex64)), TypeError, "targets"),
    "targets_short": (lambda c: dict(targets=c.targets[:, :-1]), ValueError, "targets"),
    "targets_1d": (lambda c: dict(targets=c.targets.reshape(-1)), ValueError, "targets"),
    "targets_negative": (lambda c: dict(targets=poisoned(c.targets, -1)), ValueError, "targets"),
    "targets_eq_V": (lambda c: dict(targets=poisoned(c.targets, 11)), ValueError, "targets"),
    "targets_huge": (lambda c: dict(targets=poisoned(c.targets, 2 ** 62)), ValueError, "targets"),
    "targets_int8_negative": (lambda c: dict(targets=poisoned(c.targets, -1).to(torch.int8)), ValueError, "targets"),
    "targets_uint8_too_big": (lambda c: dict(targets=poisoned(c.targets, 200).to(torch.uint8)), ValueError,
                              "targets"),
    "targets_meta": (lambda c: dict(targets=c.targets.to(META)), ValueError, "targets"),
    # advantages
    "advantages_float": (lambda c: dict(advantages=1.0), TypeError, "advantages"),
    "advantages_int": (lambda c: dict(advantages=c.advantages.long()), TypeError, "advantages"),
    "advantages_0d": (lambda c: dict(advantages=c.advantages[0]), ValueError, "advantages"),
    "advantages_B_plus_1": (lambda c: dict(advantages=torch.zeros(3)), ValueError, "advantages"),
    "advantages_T_plus_1": (lambda c: dict(advantages=torch.zeros(2, 6)), ValueError, "advantages"),
    "advantages_3d": (lambda c: dict(advantages=torch.zeros(2, 5, 1)), ValueError, "advantages"),
    "advantages_meta": (lambda c: dict(advantages=c.advantages.to(META)), ValueError, "advantages"),
    # mask
    "mask_none": (lambda c: dict(mask=None), TypeError, "mask"),
    "mask_list": (lambda c: dict(mask=c.mask.tolist()), TypeError, "mask"),
    "mask_short": (lambda c: dict(mask=c.mask[:, :-1]), ValueError, "mask"),
    "mask_meta": (lambda c: dict(mask=c.mask.to(META)), ValueError, "mask"),
    # teacher
    "teacher_hidden_short": (lambda c: dict(teacher_hidden=c.extra["teacher_hidden"][:, :-1]), ValueError,
                             "teacher_hidden"),
    "teacher_hidden_int": (lambda c: dict(teacher_hidden=c.extra["teacher_hidden"].long()), TypeError,
                           "teacher_hidden"),
    "teacher_hidden_float64": (lambda c: dict(teacher_hidden=c.extra["teacher_hidden"].double()), TypeError,
                               "teacher_hidden"),
    "teacher_hidden_bfloat16": (lambda c: dict(teacher_hidden=c.extra["teacher_hidden"].bfloat16()), TypeError,
                                "teacher_hidden"),
    "teacher_hidden_meta": (lambda c: dict(teacher_hidden=c.extra["teacher_hidden"].to(META)), ValueError,
                            "teacher_hidden"),
    "teacher_logprobs_shape": (lambda c: dict(teacher_hidden=None, teacher_logprobs=torch.zeros(2, 6)), ValueError,
                               "teacher_logprobs"),
    "teacher_logprobs_list": (lambda c: dict(teacher_hidden=None, teacher_logprobs=[[0.0] * 5] * 2), TypeError,
                              "teacher_logprobs"),
    "teacher_logprobs_meta": (lambda c: dict(teacher_hidden=None, teacher_logprobs=c.mask.to(META)), ValueError,
                              "teacher_logprobs"),
    "no_teacher": (lambda c: dict(teacher_hidden=None), ValueError, "teacher"),
    # other per-token inputs
    "old_logprobs_shape": (lambda c: dict(old_logprobs=c.extra["old_logprobs"][:1]), ValueError, "old_logprobs"),
    "old_logprobs_meta": (lambda c: dict(old_logprobs=c.extra["old_logprobs"].to(META)), ValueError,
                          "old_logprobs"),
    "ref_logprobs_shape": (lambda c: dict(kl_coef=0.1, ref_logprobs=c.mask.T), ValueError, "ref_logprobs"),
    "kl_without_ref": (lambda c: dict(kl_coef=0.1), ValueError, "ref_logprobs"),
    "token_weights_shape": (lambda c: dict(token_weights=c.mask[0]), ValueError, "token_weights"),
    "token_weights_meta": (lambda c: dict(token_weights=c.mask.to(META)), ValueError, "token_weights"),
    "credit_mask_shape": (lambda c: dict(credit_mask=c.mask[:, None]), ValueError, "credit_mask"),
    # names
    "impl_unknown": (lambda c: dict(impl="cuda"), ValueError, "impl"),
    "impl_empty": (lambda c: dict(impl=""), ValueError, "impl"),
    "impl_none": (lambda c: dict(impl=None), ValueError, "impl"),
    "impl_int": (lambda c: dict(impl=3), ValueError, "impl"),
    "impl_upper": (lambda c: dict(impl="CHUNKED"), ValueError, "impl"),
    "loss_agg_unknown": (lambda c: dict(loss_agg="mean"), ValueError, "loss_agg"),
    "loss_agg_none": (lambda c: dict(loss_agg=None), ValueError, "loss_agg"),
    "kl_type_unknown": (lambda c: dict(kl_type="k4"), ValueError, "kl_type"),
    "kl_type_int": (lambda c: dict(kl_type=3), ValueError, "kl_type"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_rlsd_loss_rejects(name):
    case = small()
    make, error, word = BAD[name]
    with pytest.raises(error, match=word):
        call_rlsd(rlsd_args(case, **make(case)))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [-1, 11, 2 ** 31, 2 ** 62, -(2 ** 62)])
def test_out_of_range_ids_every_impl(impl, bad):
    """Every impl (the C++ one included) raises on a bad id instead of reading out of bounds."""
    case = small()
    with pytest.raises(ValueError, match="targets"):
        call_rlsd(rlsd_args(case, targets=poisoned(case.targets, bad), impl=impl))
    with pytest.raises(ValueError, match="targets"):
        fused_linear_logprobs(case.hidden, case.weight, poisoned(case.targets, bad), impl=impl)


# ----------------------------------------------------------------------------------------------
# NaN / inf in every tensor argument
# ----------------------------------------------------------------------------------------------

TENSOR_ARGS = ["hidden", "weight", "bias", "teacher_hidden", "teacher_logprobs", "old_logprobs", "ref_logprobs",
               "advantages", "token_weights", "credit_mask", "mask", "normalizer"]


def _poison_args(case, name, value):
    args = rlsd_args(case)
    if name == "teacher_logprobs":
        args.update(teacher_hidden=None, teacher_logprobs=poisoned(-torch.rand_like(case.mask), value))
    elif name == "ref_logprobs":
        args.update(kl_coef=0.1, ref_logprobs=poisoned(case.extra["old_logprobs"], value))
    elif name in ("token_weights", "credit_mask"):
        args[name] = poisoned(torch.ones_like(case.mask), value)
    elif name == "normalizer":
        args[name] = torch.tensor(value)
    else:
        args[name] = poisoned(args[name], value)
    return args


@pytest.mark.parametrize("value", sorted(NONFINITE))
@pytest.mark.parametrize("name", TENSOR_ARGS)
def test_rlsd_loss_rejects_nonfinite(name, value):
    case = small()
    with pytest.raises(ValueError, match=name):
        call_rlsd(_poison_args(case, name, NONFINITE[value]))


@pytest.mark.parametrize("value", sorted(NONFINITE))
@pytest.mark.parametrize("name", ["hidden", "weight", "bias", "teacher_hidden", "token_weights", "mask", "normalizer"])
@pytest.mark.parametrize("form", ["sampled", "jsd"])
def test_opsd_loss_rejects_nonfinite(form, name, value):
    case = small()
    bad = NONFINITE[value]
    if name == "token_weights":
        over = {name: poisoned(torch.ones_like(case.mask), bad)}
    elif name == "normalizer":
        over = {name: torch.tensor(bad)}
    elif name == "teacher_hidden":
        over = {name: poisoned(case.extra["teacher_hidden"], bad)}
    else:
        over = {name: poisoned(getattr(case, name), bad)}
    with pytest.raises(ValueError, match=name):
        call_opsd(case, form, **over)


@pytest.mark.parametrize("value", sorted(NONFINITE))
def test_opsd_sampled_rejects_nonfinite_teacher_logprobs(value):
    case = small()
    with pytest.raises(ValueError, match="teacher_logprobs"):
        call_opsd(case, "sampled", teacher_hidden=None,
                  teacher_logprobs=poisoned(-torch.rand_like(case.mask), NONFINITE[value]))


@pytest.mark.parametrize("value", sorted(NONFINITE))
@pytest.mark.parametrize("name", ["hidden", "weight", "bias"])
def test_logprobs_rejects_nonfinite(name, value):
    case = small()
    args = dict(hidden=case.hidden, weight=case.weight, bias=case.bias)
    args[name] = poisoned(args[name], NONFINITE[value])
    with pytest.raises(ValueError, match=name):
        fused_linear_logprobs(args["hidden"], args["weight"], case.targets, bias=args["bias"], impl="chunked")


def test_finite_values_whose_sum_overflows_are_accepted():
    """The streaming finiteness check must not mistake an overflowing sum for a NaN."""
    case = small()
    hidden = case.hidden.detach().clone()
    hidden[0, 0, :] = 3e38  # finite, but the float32 sum overflows
    mask = torch.ones_like(case.mask)
    mask[0, 0] = 0  # ... and its logits would be inf, so the token is masked
    loss, _ = call_rlsd(rlsd_args(case, hidden=hidden, mask=mask))
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------------------------
# Scalars: temperatures, epsilons, coefficients, flags
# ----------------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
BAD_SCALARS = {
    "temperature": [0, 0.0, -1.0, NAN, INF, -INF, "1.0", True, None, torch.tensor(1.0), [1.0]],
    "lam": [-0.1, 1.5, NAN, INF, "0.5", True, None],
    "eps_w": [-0.1, 1.0, NAN, INF, "0.2", True],
    "eps_low": [-0.1, 1.0, NAN, INF, "0.2", True],
    "eps_high": [-0.1, NAN, INF, "0.28", True, None],
    "dual_clip": [0.5, 1.0, -3.0, NAN, INF, "3", True],
    "kl_coef": [-0.1, NAN, INF, "0.1", True, None],
    "entropy_coef": [NAN, INF, -INF, "0.01", True, None],
    "negative_only": ["no", 2, None, NAN],
    "compute_entropy": ["no", 2, NAN],
    "memory_budget": [0, -1, 1.5, "1MB", True, NAN],
}
SCALAR_CASES = [(name, v) for name, values in BAD_SCALARS.items() for v in values]


@pytest.mark.parametrize("name,value", SCALAR_CASES, ids=[f"{n}={v!r}" for n, v in SCALAR_CASES])
def test_rlsd_loss_rejects_bad_scalar(name, value):
    case = small()
    extra = {"ref_logprobs": case.extra["old_logprobs"]} if name == "kl_coef" else {}
    with pytest.raises((ValueError, TypeError), match=name):
        call_rlsd(rlsd_args(case, **{name: value}, **extra))


@pytest.mark.parametrize("value", [0, -1.0, NAN, INF, "0.5", True, -0.0 - 1e-9, 1.0 + 1e-9])
def test_opsd_loss_rejects_bad_beta(value):
    case = small()
    if value == 0:
        call_opsd(case, "jsd", beta=0)  # 0 is the forward KL: valid
        return
    with pytest.raises((ValueError, TypeError), match="beta"):
        call_opsd(case, "jsd", beta=value)


@pytest.mark.parametrize("value", [0, 0.0, -2.0, NAN, INF, "1", True, None])
def test_opsd_and_logprobs_reject_bad_temperature(value):
    case = small()
    for form in ("sampled", "jsd"):
        with pytest.raises((ValueError, TypeError), match="temperature"):
            call_opsd(case, form, temperature=value)
    with pytest.raises((ValueError, TypeError), match="temperature"):
        fused_linear_logprobs(case.hidden, case.weight, case.targets, temperature=value, impl="chunked")


@pytest.mark.parametrize("value", [0, 0.0, -5.0, NAN, INF, -INF, "10", True, False, torch.tensor([1.0, 2.0]),
                                   torch.tensor(0.0), torch.tensor(-1.0), torch.tensor(True), [3.0]])
def test_bad_normalizer(value):
    case = small()
    with pytest.raises((ValueError, TypeError), match="normalizer"):
        call_rlsd(rlsd_args(case, normalizer=value))


def test_normalizer_forms_agree():
    """A Python number, a 0-d float tensor and a fraction all act as the denominator."""
    case = small(dtype=torch.float64)
    ref = call_rlsd(rlsd_args(case, normalizer=7))[0]
    for n in (7.0, torch.tensor(7.0), torch.tensor(7.0, dtype=torch.float64), torch.tensor(7), torch.tensor([7.0])):
        assert max_rel_err(call_rlsd(rlsd_args(case, normalizer=n))[0], ref) < 1e-14
    half = call_rlsd(rlsd_args(case, normalizer=0.5))[0]
    assert max_rel_err(half, ref * 14) < 1e-13


def test_other_entry_points_reject_names():
    case = small()
    with pytest.raises(ValueError, match="form"):
        call_opsd(case, "kl")
    with pytest.raises(ValueError, match="form"):
        call_opsd(case, None)
    with pytest.raises(ValueError, match="teacher_hidden"):
        call_opsd(case, "jsd", teacher_hidden=None, teacher_logprobs=case.extra["old_logprobs"])
    with pytest.raises(ValueError, match="teacher"):
        call_opsd(case, "sampled", teacher_hidden=None)
    with pytest.raises(ValueError, match="impl"):
        fused_linear_logprobs(case.hidden, case.weight, case.targets, impl="fast")
    with pytest.raises(ValueError, match="impl"):
        call_opsd(case, "jsd", impl="fast")
    with pytest.raises((TypeError, ValueError), match="return_entropy"):
        fused_linear_logprobs(case.hidden, case.weight, case.targets, return_entropy="yes", impl="chunked")


def test_fused_linear_logprobs_any_leading_shape():
    """hidden [..., H] with targets [...]: one token, a flat batch and [B, T] agree."""
    case = small(dtype=torch.float64)
    full, _ = fused_linear_logprobs(case.hidden, case.weight, case.targets, impl="chunked")
    flat, _ = fused_linear_logprobs(case.hidden.reshape(-1, 8), case.weight, case.targets.reshape(-1), impl="chunked")
    one, _ = fused_linear_logprobs(case.hidden[1, 2], case.weight, case.targets[1, 2], impl="chunked")
    assert one.shape == () and max_rel_err(flat, full.reshape(-1)) < 1e-14 and max_rel_err(one, full[1, 2]) < 1e-14


def test_fused_linear_logprobs_rejects_shapes():
    case = small()
    with pytest.raises(ValueError, match="targets"):
        fused_linear_logprobs(case.hidden, case.weight, case.targets[:, :-1], impl="chunked")
    with pytest.raises(ValueError, match="weight"):
        fused_linear_logprobs(case.hidden, case.weight[:, :-1], case.targets, impl="chunked")
    with pytest.raises(TypeError, match="hidden"):
        fused_linear_logprobs(case.hidden.long(), case.weight, case.targets, impl="chunked")
    with pytest.raises(ValueError, match="hidden"):
        fused_linear_logprobs(case.hidden[0, 0, 0], case.weight, case.targets[0, 0], impl="chunked")
    with pytest.raises(ValueError, match="device|weight"):
        fused_linear_logprobs(case.hidden, case.weight.to(META), case.targets, impl="chunked")


# ----------------------------------------------------------------------------------------------
# Module form
# ----------------------------------------------------------------------------------------------

def test_module_form_checks_at_call_and_follows_lam():
    case = small(dtype=torch.float64)
    module = FusedLinearRLSDLoss(impl="chunked", options=RLSDOptions(eps_w=0.3))
    args = rlsd_args(case)
    args.pop("impl")
    pos = [args.pop(k) for k in ("hidden", "weight", "targets", "advantages", "mask")]
    got = module(*pos, **args)[0]
    assert max_rel_err(got, call_rlsd(rlsd_args(case, eps_w=0.3))[0]) < 1e-14
    module.lam = 0.0
    assert max_rel_err(module(*pos, **args)[0], call_rlsd(rlsd_args(case, eps_w=0.3, lam=0.0))[0]) < 1e-14
    with pytest.raises(ValueError, match="lam"):
        module.lam = 2.0  # checked where it is set; the options stay valid
    assert module.options == RLSDOptions(eps_w=0.3, lam=0.0)
    module.lam = 1.0
    with pytest.raises(ValueError, match="targets"):
        module(pos[0], pos[1], poisoned(pos[2], 99), *pos[3:], **args)
    for bad in (dict(unknown_option=1), dict(eps_w=0.3), dict(options={"eps_w": 0.3})):
        with pytest.raises(TypeError):
            FusedLinearRLSDLoss(impl="chunked", **bad)
    with pytest.raises(ValueError, match="impl"):
        FusedLinearRLSDLoss(impl="nope")(*pos, **args)


# ----------------------------------------------------------------------------------------------
# Empty and all-masked batches
# ----------------------------------------------------------------------------------------------

def _impl_case(impl, **kw):
    """Tiny shapes for the Triton interpreter, small ones otherwise."""
    return small(B=2, T=3, H=4, V=5, **kw) if impl.startswith("triton") else small(**kw)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(0, 5), (2, 0)], ids=["B=0", "T=0"])
def test_empty_batch(impl, shape):
    """No tokens: zero loss, zero gradients of the right shapes, no NaN, for every entry point."""
    B, T = shape
    H, V = 4, 5
    hidden = torch.randn(B, T, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    bias = torch.randn(V, requires_grad=True)
    targets = torch.zeros(B, T, dtype=torch.long)
    mask = torch.ones(B, T)
    kw = dict(bias=bias, teacher_hidden=hidden.detach() + 1, old_logprobs=torch.zeros(B, T), impl=impl)
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        loss, metrics = rlsd_loss(hidden, weight, targets, torch.zeros(B), mask, loss_agg=agg, **kw)
        assert loss.item() == 0.0, agg
        assert all(torch.isfinite(m).all() for m in metrics.values()), agg
        for g, t in zip(grads_of(loss, [hidden, weight, bias]), (hidden, weight, bias)):
            assert g.shape == t.shape and not g.any(), agg
    for form in ("sampled", "jsd"):
        loss, metrics = opsd_loss(hidden, weight, targets, mask, teacher_hidden=hidden.detach(), bias=bias,
                                  form=form, impl=impl)
        assert loss.item() == 0.0 and all(torch.isfinite(m).all() for m in metrics.values()), form
        assert not any(g.any() for g in grads_of(loss, [hidden, weight, bias])), form
    lp, ent = fused_linear_logprobs(hidden, weight, targets, bias=bias, return_entropy=True, impl=impl)
    assert lp.shape == ent.shape == (B, T)
    assert not any(g.any() for g in grads_of(lp.sum() + ent.sum(), [hidden, weight, bias]))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_all_masked_batch(impl, loss_agg):
    """Every token masked: loss exactly 0, gradients exactly 0, every metric finite; garbage values
    under the mask (huge log-ratios) must not leak."""
    case = _impl_case(impl)
    mask = torch.zeros_like(case.mask)
    old = case.extra["old_logprobs"] + 1e4  # would overflow rho if read
    for kw in (dict(), dict(entropy_coef=0.1, kl_coef=0.1, ref_logprobs=old - 3e4, dual_clip=3.0)):
        loss, metrics = call_rlsd(rlsd_args(case, mask=mask, old_logprobs=old, loss_agg=loss_agg, impl=impl, **kw))
        assert loss.item() == 0.0
        assert all(torch.isfinite(m).all() for m in metrics.values()), metrics
        assert all(not g.any() for g in grads_of(loss, case.leaves()))
    for form in ("sampled", "jsd"):
        loss, metrics = call_opsd(case, form, mask=mask, loss_agg=loss_agg, impl=impl)
        assert loss.item() == 0.0 and all(torch.isfinite(m).all() for m in metrics.values()), form
        assert all(not g.any() for g in grads_of(loss, case.leaves())), form


# ----------------------------------------------------------------------------------------------
# Views, integer dtypes, frozen leaves, lam = 0 without a teacher
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_views_match_contiguous(impl):
    """A transposed weight, strided hidden states and targets, expanded advantages and masks give
    the same loss and gradients as contiguous copies."""
    case = _impl_case(impl, dtype=torch.float64, per_token_adv=False)
    B, T, H = case.hidden.shape
    V = case.weight.shape[0]
    big = torch.randn(B, 2 * T, H + 3, dtype=torch.float64)
    big[:, ::2, :H] = case.hidden.detach()
    hidden_view = big[:, ::2, :H].requires_grad_()
    weight_view = case.weight.detach().T.contiguous().T.requires_grad_()
    targets_view = torch.stack([case.targets, case.targets], -1)[..., 0]
    adv_view = case.advantages[:, None].expand(B, T)
    mask_view = case.mask[:1].expand(B, T)
    assert not (hidden_view.is_contiguous() or weight_view.is_contiguous() or targets_view.is_contiguous())
    opts = dict(impl=impl, compute_entropy=True, entropy_coef=0.01, loss_agg="seq-mean-token-mean")
    got = call_rlsd(rlsd_args(case, hidden=hidden_view, weight=weight_view, targets=targets_view,
                              advantages=adv_view, mask=mask_view, **opts))[0]
    hidden = hidden_view.detach().contiguous().requires_grad_()
    weight = weight_view.detach().contiguous().requires_grad_()
    want = call_rlsd(rlsd_args(case, hidden=hidden, weight=weight, advantages=adv_view.contiguous(),
                               mask=mask_view.contiguous(), **opts))[0]
    assert max_rel_err(got, want) < 1e-12
    for g, w in zip(grads_of(got, [hidden_view, weight_view, case.bias]), grads_of(want, [hidden, weight, case.bias])):
        assert max_rel_err(g, w) < 1e-12
    lp_view, _ = fused_linear_logprobs(hidden_view, weight_view, targets_view, bias=case.bias, impl=impl)
    lp, _ = fused_linear_logprobs(hidden, weight, case.targets, bias=case.bias, impl=impl)
    assert max_rel_err(lp_view, lp) < 1e-12
    # a stride-0 [B] advantage, and the full-vocabulary OPSD loss on the same views
    adv_b = case.advantages[:1].expand(B)
    got = call_rlsd(rlsd_args(case, hidden=hidden_view, weight=weight_view, advantages=adv_b, impl=impl))[0]
    want = call_rlsd(rlsd_args(case, hidden=hidden, weight=weight, advantages=adv_b.contiguous(), impl=impl))[0]
    assert max_rel_err(got, want) < 1e-12
    got = call_opsd(case, "jsd", hidden=hidden_view, weight=weight_view, mask=mask_view, impl=impl)[0]
    want = call_opsd(case, "jsd", hidden=hidden, weight=weight, mask=mask_view.contiguous(), impl=impl)[0]
    assert max_rel_err(got, want) < 1e-12


INT_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64] + [
    getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)]


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=str)
def test_targets_of_every_integer_dtype(impl, dtype):
    case = small(dtype=torch.float64)
    want = call_rlsd(rlsd_args(case, impl=impl))[0]
    got = call_rlsd(rlsd_args(case, targets=case.targets.to(dtype), impl=impl))[0]
    assert max_rel_err(got, want) < 1e-14
    lp, _ = fused_linear_logprobs(case.hidden, case.weight, case.targets.to(dtype), impl=impl)
    assert lp.shape == case.targets.shape
    for form in ("sampled", "jsd"):
        call_opsd(case, form, targets=case.targets.to(dtype), impl=impl)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.float64], ids=str)
def test_mask_of_any_dtype(impl, dtype):
    case = small(dtype=torch.float64)
    want = call_rlsd(rlsd_args(case, impl=impl))[0]
    assert max_rel_err(call_rlsd(rlsd_args(case, mask=case.mask.to(dtype), impl=impl))[0], want) < 1e-14


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("frozen", ["weight", "hidden", "bias", "weight+bias", "all"])
def test_requires_grad_combinations(impl, frozen):
    """Frozen leaves get no gradient; the others get exactly the gradient of the all-trainable case."""
    case = _impl_case(impl, dtype=torch.float64)
    names = ("hidden", "weight", "bias")
    full = dict(zip(names, grads_of(call_rlsd(rlsd_args(case, impl=impl))[0], case.leaves())))
    leaves = {n: getattr(case, n).detach().requires_grad_(n not in frozen and frozen != "all") for n in names}
    loss, _ = call_rlsd(rlsd_args(case, impl=impl, **leaves))
    trainable = [n for n in names if leaves[n].requires_grad]
    assert loss.requires_grad == bool(trainable)
    if trainable:
        loss.backward()
    for n in names:
        if n in trainable:
            assert max_rel_err(leaves[n].grad, full[n]) < 1e-12, n
        else:
            assert leaves[n].grad is None, n


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_throughout(impl, dtype):
    """float16 or bfloat16 everywhere: a finite loss near the float32 one, gradients in the input dtype."""
    case = small(dtype=dtype)
    loss, _ = call_rlsd(rlsd_args(case, impl=impl))
    want, _ = call_rlsd(rlsd_args(case.cast(torch.float32), impl=impl))
    assert torch.isfinite(loss) and abs(loss.item() - want.item()) < 0.05 * (1 + abs(want.item()))
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads_of(loss, case.leaves()))


@pytest.mark.parametrize("impl", FAST)
def test_no_grad_mode(impl):
    case = small()
    with torch.no_grad():
        loss, _ = call_rlsd(rlsd_args(case, impl=impl))
    assert not loss.requires_grad and torch.isfinite(loss)


@pytest.mark.parametrize("impl", IMPLS)
def test_lam_zero_needs_no_teacher(impl):
    case = _impl_case(impl, dtype=torch.float64)
    with_teacher = call_rlsd(rlsd_args(case, lam=0.0, impl=impl))[0]
    args = rlsd_args(case, lam=0.0, impl=impl)
    del args["teacher_hidden"]
    loss, metrics = call_rlsd(args)
    assert max_rel_err(loss, with_teacher) < 1e-14
    assert "delta_mean" not in metrics


# ----------------------------------------------------------------------------------------------
# float64 end to end, against an independent float64 computation
# ----------------------------------------------------------------------------------------------

def independent_rlsd64(case, loss_agg, eps_w=0.2, eps_low=0.2, eps_high=0.28, lam=1.0):
    """RLSD loss with the default options, written out from the math in float64 (nothing shared
    with the library): materialised logits, credit, clipped surrogate, aggregation."""
    h, W, b = case.hidden, case.weight, case.bias
    y, m = case.targets, case.mask.double()
    lp = torch.log_softmax(h @ W.T + b, -1).gather(-1, y[..., None])[..., 0]
    with torch.no_grad():
        lp_t = torch.log_softmax(case.extra["teacher_hidden"] @ W.T + b, -1).gather(-1, y[..., None])[..., 0]
    A = case.advantages.double()[:, None].expand_as(lp)
    w = torch.exp(torch.sign(A) * (lp_t - lp.detach()))
    a_hat = A * ((1 - lam) + lam * w.clamp(1 - eps_w, 1 + eps_w))
    rho = torch.exp(lp - case.extra["old_logprobs"].double())
    per_token = torch.maximum(-a_hat * rho, -a_hat * rho.clamp(1 - eps_low, 1 + eps_high))
    if loss_agg == "token-mean":
        return (per_token * m).sum() / m.sum()
    n = m.sum(-1)
    seqs = n > 0
    return ((per_token * m).sum(-1)[seqs] / n[seqs]).sum() / seqs.sum()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_float64_end_to_end(impl, loss_agg):
    """float64 in, float64 throughout: every impl within ~1e-12 of the independent computation in
    the loss and both gradients (a float32 step anywhere, e.g. in the aggregation weights, is ~1e-8)."""
    # tiny for the Triton interpreter, with denominators (6 tokens, 3 per sequence) not powers of two
    shape = dict(B=3, T=3, H=4, V=5, mask_p=0.0) if impl.startswith("triton") else dict(B=3, T=47, H=31, V=123)
    case = make_case(dtype=torch.float64, **shape)
    assert case.mask.dtype == torch.float32  # the mask's dtype must not set the precision
    want = independent_rlsd64(case, loss_agg)
    want_grads = grads_of(want, [case.hidden, case.weight])
    got, metrics = call_rlsd(rlsd_args(case, impl=impl, loss_agg=loss_agg))
    assert got.dtype == torch.float64
    assert max_rel_err(got, want) < 1e-12, "loss"
    for name, g, w in zip(("hidden", "weight"), grads_of(got, [case.hidden, case.weight]), want_grads):
        assert g.dtype == torch.float64, name
        assert max_rel_err(g, w) < 1e-12, name
    for key in ("delta_mean", "delta_abs_mean", "delta_std", "approx_kl"):
        assert metrics[key].dtype == torch.float64, key


@pytest.mark.parametrize("impl", IMPLS)
def test_float64_logprobs_and_jsd(impl):
    shape = dict(B=2, T=3, H=4, V=5) if impl.startswith("triton") else dict(B=3, T=47, H=31, V=123)
    case = make_case(dtype=torch.float64, **shape)
    logp = torch.log_softmax(case.hidden @ case.weight.T + case.bias, -1)
    lp_want = logp.gather(-1, case.targets[..., None])[..., 0]
    ent_want = -(logp.exp() * logp).sum(-1)
    lp, ent = fused_linear_logprobs(case.hidden, case.weight, case.targets, bias=case.bias, return_entropy=True,
                                    impl=impl)
    assert lp.dtype == ent.dtype == torch.float64
    assert max_rel_err(lp, lp_want) < 1e-12 and max_rel_err(ent, ent_want) < 1e-12
    for g, w in zip(grads_of((lp * ent).sum(), [case.hidden, case.weight]),
                    grads_of((lp_want * ent_want).sum(), [case.hidden, case.weight])):
        assert max_rel_err(g, w) < 1e-12
    # forward KL (beta = 0) over the whole vocabulary, token-mean
    with torch.no_grad():
        lt = torch.log_softmax(case.extra["teacher_hidden"] @ case.weight.T + case.bias, -1)
    logp = torch.log_softmax(case.hidden @ case.weight.T + case.bias, -1)
    m = case.mask.double()
    want = ((lt.exp() * (lt - logp)).sum(-1) * m).sum() / m.sum()
    got, _ = call_opsd(case, "jsd", beta=0.0, impl=impl)
    assert max_rel_err(got, want) < 1e-12
    for g, w in zip(grads_of(got, [case.hidden, case.weight]), grads_of(want, [case.hidden, case.weight])):
        assert max_rel_err(g, w) < 1e-12


# ----------------------------------------------------------------------------------------------
# VocabParallel: its argument checks, in one process (world size 1 equals the plain chunk loop)
# ----------------------------------------------------------------------------------------------

def test_vocab_parallel_without_a_group_says_so():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    case = small()
    with pytest.raises((RuntimeError, ValueError), match="process group"):
        call_rlsd(rlsd_args(case, impl=VocabParallel()))


@pytest.mark.parametrize("chunk_bytes", [0, -1, 1.5, "64MB", True])
def test_vocab_parallel_rejects_bad_chunk_bytes(chunk_bytes):
    with pytest.raises((ValueError, TypeError), match="chunk_bytes"):
        VocabParallel(chunk_bytes=chunk_bytes)


def test_vocab_parallel_rejects_a_non_group():
    with pytest.raises(TypeError, match="group"):
        VocabParallel(group="world")


def test_vocab_parallel_one_process(one_process_group):
    case = small(dtype=torch.float64)
    vp = VocabParallel(one_process_group, chunk_bytes=256)
    want = call_rlsd(rlsd_args(case))[0]
    got = call_rlsd(rlsd_args(case, impl=vp))[0]
    assert max_rel_err(got, want) < 1e-13
    for bad in (-1, 11, 2 ** 40):
        with pytest.raises(ValueError, match="targets"):
            call_rlsd(rlsd_args(case, targets=poisoned(case.targets, bad), impl=vp))
    with pytest.raises(ValueError, match="hidden"):
        call_rlsd(rlsd_args(case, hidden=poisoned(case.hidden, math.nan), impl=vp))
    with pytest.raises(NotImplementedError, match="JSD"):
        call_opsd(case, "jsd", impl=vp)


@pytest.mark.parametrize("impl", ["triton", "triton-tiled"])
def test_triton_on_cpu_tensors_without_the_interpreter_is_refused(monkeypatch, impl):
    from rlsd_kernels import ops

    monkeypatch.setattr(ops, "triton_interpreted", lambda: False)
    case = small()
    with pytest.raises(ValueError, match=f"impl='{impl}' runs on CUDA tensors"):
        rlsd_loss(**rlsd_args(case, impl=impl))


# ----------------------------------------------------------------------------------------------
# Values no caller may mean: log-probs above 0, both teachers, a mask that is not 0/1
# ----------------------------------------------------------------------------------------------

def _unmasked(case):
    """The flat index of one unmasked token of ``case``."""
    return int(torch.nonzero(case.mask.reshape(-1))[0])


def _above_zero(case, base, value=0.5):
    t = base.detach().clone()
    t.view(-1)[_unmasked(case)] = value
    return t


LOGPROB_ARGS = {
    "teacher_logprobs": lambda c, v: dict(teacher_hidden=None, teacher_logprobs=_above_zero(c, -torch.rand_like(c.mask), v)),
    "old_logprobs": lambda c, v: dict(old_logprobs=_above_zero(c, -torch.rand_like(c.mask), v)),
    "ref_logprobs": lambda c, v: dict(kl_coef=0.1, ref_logprobs=_above_zero(c, -torch.rand_like(c.mask), v)),
}


def _module_call(case, **overrides):
    args = rlsd_args(case, **overrides)
    args = with_options(args)
    module_args = {k: args.pop(k) for k in ("impl", "options") if k in args}
    pos = [args.pop(k) for k in ("hidden", "weight", "targets", "advantages", "mask")]
    return FusedLinearRLSDLoss(**module_args)(*pos, **args)


@pytest.mark.parametrize("name", sorted(LOGPROB_ARGS))
def test_logprobs_above_zero_are_refused(name):
    case = small()
    with pytest.raises(ValueError, match=name):
        call_rlsd(rlsd_args(case, **LOGPROB_ARGS[name](case, 0.5)))
    with pytest.raises(ValueError, match=name):
        _module_call(case, **LOGPROB_ARGS[name](case, 0.5))
    call_rlsd(rlsd_args(case, **LOGPROB_ARGS[name](case, 0.5e-4)))  # within the rounding tolerance


def test_logprobs_above_zero_under_the_mask_are_not_read():
    case = small()
    t = -torch.rand_like(case.mask)
    t[case.mask == 0] = 5.0
    call_rlsd(rlsd_args(case, old_logprobs=t, kl_coef=0.1, ref_logprobs=t, teacher_hidden=None, teacher_logprobs=t))


def test_opsd_refuses_teacher_logprobs_above_zero():
    case = small()
    with pytest.raises(ValueError, match="teacher_logprobs"):
        call_opsd(case, "sampled", teacher_hidden=None, teacher_logprobs=_above_zero(case, -torch.rand_like(case.mask)))


def test_both_teachers_are_refused():
    case = small()
    both = dict(teacher_logprobs=-torch.rand_like(case.mask))  # teacher_hidden is in the case already
    for call in (lambda: call_rlsd(rlsd_args(case, **both)), lambda: call_rlsd(rlsd_args(case, lam=0.0, **both)),
                 lambda: call_opsd(case, "sampled", **both), lambda: _module_call(case, **both)):
        with pytest.raises(ValueError, match="teacher_hidden or teacher_logprobs, not both"):
            call()


@pytest.mark.parametrize("value", [2.0, 0.5, -1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_mask_values_other_than_zero_and_one_are_refused(value, dtype):
    case = small()
    if dtype == torch.int64 and value == 0.5:
        pytest.skip("no 0.5 in an integer mask")
    mask = _above_zero(case, case.mask, value).to(dtype)
    for call in (lambda: call_rlsd(rlsd_args(case, mask=mask)), lambda: call_opsd(case, "sampled", mask=mask),
                 lambda: call_opsd(case, "jsd", mask=mask), lambda: _module_call(case, mask=mask)):
        with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
            call()


def test_liger_adapter_refuses_the_same_values_by_liger_names():
    """The drop-in refuses what rlsd_loss refuses, naming Liger's argument; like Liger it takes old
    log-probs slightly above 0 (Liger's own tests add noise to real ones)."""
    liger = pytest.importorskip("rlsd_kernels.integrations.liger")
    case = small()
    module = liger.FusedLinearRLSDLigerLoss(beta=0.0, use_ref_model=False, impl="chunked")
    args = (case.hidden, case.weight, case.targets, case.mask, case.advantages)
    module(*args, old_per_token_logps=_above_zero(case, -torch.rand_like(case.mask)),
           teacher_input=case.extra["teacher_hidden"])
    with pytest.raises(ValueError, match="teacher_logprobs"):
        module(*args, teacher_logprobs=_above_zero(case, -torch.rand_like(case.mask)))
    with pytest.raises(ValueError, match="not both"):
        module(*args, teacher_input=case.extra["teacher_hidden"], teacher_logprobs=-torch.rand_like(case.mask))
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        module(case.hidden, case.weight, case.targets, 2 * case.mask, case.advantages,
               teacher_input=case.extra["teacher_hidden"])
    with pytest.raises(ValueError, match="vllm_is_ratio must be >= 0"):
        module(*args, teacher_input=case.extra["teacher_hidden"], vllm_is_ratio=-torch.ones_like(case.mask))
    with pytest.raises(ValueError, match="importance_sampling_level"):
        liger.FusedLinearRLSDLigerLoss(loss_type="cispo", importance_sampling_level="sequence")
    with pytest.raises(ValueError, match="sapo_temperature_neg"):
        liger.FusedLinearRLSDLigerLoss(loss_type="sapo", sapo_temperature_neg=0.0)
    with pytest.raises(ValueError, match="teacher_logprobs"):
        module(*args, teacher_logprobs=_above_zero(case, -torch.rand_like(case.mask)))
    with pytest.raises(ValueError, match="not both"):
        module(*args, teacher_input=case.extra["teacher_hidden"], teacher_logprobs=-torch.rand_like(case.mask))
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        module(case.hidden, case.weight, case.targets, 2 * case.mask, case.advantages,
               teacher_input=case.extra["teacher_hidden"])
