"""OPSD baselines (sampled-token and full-vocabulary JSD forms) against the eager reference."""

import pytest
import torch
from inputs import FUSED_IMPLS, make_case, max_rel_err

from rlsd_kernels import opsd_loss, reference


def run_opsd(case, fn=opsd_loss, **kwargs):
    loss, metrics = fn(case.hidden, case.weight, case.targets, case.mask, bias=case.bias,
                              teacher_hidden=case.extra.get("teacher_hidden"),
                              teacher_logprobs=case.extra.get("teacher_logprobs"), **kwargs)
    return [loss.detach()] + list(torch.autograd.grad(loss, case.leaves())), metrics


@pytest.mark.parametrize("impl", ["eager"] + FUSED_IMPLS)
@pytest.mark.parametrize("form,beta", [("sampled", 0.5), ("jsd", 0.0), ("jsd", 0.5), ("jsd", 1.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(impl, form, beta, dtype):
    case = make_case(old=False)
    kwargs = dict(form=form, beta=beta, temperature=0.7, loss_agg="seq-mean-token-mean",
                  compute_entropy=form == "sampled")
    truth, truth_metrics = run_opsd(case.cast(torch.float64), fn=reference.opsd_loss, **kwargs)
    got, metrics = run_opsd(case.cast(dtype), impl=impl, **kwargs)
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    for g, t in zip(got, truth):
        assert max_rel_err(g, t) < tol
    assert set(metrics) == set(truth_metrics) == ({"delta_mean", "entropy_mean"} if form == "sampled" else {"jsd_mean"})
    for key, value in truth_metrics.items():
        assert abs(metrics[key].item() - value.item()) < 1e-5 * (1 + abs(value.item()))


def test_jsd_limits_are_the_kl_divergences():
    """beta=0 is KL(p_T || p_S) and beta=1 is KL(p_S || p_T); 0.5 lies between 0 and both."""
    from rlsd_kernels.math import generalized_jsd

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
    (loss, gh, gw, gb), _ = run_opsd(case, impl="eager")
    assert (gh.abs().sum() > 0) and loss.item() != 0
    lp = lambda h: torch.log_softmax(h @ case.weight.T + case.bias, -1).gather(-1, case.targets[..., None]).sum()  # noqa: E731
    assert lp(case.hidden - 1e-3 * gh) > lp(case.hidden)
