"""``triton-tma`` (rlsd_kernels/ops/triton/tma.py) in Triton's interpreter against the float64
truth: the TMA kernels themselves (not their fallback) on shapes whose N, V and H are not
multiples of any tile (128-row and 128-column logits tiles, 32-wide H slices, 128/64-wide gradient
slices), float32 and bf16, with a bias, a teacher, the entropy's gradient, a temperature, masks and
old log-probs; and the pointer kernels where a descriptor cannot be made."""

import pytest
import torch
from inputs import assert_close_to_truth, make_case

from rlsd_kernels.ops.triton import interpreted

if not interpreted():
    pytest.skip("runs the kernels in Triton's interpreter (TRITON_INTERPRET=1; tests/test_gpu.py on a GPU)",
                allow_module_level=True)
from rlsd_kernels.ops.triton import tma  # noqa: E402


@pytest.fixture
def tma_calls(monkeypatch):
    """How many times the TMA launchers ran (forward, backward)."""
    calls = {"stats": 0, "backward": 0}
    for name, key in (("linear_logprob_stats", "stats"), ("linear_logprob_backward", "backward")):
        original = getattr(tma, name)

        def spy(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(tma, name, spy)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", [dict(), dict(entropy_coef=0.05, lam=0.5), dict(is_level="sequence-token")])
def test_rlsd_loss_matches_truth(tma_calls, dtype, options):
    case = make_case(B=3, T=53, H=40, V=300, bias=True, temperature=0.7)  # N 159, V 300, H 40: no tile divides
    assert tma.supported(case.hidden.to(dtype), case.weight.to(dtype))
    assert_close_to_truth(case, "triton-tma", dtype, temperature=0.7, compute_entropy=True, **options)
    assert tma_calls == {"stats": 1, "backward": 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_and_entropy_match_truth(tma_calls, dtype):
    """fused_linear_logprobs: the entropy's gradient (g_ent) through the TMA backward."""
    case = make_case(B=2, T=70, H=24, V=200, bias=False, teacher=None)
    assert_close_to_truth(case, "triton-tma", dtype, api="logprobs", temperature=1.3, return_entropy=True)
    assert tma_calls["stats"] >= 1 and tma_calls["backward"] == 1


def test_opsd_sampled_matches_truth(tma_calls):
    case = make_case(B=2, T=40, H=32, V=150)
    assert_close_to_truth(case, "triton-tma", torch.float32, api="opsd", form="sampled")
    assert tma_calls == {"stats": 1, "backward": 1}


def test_unaligned_rows_use_the_pointer_kernels(tma_calls):
    """H = 31 float32 rows are 124 bytes, not a multiple of 16: no descriptor; the tiled kernels run."""
    case = make_case(H=31)
    assert not tma.supported(case.hidden, case.weight)
    assert_close_to_truth(case, "triton-tma", torch.float32)
    assert tma_calls == {"stats": 0, "backward": 0}
