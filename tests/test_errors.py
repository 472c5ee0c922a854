"""Bad input gets a clear error naming the argument, never a silent wrong number."""

import pytest
import torch
from inputs import make_case, with_options

from rlsd_kernels import fused_linear_logprobs, opsd_loss, rlsd_loss


def call(case, **overrides):
    args = dict(hidden=case.hidden, weight=case.weight, targets=case.targets, advantages=case.advantages,
                mask=case.mask, bias=case.bias, **case.extra)
    args.update(overrides)
    args.setdefault("impl", "chunked")
    args = with_options(args)
    return rlsd_loss(args.pop("hidden"), args.pop("weight"), args.pop("targets"), args.pop("advantages"),
                     args.pop("mask"), **args)


def nan_at(t):
    t = t.detach().clone()
    t.view(-1)[1] = float("nan")
    return t


CASES = {
    "hidden_2d": (lambda c: dict(hidden=c.hidden[0]), ValueError, "hidden"),
    "hidden_int": (lambda c: dict(hidden=c.hidden.long()), TypeError, "hidden"),
    "weight_shape": (lambda c: dict(weight=c.weight[:, :-1]), ValueError, "weight"),
    "weight_dtype": (lambda c: dict(weight=c.weight.double()), TypeError, "weight"),
    "bias_shape": (lambda c: dict(bias=c.bias[:-1]), ValueError, "bias"),
    "targets_float": (lambda c: dict(targets=c.targets.float()), TypeError, "targets"),
    "targets_shape": (lambda c: dict(targets=c.targets[:, :-1]), ValueError, "targets"),
    "targets_too_big": (lambda c: dict(targets=c.targets.clone().fill_(123)), ValueError, "targets"),
    "targets_negative": (lambda c: dict(targets=c.targets.clone().fill_(-1)), ValueError, "targets"),
    "advantages_shape": (lambda c: dict(advantages=torch.randn(5)), ValueError, "advantages"),
    "advantages_nan": (lambda c: dict(advantages=nan_at(c.advantages)), ValueError, "advantages"),
    "mask_shape": (lambda c: dict(mask=c.mask[:, :-1]), ValueError, "mask"),
    "hidden_nan": (lambda c: dict(hidden=nan_at(c.hidden)), ValueError, "hidden"),
    "weight_inf": (lambda c: dict(weight=nan_at(c.weight).nan_to_num(nan=float("inf"))), ValueError, "weight"),
    "teacher_nan": (lambda c: dict(teacher_hidden=nan_at(c.extra["teacher_hidden"])), ValueError, "teacher_hidden"),
    "teacher_shape": (lambda c: dict(teacher_hidden=c.extra["teacher_hidden"][:, :-1]), ValueError, "teacher_hidden"),
    "old_logprobs_shape": (lambda c: dict(old_logprobs=c.extra["old_logprobs"][:1]), ValueError, "old_logprobs"),
    "temperature_zero": (lambda c: dict(temperature=0.0), ValueError, "temperature"),
    "temperature_negative": (lambda c: dict(temperature=-1.0), ValueError, "temperature"),
    "no_teacher": (lambda c: dict(teacher_hidden=None), ValueError, "teacher"),
    "kl_without_ref": (lambda c: dict(kl_coef=0.1), ValueError, "ref_logprobs"),
    "bad_agg": (lambda c: dict(loss_agg="mean"), ValueError, "loss_agg"),
    "bad_kl_type": (lambda c: dict(kl_type="k4"), ValueError, "kl_type"),
    "bad_lam": (lambda c: dict(lam=1.5), ValueError, "lam"),
    "bad_eps_w": (lambda c: dict(eps_w=-0.1), ValueError, "eps_w"),
    "bad_dual_clip": (lambda c: dict(dual_clip=0.5), ValueError, "dual_clip"),
    "bad_impl": (lambda c: dict(impl="cuda"), ValueError, "impl"),
    "bad_normalizer": (lambda c: dict(normalizer=0), ValueError, "normalizer"),
    "other_device": (lambda c: dict(mask=c.mask.to("meta")), ValueError, "mask"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rlsd_loss_rejects(name):
    case = make_case()
    make, error, word = CASES[name]
    with pytest.raises(error, match=word):
        call(case, **make(case))


def test_logprobs_and_opsd_reject():
    case = make_case()
    with pytest.raises(ValueError, match="targets"):
        fused_linear_logprobs(case.hidden, case.weight, case.targets + 200, impl="chunked")
    with pytest.raises(ValueError, match="temperature"):
        fused_linear_logprobs(case.hidden, case.weight, case.targets, temperature=float("inf"))
    with pytest.raises(ValueError, match="form"):
        opsd_loss(case.hidden, case.weight, case.targets, case.mask, teacher_hidden=case.hidden, form="kl")
    with pytest.raises(ValueError, match="teacher_hidden"):
        opsd_loss(case.hidden, case.weight, case.targets, case.mask, form="jsd",
                  teacher_logprobs=case.extra["old_logprobs"])
