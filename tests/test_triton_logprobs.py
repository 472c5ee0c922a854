import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any triton kernel definition

import sys  # noqa: E402

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

try:
    import rlsd_kernels  # noqa: F401
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlsd_kernels.ops import triton as tk  # noqa: E402
from rlsd_kernels.ops.triton import logprobs as kernels  # noqa: E402

if not tk.available():
    pytest.skip("triton kernels cannot run here (no CUDA, TRITON_INTERPRET unset)", allow_module_level=True)

DEV = "cuda" if (torch.cuda.is_available() and not tk.interpreted()) else "cpu"
BLOCKS = dict(block_n=16, block_v=32, block_h=16)
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
       torch.float16: dict(rtol=5e-3, atol=5e-3)}


def _inputs(N, H, V, dtype, bias, teacher, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g).to(dtype)
    W = (torch.randn(V, H, generator=g) * scale).to(dtype)
    b = torch.randn(V, generator=g).to(dtype) if bias else None
    y = torch.randint(0, V, (N,), generator=g)
    y[0] = V - 1
    ht = torch.randn(N, H, generator=g).to(dtype) if teacher else None
    mv = lambda t: None if t is None else t.to(DEV)  # noqa: E731
    return mv(h), mv(W), mv(b), mv(y), mv(ht)


def _ref(h, W, b, y, inv_tau, ht=None, g_lp=None, g_ent=None):
    """float64 eager truth from the (already rounded) inputs."""
    d = lambda t: None if t is None else t.detach().cpu().double().requires_grad_()  # noqa: E731
    h64, W64, b64 = d(h), d(W), d(b)
    y = y.cpu()
    z = h64 @ W64.T + (b64 if b64 is not None else 0.0)
    s = z * inv_tau
    lse = s.logsumexp(1)
    lp = s.gather(1, y[:, None])[:, 0] - lse
    p = (s - lse[:, None]).exp()
    ent = lse - (p * s).sum(1)
    out = dict(lp=lp, lse=lse, ent=ent)
    if ht is not None:
        st = (d(ht) @ W64.T + (b64 if b64 is not None else 0.0)) * inv_tau
        out["lpt"] = st.log_softmax(1).gather(1, y[:, None])[:, 0]
    if g_lp is not None:
        loss = (lp * g_lp.cpu().double()).sum()
        if g_ent is not None:
            loss = loss + (ent * g_ent.cpu().double()).sum()
        loss.backward()
        out.update(dh=h64.grad, dW=W64.grad, db=None if b64 is None else b64.grad)
    return {k: (None if v is None else v.detach()) for k, v in out.items()}


