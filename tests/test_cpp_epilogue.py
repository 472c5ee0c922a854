"""rlsd_kernels.ops.cpp (C++ CPU epilogues) against float64 eager torch on the CONTRACT.md formulas."""

import pytest
import torch

from rlsd_kernels.ops import cpp

if not cpp.available():
    pytest.skip(f"C++ extension unavailable: {cpp.unavailable_reason()}", allow_module_level=True)

SHAPES = [(1, 123), (3, 123), (47, 123), (3, 32768), (47, 32768), (256, 32768)]
INV_TAUS = [1.0, 1 / 0.7, 1 / 1.3]


def _inputs(n, V, seed, scale=None):
    gen = torch.Generator().manual_seed(seed)
    scale = scale if scale is not None else 3.0 + 7.0 * torch.rand((), generator=gen).item()
    z = torch.randn(n, V, generator=gen) * scale
    y = torch.randint(0, V, (n,), generator=gen)
    return z, y


def _truth(z, y, inv_tau):
    s = z.double() * inv_tau
    lse = torch.logsumexp(s, 1)
    p = torch.exp(s - lse[:, None])
    lp = s.gather(1, y[:, None])[:, 0] - lse
    ent = lse - (p * s).sum(1)
    return s, p, lp, lse, ent


def _truth_dz(s, p, y, lse, ent, g_lp, g_ent, inv_tau):
    onehot = torch.zeros_like(s).scatter_(1, y[:, None], 1.0)
    dz = g_lp.double()[:, None] * (onehot - p)
    if g_ent is not None:
        dz = dz - g_ent.double()[:, None] * p * (s - lse[:, None] + ent[:, None])
    return inv_tau * dz


def _close(actual, expected, rtol=1e-5):
    """fp32 kernel vs float64 truth: relative error scaled by the largest magnitude in expected."""
    expected = expected.double()
    atol = rtol * max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("n,V", SHAPES)
@pytest.mark.parametrize("inv_tau", INV_TAUS)
@pytest.mark.parametrize("compute_entropy", [True, False])
def test_row_stats(n, V, inv_tau, compute_entropy):
    z, y = _inputs(n, V, seed=n * 1000 + V)
    _, _, lp_t, lse_t, ent_t = _truth(z, y, inv_tau)
    lp, lse, ent = cpp.row_stats(z, y, inv_tau, compute_entropy)
    assert lp.dtype == lse.dtype == torch.float32 and lp.shape == lse.shape == (n,)
    _close(lse, lse_t)
    _close(lp, lp_t)
    if compute_entropy:
        _close(ent, ent_t)
    else:
        assert ent is None


@pytest.mark.parametrize("n,V", SHAPES)
@pytest.mark.parametrize("inv_tau", INV_TAUS)
@pytest.mark.parametrize("with_ent", [True, False])
def test_dlogits(n, V, inv_tau, with_ent):
    z, y = _inputs(n, V, seed=n * 7 + V)
    s, p, _, lse_t, ent_t = _truth(z, y, inv_tau)
    gen = torch.Generator().manual_seed(n + V)
    g_lp = torch.randn(n, generator=gen)
    g_ent = torch.randn(n, generator=gen) if with_ent else None
    expected = _truth_dz(s, p, y, lse_t, ent_t, g_lp, g_ent, inv_tau)
    dz = z.clone()
    ent = ent_t.float() if with_ent else None
    assert cpp.dlogits_(dz, y, lse_t.float(), g_lp, g_ent, ent, inv_tau) is None
    _close(dz, expected)


def test_dlogits_matches_autograd_of_contract():
    """dz from row_stats + dlogits_ equals d/dz of sum(g_lp * lp + g_ent * ent) (float64 autograd)."""
    n, V, inv_tau = 5, 301, 1 / 0.7
    z, y = _inputs(n, V, seed=3, scale=4.0)
    g_lp, g_ent = torch.randn(n), torch.randn(n)
    z64 = z.double().requires_grad_()
    logp = torch.log_softmax(z64 * inv_tau, 1)
    loss = (g_lp.double() * logp.gather(1, y[:, None])[:, 0]).sum()
    loss = loss - (g_ent.double() * (logp.exp() * logp).sum(1)).sum()
    (expected,) = torch.autograd.grad(loss, z64)

    _, lse, ent = cpp.row_stats(z, y, inv_tau, True)
    dz = z.clone()
    cpp.dlogits_(dz, y, lse, g_lp, g_ent, ent, inv_tau)
    _close(dz, expected)


