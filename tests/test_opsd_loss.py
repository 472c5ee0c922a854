"""OPSD baselines (sampled-token and full-vocabulary JSD forms), every impl and math.py against
the float64 truth of tests/truth.py."""

import pytest
import torch
import truth
from inputs import FUSED_IMPLS, OPTION_DTYPES, acting_case, assert_close_to_truth, assert_differs, call, make_case

from rlsd_kernels.math import generalized_jsd

IMPLS = ["reference", "eager"] + FUSED_IMPLS
BETAS = [0.0, 0.1, 0.3, 0.5, 0.9, 1.0]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("form,beta", [("sampled", 0.5), ("jsd", 0.0), ("jsd", 0.5), ("jsd", 1.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_matches_truth(impl, form, beta, dtype):
    case = make_case(old=False)
    kwargs = dict(form=form, beta=beta, temperature=0.7, loss_agg="seq-mean-token-mean",
                  compute_entropy=form == "sampled")
    assert_close_to_truth(case, impl, dtype, api="opsd", **kwargs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("beta", BETAS)
def test_float64_jsd_is_float64_at_every_beta(impl, beta):
    """A float64 JSD loss and its gradients are the truth's to 1e-12, at and between the end points."""
    case = acting_case(dtype=torch.float64)
    want = call(case, "opsd", "truth", form="jsd", beta=beta, temperature=0.7)
    got = call(case, "opsd", impl, form="jsd", beta=beta, temperature=0.7)
    for g, t in zip(got.values + got.grads, want.values + want.grads):
        assert ((g - t).abs().max() / t.abs().max()).item() < 1e-12
    s, t = torch.randn(7, 50, dtype=torch.float64) * 3, torch.randn(7, 50, dtype=torch.float64) * 3
    expected = truth._jsd(truth._log_softmax(s), truth._log_softmax(t), beta)
    assert ((generalized_jsd(s, t, beta) - expected).abs().max() / expected.abs().max()).item() < 1e-12


def _token_weights(case):
    case.extra["token_weights"] = torch.rand_like(case.mask)
    return case


def _teacher_logprobs(case):
    lp_t, _ = truth.linear_logprobs(case.extra.pop("teacher_hidden"), case.weight, case.targets, case.bias)
    case.extra["teacher_logprobs"] = lp_t.float()
    return case


OPTIONS = {"token_weights": ({}, _token_weights), "temperature": (dict(temperature=0.7), None),
           "seq_mean_token_mean": (dict(loss_agg="seq-mean-token-mean"), None),
           "seq_mean_token_sum_norm": (dict(loss_agg="seq-mean-token-sum-norm"), None),
           "normalizer": (dict(normalizer=0.5), None), "teacher_logprobs": ({}, _teacher_logprobs)}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("form,option", [(f, o) for f in ("sampled", "jsd") for o in sorted(OPTIONS)
                                         if (f, o) != ("jsd", "teacher_logprobs")])  # the JSD needs teacher_hidden
def test_every_option(impl, form, option):
    """The option changes the loss and its gradients, and the result is the truth's."""
    kwargs, variant = OPTIONS[option]
    case = acting_case()
    on = case if variant is None else variant(case.cast(torch.float32))
    if option != "teacher_logprobs":  # the same teacher, given another way: nothing changes
        assert_differs(call(on.cast(torch.float64), "opsd", "truth", form=form, **kwargs),
                       call(case.cast(torch.float64), "opsd", "truth", form=form))
    for dtype in OPTION_DTYPES[impl.startswith("triton")]:
        assert_close_to_truth(on, impl, dtype, api="opsd", form=form, **kwargs)


def test_jsd_limits_are_the_kl_divergences():
    """beta=0 is KL(p_T || p_S) and beta=1 is KL(p_S || p_T); 0.5 lies between 0 and both."""
    s, t = torch.randn(5, 11, dtype=torch.float64), torch.randn(5, 11, dtype=torch.float64)
    ps, pt = s.softmax(-1), t.softmax(-1)
    torch.testing.assert_close(generalized_jsd(s, t, 0.0), (pt * (pt.log() - ps.log())).sum(-1))
    torch.testing.assert_close(generalized_jsd(s, t, 1.0), (ps * (ps.log() - pt.log())).sum(-1))
    mid = generalized_jsd(s, t, 0.5)
    m = 0.5 * (ps + pt)
    torch.testing.assert_close(mid, 0.5 * (pt * (pt / m).log()).sum(-1) + 0.5 * (ps * (ps / m).log()).sum(-1))
    assert (mid >= 0).all() and (mid <= torch.log(torch.tensor(2.0))).all()


def test_sampled_form_pushes_toward_the_teacher():
    """One gradient step on the sampled-token loss raises lp_S where the teacher is more confident."""
    case = make_case(dtype=torch.float64, teacher="logprobs", masked_row=None, mask_p=0.0)
    case.extra["teacher_logprobs"] = torch.zeros_like(case.mask)  # teacher is certain of every token
    result = call(case, "opsd", "eager")
    gh = result.grads[0]
    assert gh.abs().sum() > 0 and result.values[0].item() != 0
    lp = lambda h: torch.log_softmax(h @ case.weight.T + case.bias, -1).gather(-1, case.targets[..., None]).sum()  # noqa: E731
    assert lp(case.hidden - 1e-3 * gh) > lp(case.hidden)
