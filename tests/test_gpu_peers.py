"""On a CUDA machine: each installed peer of the benchmark suite computes what its row says, so its
time is comparable with ours. Its per-token log-probs (and entropies) and the gradients of
``sum_t g_lp lp_t + g_ent H_t`` agree with the float64 eager computation within bf16 rounding.
Skipped where there is no GPU (each peer also skips where it is not installed or cannot run)."""

import pytest
import torch

from benchmarks.inputs import Shape, make_inputs
from benchmarks.providers import EAGER, registry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROVIDERS = ("fused_linear_logprobs-triton", "fused_linear_logprobs-triton-tiled", "verl-lce-logprobs",
             "liger-sm90-logprobs", "cce-exact-logprobs")


def _grads(name, x):
    case = registry()[name].build(x)
    case.backward(case.forward())
    out = x["hidden"].grad.double(), x["weight"].grad.double()
    x["hidden"].grad = x["weight"].grad = None
    return out


@pytest.mark.parametrize("name", PROVIDERS)
def test_peer_gradients_match_float64_eager(name):
    device = torch.device("cuda")
    why = registry()[name].unavailable(device)
    if why:
        pytest.skip(why)
    shape = Shape(1024, 256, 4096 + 64, "bfloat16")  # V not a multiple of the usual tiles
    x = make_inputs(shape, device)
    if "cce" in name:  # no entropy in that contract
        x["grad_entropy"] = torch.zeros_like(x["grad_entropy"])
    ref = {k: (v.detach().double().requires_grad_() if k in ("hidden", "weight") else v) for k, v in x.items()}
    dh_ref, dw_ref = _grads(EAGER["logprobs"], ref)
    dh, dw = _grads(name, x)
    for got, want in ((dh, dh_ref), (dw, dw_ref)):
        err = (got - want).abs().max() / want.abs().max()
        assert err < 3e-2, f"{name}: relative error {err:.3g}"
