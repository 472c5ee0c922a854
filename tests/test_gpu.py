"""The fused losses on a CUDA GPU (skipped without one, and under TRITON_INTERPRET=1): every
backend that runs there, float32 and bfloat16, against the float64 reference on the CPU. The bf16
cases take the CUDA plan (tensor-core GEMMs with float32 results, the gradient by vocabulary blocks)."""

import pytest
import torch
from inputs import make_case, max_rel_err, run

from rlsd_kernels import available_impls, fused_linear_logprobs, opsd_loss, reference
from rlsd_kernels.ops import gemm
from rlsd_kernels.ops.triton import interpreted

if not torch.cuda.is_available() or interpreted():
    pytest.skip("needs a CUDA GPU with TRITON_INTERPRET unset or 0", allow_module_level=True)

CUDA = torch.device("cuda")
GPU_IMPLS = [i for i in available_impls() if i in ("chunked", "triton", "triton-tiled")]


def on_cpu(result):
    loss, metrics, grads = result
    return loss.cpu(), {k: v.cpu() for k, v in metrics.items()}, tuple(g.cpu() for g in grads)


def test_bf16_takes_the_tensor_core_plan():
    assert gemm.low_precision(torch.zeros(2, 2, dtype=torch.bfloat16, device=CUDA))


@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", [dict(lam=1.0, compute_entropy=True), dict(lam=0.5, entropy_coef=0.05),
                                     dict(lam=0.0, loss_agg="seq-mean-token-mean")])
@pytest.mark.parametrize("shape", [dict(B=3, T=47, H=31, V=123), dict(B=4, T=256, H=256, V=4096)])
def test_rlsd_loss_on_the_gpu(impl, dtype, options, shape):
    case = make_case(**shape).cast(dtype)
    kwargs = dict(temperature=0.7, **options)
    truth = run(case.cast(torch.float64), fn=reference.rlsd_loss, **kwargs)
    got = on_cpu(run(case.to(CUDA), impl=impl, **kwargs))
    if dtype == torch.float32:
        assert max_rel_err(got[0], truth[0]) < 1e-4
        for g, t in zip(got[2], truth[2]):
            assert max_rel_err(g, t) < 1e-4
        return
    eager = on_cpu(run(case.to(CUDA), impl="eager", **kwargs))
    for name, g, e, t in zip(("loss", "hidden", "weight", "bias"), (got[0],) + got[2], (eager[0],) + eager[2],
                             (truth[0],) + truth[2]):
        assert max_rel_err(g, t) <= max_rel_err(e, t) + 1e-2, name


@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_linear_logprobs_and_jsd_on_the_gpu(impl):
    case = make_case(B=2, T=64, H=64, V=1000).cast(torch.bfloat16).to(CUDA)
    lp, ent = fused_linear_logprobs(case.hidden, case.weight, case.targets, bias=case.bias, return_entropy=True,
                                    impl=impl)
    lp64, ent64 = reference.linear_logprobs(case.hidden.double().cpu(), case.weight.double().cpu(), case.targets.cpu(),
                                            case.bias.double().cpu(), 1.0, True)
    assert max_rel_err(lp.cpu(), lp64) < 2e-2 and max_rel_err(ent.cpu(), ent64) < 2e-2
    loss, _ = opsd_loss(case.hidden, case.weight, case.targets, case.mask, bias=case.bias, form="jsd",
                        teacher_hidden=case.extra["teacher_hidden"], impl=impl)
    loss.backward()
    assert torch.isfinite(case.hidden.grad).all() and torch.isfinite(case.weight.grad).all()


def test_gpu_profile_quick_run(capsys):
    """benchmarks.gpu_profile runs end to end (tiny shapes) and prints a row per case."""
    from benchmarks import gpu_profile

    gpu_profile.main(["--quick", "--no-profile", "--reps", "1"])
    out = capsys.readouterr().out
    assert "rlsd loss, default budget" in out and "gradient sweep" in out and "ERROR" not in out