def test_empty_entropy_tensor_skips_entropy_term():
    z, y = _inputs(4, 123, seed=1)
    lp, lse, ent = cpp.row_stats(z, y, 1.0, False)
    g_lp = torch.randn(4)
    a, b = z.clone(), z.clone()
    cpp.dlogits_(a, y, lse, g_lp, torch.empty(0), ent, 1.0)
    cpp.dlogits_(b, y, lse, g_lp, None, None, 1.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_zero_rows():
    z, y = torch.empty(0, 123), torch.empty(0, dtype=torch.long)
    lp, lse, ent = cpp.row_stats(z, y, 1.0, True)
    assert lp.shape == lse.shape == ent.shape == (0,)
    cpp.dlogits_(z, y, lse, lp, ent, ent, 1.0)


def test_extreme_logits_are_finite():
    z = torch.tensor([[0.0, -1e4, 80.0, 1e4], [-1e4, -1e4, -1e4, -1e4]])
    y = torch.tensor([1, 0])
    _, _, lp_t, lse_t, ent_t = _truth(z, y, 1.0)
    lp, lse, ent = cpp.row_stats(z, y, 1.0, True)
    _close(lse, lse_t)
    _close(lp, lp_t)
    _close(ent, ent_t)


def test_wrong_dtype():
    z, y = _inputs(3, 123, seed=0)
    with pytest.raises(ValueError, match="z must be float32"):
        cpp.row_stats(z.double(), y, 1.0, False)
    with pytest.raises(ValueError, match="targets must be int64"):
        cpp.row_stats(z, y.int(), 1.0, False)
    lse = torch.zeros(3)
    with pytest.raises(ValueError, match="g_lp must be float32"):
        cpp.dlogits_(z, y, lse, torch.zeros(3, dtype=torch.float64), None, None, 1.0)


@pytest.mark.parametrize("bad", [-1, 123])
def test_out_of_range_target(bad):
    z, y = _inputs(3, 123, seed=0)
    y[1] = bad
    with pytest.raises(ValueError, match=r"targets\[1\] = .* out of range \[0, 123\)"):
        cpp.row_stats(z, y, 1.0, False)
    with pytest.raises(ValueError, match=r"targets\[1\]"):
        cpp.dlogits_(z, y, torch.zeros(3), torch.zeros(3), None, None, 1.0)


def test_bad_layout_and_shapes():
    z, y = _inputs(3, 124, seed=0)
    with pytest.raises(ValueError, match="z must be contiguous"):
        cpp.row_stats(z[:, ::2], y, 1.0, False)
    with pytest.raises(ValueError, match="targets must have shape"):
        cpp.row_stats(z, y[:2], 1.0, False)
    with pytest.raises(ValueError, match="lse must have shape"):
        cpp.dlogits_(z, y, torch.zeros(2), torch.zeros(3), None, None, 1.0)
    with pytest.raises(ValueError, match="ent is required"):
        cpp.dlogits_(z, y, torch.zeros(3), torch.zeros(3), torch.zeros(3), None, 1.0)
    with pytest.raises(ValueError, match="inv_tau"):
        cpp.row_stats(z, y, 0.0, False)


def test_cpp_guards_return_status_codes():
    """The extension itself, called without the Python checks: bad arguments give a status code
    (no exception, no string crosses the boundary) and nothing is written."""
    ext = cpp._ext()
    z, y = _inputs(3, 123, seed=0)
    lp, lse, ent = torch.full((3,), 7.0), torch.full((3,), 7.0), torch.empty(0)
    y[1] = 123
    assert cpp.STATUS[ext.row_stats(z, y, 1.0, False, lp, lse, ent)] == "target out of range"
    assert cpp.STATUS[ext.row_stats(z[:, ::2], y, 1.0, False, lp, lse, ent)] == "bad z"
    y[1] = 0
    assert cpp.STATUS[ext.row_stats(z, y, float("nan"), False, lp, lse, ent)] == "bad inv_tau"
    assert cpp.STATUS[ext.row_stats(z, y, 1.0, True, lp, lse, ent)] == "bad ent"
    assert cpp.STATUS[ext.dlogits_(z, y, lse, torch.zeros(3), torch.zeros(3), None, 1.0)] == "ent required"
    assert (lp == 7.0).all() and (lse == 7.0).all()
    assert ext.row_stats(z, y, 1.0, False, lp, lse, ent) == 0 and torch.isfinite(lse).all()
    with pytest.raises(ValueError, match="rejected its arguments: bad z"):
        cpp._raise(1)


def test_a_killed_builds_lock_is_removed_not_waited_on(tmp_path):
    """torch's FileBaton waits forever on a lock left by a killed build; an old one is removed."""
    import os
    import time
    import warnings

    from rlsd_kernels.ops import cpp

    fresh, stale = tmp_path / "fresh", tmp_path / "stale"
    fresh.touch()
    stale.touch()
    old = time.time() - cpp._STALE_LOCK_S - 1
    os.utime(stale, (old, old))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cpp._remove_stale_lock(fresh)
        cpp._remove_stale_lock(stale)
        cpp._remove_stale_lock(tmp_path / "absent")
    assert fresh.exists() and not stale.exists()
    assert [str(w.message) for w in caught] == [f"removing the stale extension build lock {stale} ({cpp._STALE_LOCK_S + 1:.0f} s old)"]
