"""The backend protocol (ops/base.py): every backend honours a token loss that needs every row's
statistics before any row's gradient (``TokenLoss.needs_all_rows``), and the token inputs carry
each row's sequence through the rows a sweep visits."""

import pytest
import torch
from inputs import FUSED_IMPLS, make_case, max_rel_err

from rlsd_kernels import VocabParallel
from rlsd_kernels.math import compute_dtype
from rlsd_kernels.ops import get_backend
from rlsd_kernels.ops.base import HeadCall
from rlsd_kernels.tokens import Rows, TokenLoss, TokenTerms, token_inputs

BACKENDS = ["eager"] + FUSED_IMPLS + ["vocab-parallel"]


class SequenceCentred(TokenLoss):
    """l_t = agg_t (lp_t - S_b)^2 / 2 with S_b = sum of lp over the rows of t's sequence b: each
    token's loss and gradient depend on the other rows of its sequence. Records the rows of each call."""

    def __init__(self, needs_all_rows=True):
        self.needs_all_rows = needs_all_rows
        self.calls = []

    def __call__(self, lp, ent, tok):
        self.calls.append(lp.shape[0])
        seq_sum = torch.zeros(int(tok.seq.max()) + 1, dtype=lp.dtype).index_add(0, tok.seq, lp)
        return tok.agg * 0.5 * (lp - seq_sum[tok.seq]) ** 2


def run(backend, case, loss):
    """(loss, dh over the rows, dW, number of rows) of ``loss`` on ``case`` through ``backend``."""
    rows = Rows(case.mask, case.hidden.device)
    tok = token_inputs(case.mask, case.advantages, "token-mean", None, compute_dtype(case.hidden), rows)
    call = HeadCall(rows.take(case.hidden.detach()), case.weight.detach(), case.bias.detach(),
                    rows.take(case.targets), 0.7, need_grad=True, need_weight_grad=True)
    out = backend.loss_and_grad(call, TokenTerms(loss, tok))
    return out.loss_t.sum(), out.grads.dh, out.grads.dW, call.rows


@pytest.mark.parametrize("impl", BACKENDS)
def test_a_loss_that_needs_all_rows_sees_them_at_once(impl, request):
    case = make_case(B=3, T=9, H=8, V=13, dtype=torch.float64)
    if impl == "vocab-parallel":
        backend = VocabParallel(request.getfixturevalue("one_process_group"), chunk_bytes=256)
    else:
        backend = get_backend(impl).with_memory_budget(256)  # a few rows per chunk
    loss = SequenceCentred()
    got, dh, dW, n = run(backend, case, loss)
    assert loss.calls == [n]
    want, dh_e, dW_e, _ = run(get_backend("eager"), case, SequenceCentred())
    assert max_rel_err(got, want) < 1e-12 and max_rel_err(dh, dh_e) < 1e-10 and max_rel_err(dW, dW_e) < 1e-10


@pytest.mark.parametrize("impl", [i for i in FUSED_IMPLS if i in ("chunked", "cpp")])
def test_a_loss_of_its_own_rows_is_called_per_chunk(impl):
    """The same loss without ``needs_all_rows`` is called per chunk (so the test above can fail):
    one sweep, gradient formed while the chunk's logits are in memory."""
    case = make_case(B=3, T=9, H=8, V=13, dtype=torch.float64)
    loss = SequenceCentred(needs_all_rows=False)
    run(get_backend(impl).with_memory_budget(256), case, loss)
    assert len(loss.calls) > 1


def test_sequence_index_follows_the_rows():
    """``seq`` is each row's sequence, after the CPU drops the masked rows."""
    mask = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 1]])
    tok = token_inputs(mask, torch.zeros(3), "token-mean", None, torch.float64, Rows(mask, torch.device("cpu")))
    assert tok.seq.tolist() == [0, 0, 2, 2]
    assert tok.slice(slice(1, 3)).seq.tolist() == [0, 2]
    assert token_inputs(mask, None, "token-mean", None, torch.float64).seq.tolist() == [[0] * 3, [1] * 3, [2] * 3]