def _close(got, want, tol, name):
    assert got.dtype == torch.float32, name
    assert torch.isfinite(got).all(), name
    torch.testing.assert_close(got.cpu().double(), want, msg=lambda m: f"{name}: {m}", **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("teacher", [False, True])
@pytest.mark.parametrize("want_ent", [False, True])
@pytest.mark.parametrize("inv_tau", [1.0, 1 / 0.7])
def test_stats(dtype, bias, teacher, want_ent, inv_tau):
    h, W, b, y, ht = _inputs(7, 31, 123, dtype, bias, teacher)
    lp, lse, ent, lpt = kernels.linear_logprob_stats(h, W, b, y, inv_tau, want_ent, ht, **BLOCKS)
    ref = _ref(h, W, b, y, inv_tau, ht)
    tol = TOL[dtype]
    _close(lp, ref["lp"], tol, "lp")
    _close(lse, ref["lse"], tol, "lse")
    if want_ent:
        _close(ent, ref["ent"], tol, "ent")
    else:
        assert ent is None
    if teacher:
        _close(lpt, ref["lpt"], tol, "lp_teacher")
    else:
        assert lpt is None


def test_stats_multiblock_and_large_logits():
    # several token / vocab / H blocks, and logits ~ O(100) (online max rescaling must be exact)
    h, W, b, y, ht = _inputs(37, 40, 200, torch.float32, True, True, seed=1, scale=3.0)
    lp, lse, ent, lpt = kernels.linear_logprob_stats(h, W, b, y, 1 / 0.7, True, ht, **BLOCKS)
    ref = _ref(h, W, b, y, 1 / 0.7, ht)
    tol = dict(rtol=1e-4, atol=5e-4)
    for got, k in ((lp, "lp"), (lse, "lse"), (ent, "ent"), (lpt, "lpt")):
        _close(got, ref[k], tol, k)


def test_stats_fp16_and_default_blocks():
    h, W, b, y, _ = _inputs(5, 20, 70, torch.float16, True, False, seed=2)
    lp, lse, ent, _ = kernels.linear_logprob_stats(h, W, b, y, 1.0, True)  # default (GPU) block sizes
    ref = _ref(h, W, b, y, 1.0)
    for got, k in ((lp, "lp"), (lse, "lse"), (ent, "ent")):
        _close(got, ref[k], TOL[torch.float16], k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("with_ent", [False, True])
@pytest.mark.parametrize("inv_tau", [1.0, 1 / 0.7])
def test_backward(dtype, bias, with_ent, inv_tau):
    N, H, V = 7, 31, 123
    h, W, b, y, _ = _inputs(N, H, V, dtype, bias, False, seed=3)
    g = torch.Generator().manual_seed(4)
    g_lp = torch.randn(N, generator=g).to(DEV)
    g_ent = torch.randn(N, generator=g).to(DEV) if with_ent else None
    g_lp[2] = 0.0
    if with_ent:
        g_ent[2] = 0.0
    _, lse, ent, _ = kernels.linear_logprob_stats(h, W, b, y, inv_tau, with_ent, **BLOCKS)
    dh, dW, db = kernels.linear_logprob_backward(h, W, b, y, inv_tau, lse, g_lp, g_ent, ent, **BLOCKS)
    ref = _ref(h, W, b, y, inv_tau, g_lp=g_lp, g_ent=g_ent)
    tol = TOL[dtype]
    assert dh.shape == (N, H) and dW.shape == (V, H)
    _close(dh, ref["dh"], tol, "dh")
    _close(dW, ref["dW"], tol, "dW")
    if bias:
        _close(db, ref["db"], tol, "db")
    else:
        assert db is None


def test_backward_multiblock_skip_and_ent_recompute():
    # 3 token blocks, the middle one has all-zero coefficients (skipped path); ent not passed
    N, H, V = 37, 40, 200
    h, W, b, y, _ = _inputs(N, H, V, torch.float32, True, False, seed=5, scale=1.0)
    g = torch.Generator().manual_seed(6)
    g_lp = torch.randn(N, generator=g).to(DEV)
    g_ent = torch.randn(N, generator=g).to(DEV)
    g_lp[16:32] = 0.0
    g_ent[16:32] = 0.0
    _, lse, _, _ = kernels.linear_logprob_stats(h, W, b, y, 1 / 0.7, False, **BLOCKS)
    dh, dW, db = kernels.linear_logprob_backward(h, W, b, y, 1 / 0.7, lse, g_lp, g_ent, None, **BLOCKS)
    ref = _ref(h, W, b, y, 1 / 0.7, g_lp=g_lp, g_ent=g_ent)
    tol = dict(rtol=1e-4, atol=1e-4)
    _close(dh, ref["dh"], tol, "dh")
    _close(dW, ref["dW"], tol, "dW")
    _close(db, ref["db"], tol, "db")
    assert (dh[16:32] == 0).all()


def test_backward_deterministic_repeatable():
    h, W, b, y, _ = _inputs(20, 24, 90, torch.bfloat16, True, False, seed=7)
    g_lp = torch.linspace(-1, 1, 20).to(DEV)
    _, lse, _, _ = kernels.linear_logprob_stats(h, W, b, y, 1.0, False, **BLOCKS)
    a = kernels.linear_logprob_backward(h, W, b, y, 1.0, lse, g_lp, **BLOCKS)
    c = kernels.linear_logprob_backward(h, W, b, y, 1.0, lse, g_lp, **BLOCKS)
    for x, z in zip(a, c):
        assert torch.equal(x, z)


def test_bad_inputs():
    h, W, b, y, _ = _inputs(4, 16, 40, torch.float32, True, False)
    with pytest.raises(ValueError):
        kernels.linear_logprob_stats(h, W[:, :8], b, y, 1.0, False)
    with pytest.raises(ValueError):
        kernels.linear_logprob_stats(h, W, b, y, 1.0, False, block_v=48)


def test_mixed_dtype_and_noncontiguous():
    h, W, b, y, _ = _inputs(6, 16, 50, torch.float32, True, False, seed=8)
    Wt = W.t().contiguous().t()  # non-contiguous view of the same values
    lp, lse, _, _ = kernels.linear_logprob_stats(h.to(torch.bfloat16), Wt, b, y, 1.0, False, **BLOCKS)
    ref = _ref(h.to(torch.bfloat16).float(), W, b, y, 1.0)
    _close(lp, ref["lp"], TOL[torch.float32], "lp")
    _close(lse, ref["lse"], TOL[torch.float32], "lse")


def test_backward_dh_only():
    h, W, b, y, _ = _inputs(9, 20, 70, torch.float32, True, False, seed=9)
    g_lp = torch.linspace(-1, 1, 9).to(DEV)
    _, lse, _, _ = kernels.linear_logprob_stats(h, W, b, y, 1.0, False, **BLOCKS)
    dh, dW, db = kernels.linear_logprob_backward(h, W, b, y, 1.0, lse, g_lp, need_weight_grad=False,
                                                 **BLOCKS)
    assert dW is None and db is None
    _close(dh, _ref(h, W, b, y, 1.0, g_lp=g_lp)["dh"], TOL[torch.float32], "dh")
