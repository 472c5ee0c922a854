"""The fused functions on a CUDA GPU (skipped without one, and under TRITON_INTERPRET=1): every
backend that runs there and every public function, in float64, float32 and bfloat16, with the
options of the CPU tests, against the float64 truth (tests/truth.py) on the CPU, through the same
comparison helpers (tests/inputs.py). The bf16 cases take the CUDA plan (tensor-core GEMMs with
float32 results, the gradient by vocabulary blocks)."""

import pytest
import torch
import test_opsd_loss as opsd_cases
import test_rlsd_loss as rlsd_cases
from inputs import TOL, acting_case, assert_close_to_truth, make_case

from rlsd_kernels import available_impls
from rlsd_kernels.ops import gemm
from rlsd_kernels.ops.triton import interpreted

if not torch.cuda.is_available() or interpreted():
    pytest.skip("needs a CUDA GPU with TRITON_INTERPRET unset or 0", allow_module_level=True)

CUDA = torch.device("cuda")
GPU_IMPLS = [i for i in available_impls() if i in ("chunked", "triton", "triton-tiled", "triton-tma")]
DTYPES = [torch.float64, torch.float32, torch.bfloat16]
GPU_TOL = {**TOL, torch.float32: 1e-4}  # cuBLAS / Triton float32 GEMMs sum in another order than the CPU's


def test_bf16_takes_the_tensor_core_plan():
    assert gemm.low_precision(torch.zeros(2, 2, dtype=torch.bfloat16, device=CUDA))


@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("option", sorted(rlsd_cases.OPTIONS))
def test_rlsd_loss_every_option(impl, dtype, option):
    kwargs, variant = rlsd_cases.OPTIONS[option]
    case = acting_case() if variant is None else variant(acting_case())
    assert_close_to_truth(case, impl, dtype, device=CUDA, tol=GPU_TOL, **kwargs)


@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [dict(B=3, T=47, H=31, V=123), dict(B=4, T=256, H=256, V=4096)])
def test_rlsd_loss_shapes(impl, dtype, shape):
    assert_close_to_truth(make_case(**shape, temperature=0.7), impl, dtype, device=CUDA, tol=GPU_TOL,
                          temperature=0.7, compute_entropy=True)


@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form,beta", [("sampled", 0.5)] + [("jsd", b) for b in opsd_cases.BETAS])
def test_opsd_loss(impl, dtype, form, beta):
    assert_close_to_truth(make_case(old=False), impl, dtype, api="opsd", device=CUDA, tol=GPU_TOL, form=form,
                          beta=beta, temperature=0.7, loss_agg="seq-mean-token-mean",
                          compute_entropy=form == "sampled")


@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("form,option", [(f, o) for f in ("sampled", "jsd") for o in sorted(opsd_cases.OPTIONS)
                                         if (f, o) != ("jsd", "teacher_logprobs")])
def test_opsd_loss_every_option(impl, form, option):
    kwargs, variant = opsd_cases.OPTIONS[option]
    case = acting_case() if variant is None else variant(acting_case())
    for dtype in (torch.float64, torch.float32):
        assert_close_to_truth(case, impl, dtype, api="opsd", device=CUDA, tol=GPU_TOL, form=form, **kwargs)


@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("entropy", [True, False])
@pytest.mark.parametrize("shape", [dict(B=3, T=47, H=31, V=123), dict(B=2, T=64, H=64, V=1000)])
def test_fused_linear_logprobs(impl, dtype, entropy, shape):
    assert_close_to_truth(make_case(**shape), impl, dtype, api="logprobs", device=CUDA, tol=GPU_TOL,
                          temperature=0.7, return_entropy=entropy)


def test_gpu_profile_quick_run(capsys):
    """benchmarks.gpu_profile runs end to end (tiny shapes) and prints a row per case."""
    from benchmarks import gpu_profile

    gpu_profile.main(["--quick", "--no-profile", "--reps", "1"])
    out = capsys.readouterr().out
    assert "rlsd loss, default budget" in out and "gradient sweep" in out and "ERROR" not in out
