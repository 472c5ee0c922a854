"""The peers in the benchmark suite and its ``logprobs`` kernel: every provider states what it
computes, the ones that cannot run here say why, and the primitive's providers that run on the CPU
compute the same loss and gradients (so a ratio between them compares like with like)."""

import json

import pytest
import torch

from benchmarks import report
from benchmarks.inputs import Shape, make_inputs
from benchmarks.providers import EAGER, FLOOR, KERNELS, default_provider, default_selection, registry

CPU = torch.device("cpu")
PEERS = ("verl-lce", "liger-sm90", "cce-exact", "verl-lce-logprobs", "liger-sm90-logprobs", "cce-exact-logprobs",
         "quack-lce-sum", "liger-flce-sm90-sum")


def test_every_kernel_has_its_floor_eager_and_default_in_its_default_selection():
    reg = registry()
    for kernel in KERNELS:
        names = default_selection(CPU, kernel)
        assert {FLOOR[kernel], EAGER[kernel], default_provider(CPU, kernel)} <= set(names)
        assert all(reg[n].kernel == kernel for n in names)


@pytest.mark.parametrize("name", PEERS)
def test_gpu_peers_say_why_they_do_not_run_on_the_cpu(name):
    reason = registry()[name].unavailable(CPU)
    assert reason and ("GPU" in reason or "not installed" in reason), reason


def test_logprobs_providers_state_their_contract_and_the_sum_reduced_ones_say_it_differs():
    reg = registry()
    for name, p in reg.items():
        if p.kernel == "logprobs" and name != FLOOR["logprobs"]:
            assert p.contract, name
    for name in ("quack-lce-sum", "liger-flce-sm90-sum"):
        assert "different contract" in reg[name].contract
    assert "no entropy" in reg["cce-exact-logprobs"].contract


def _run(name, x):
    case = registry()[name].build(x)
    case.backward(case.forward())
    out = (x["hidden"].grad.clone(), x["weight"].grad.clone())
    x["hidden"].grad = x["weight"].grad = None
    return out


@pytest.mark.parametrize("impl", ["chunked", "cpp"])
def test_logprobs_kernel_fused_equals_eager(impl):
    """The primitive's loss sum_t g_lp lp_t + g_ent H_t: our fused provider and eager give the same
    gradients (float64, so the comparison is exact up to rounding)."""
    from rlsd_kernels.ops import usable

    if not usable(impl):
        pytest.skip(f"{impl} not usable here")
    x = make_inputs(Shape(96, 24, 301, "float64"))
    dh_e, dw_e = _run(EAGER["logprobs"], x)
    dh, dw = _run(f"fused_linear_logprobs-{impl}", x)
    assert dh.abs().max() > 0 and dw.abs().max() > 0
    torch.testing.assert_close(dh, dh_e, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dw, dw_e, rtol=1e-10, atol=1e-12)


def test_logprobs_kernel_entropy_gradient_is_included():
    """Zeroing the entropy's upstream gradient changes dL/dhidden: the entropy term is really timed."""
    x = make_inputs(Shape(64, 16, 97, "float64"))
    dh, _ = _run(EAGER["logprobs"], x)
    x["grad_entropy"] = torch.zeros_like(x["grad_entropy"])
    dh0, _ = _run(EAGER["logprobs"], x)
    assert (dh - dh0).abs().max() > 1e-6


def test_report_lists_each_provider_with_its_version_and_contract():
    cfg = lambda c: json.dumps({"series": "s", "contract": c})  # noqa: E731
    rows = [dict(kernel_provider="quack-lce-sum", provider_version="", status="not run: x",
                 extra_benchmark_config_str=cfg("sum-reduced")),
            dict(kernel_provider="logprobs-eager", provider_version="rlsd_kernels 0.1.0", status="ok",
                 extra_benchmark_config_str=cfg(""))]
    text = report.contracts(rows)
    assert "- `quack-lce-sum`: not installed; sum-reduced" in text
    assert "- `logprobs-eager`: rlsd_kernels 0.1.0\n" in text
