"""The CUDA bf16 plan of the chunked backends (bf16 GEMM operands with float32 logits, dz rounded
to bf16, the gradient swept over vocabulary blocks), run on the CPU: the plan is switched on for
bf16 inputs and the out_dtype GEMMs (CUDA only) are emulated exactly (products of bf16 values are
exact in float32, accumulation in float32)."""

import pytest
import torch
from inputs import FUSED_IMPLS, assert_close_to_truth, make_case, max_rel_err
from truth import linear_logprobs

from rlsd_kernels import fused_linear_logprobs
from rlsd_kernels.ops import gemm

CHUNK_LOOPS = [i for i in FUSED_IMPLS if i in ("chunked", "triton")]


@pytest.fixture
def low_precision_on_cpu(monkeypatch):
    monkeypatch.setattr(gemm, "low_precision", lambda h: h.dtype in gemm.LOW_PRECISION)
    monkeypatch.setattr(gemm, "mm_f32", lambda a, b, out: torch.mm(a.float(), b.float(), out=out))
    monkeypatch.setattr(gemm, "addmm_f32", lambda acc, a, b: acc.addmm_(a.float(), b.float()))


def test_out_dtype_gemms_are_probed_not_assumed():
    """Without float32-output GEMMs for bf16 operands (the CPU's torch), the plan is not taken."""
    assert not gemm.has_out_dtype(torch.device("cpu"), torch.bfloat16)
    assert not gemm.low_precision(torch.zeros(2, 2, dtype=torch.bfloat16))


@pytest.mark.parametrize("impl", CHUNK_LOOPS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_bf16_plan_error_is_that_of_bf16_pytorch(low_precision_on_cpu, impl, temperature):
    case = make_case(temperature=temperature).cast(torch.bfloat16)
    assert_close_to_truth(case, impl, torch.bfloat16, temperature=temperature, lam=1.0, compute_entropy=True)


@pytest.mark.parametrize("impl", CHUNK_LOOPS)
def test_bf16_plan_logprobs_and_entropy(low_precision_on_cpu, impl):
    h = torch.randn(3, 47, 31).bfloat16().requires_grad_()
    w = (torch.randn(123, 31) * 0.5).bfloat16().requires_grad_()
    y = torch.randint(0, 123, (3, 47))
    lp, ent = fused_linear_logprobs(h, w, y, return_entropy=True, temperature=1.3, impl=impl)
    lp64, ent64 = linear_logprobs(h.double(), w.double(), y, None, 1.3, True)
    assert max_rel_err(lp, lp64) < 1e-2 and max_rel_err(ent, ent64) < 1e-2
    (lp.sum() + ent.sum()).backward()
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    lp64, ent64 = linear_logprobs(h64, w64, y, None, 1.3, True)
    (lp64.sum() + ent64.sum()).backward()
    assert max_rel_err(h.grad, h64.grad) < 3e-2 and max_rel_err(w.grad, w64.grad) < 3e-2


def test_vocabulary_blocks_keep_gemm_strides_aligned(low_precision_on_cpu, monkeypatch):
    """Blocks of the gradient sweep come in multiples of 128 columns whenever the budget allows
    more than 128 (a width such as 10922 made cuBLAS leave its Hopper kernels: benchmarks/NOTES.md,
    section 6a), and the budget's remainder never makes a block narrower than 1."""
    from rlsd_kernels.ops import chunked

    assert [chunked.aligned(n) for n in (0, 1, 100, 128, 129, 10922, 5461)] == [1, 1, 100, 128, 128, 10880, 5376]
    widths = []
    real = gemm.logits
    monkeypatch.setattr(gemm, "logits", lambda hc, W, b, out: widths.append(W.shape[0]) or real(hc, W, b, out))
    case = make_case(B=2, T=8, H=16, V=1000).cast(torch.bfloat16)
    head = chunked.ChunkedHead("chunked", chunk_bytes=16 * 6 * 300)  # 300 columns of N=16 rows fit
    lp, _ = fused_linear_logprobs(case.hidden, case.weight, case.targets, impl=head)
    lp.sum().backward()
    assert widths[-4:] == [256, 256, 256, 232]  # the backward's blocks: 3 x 256 and the rest
