"""torch.compile traces a small model's step through the losses without a graph break
(``fullgraph=True``: the losses are custom ops with fake implementations), and the compiled step
gives the eager step's loss, metrics and gradients; a new ``lam`` recompiles rather than being
baked in."""

import pytest
import torch
from inputs import FUSED_IMPLS, max_rel_err

from rlsd_kernels import FusedLinearRLSDLoss, RLSDOptions, fused_linear_logprobs, opsd_loss

B, T, H, V = 2, 6, 8, 29
IMPLS = ["eager"] + [i for i in FUSED_IMPLS if not i.startswith("triton")]


class Tiny(torch.nn.Module):
    """An embedding and an LM head: hidden states [B, T, H] for the loss."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(V, H)
        self.head = torch.nn.Linear(H, V)


def batch():
    ids = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T)
    mask[1, 4:] = 0
    return dict(ids=ids, teacher_ids=torch.randint(0, V, (B, T)), targets=torch.roll(ids, -1, 1),
                advantages=torch.tensor([1.0, -0.5]), mask=mask, old=-3.0 - torch.rand(B, T))


def make_step(model, loss_fn, impl):
    def step(ids, teacher_ids, targets, advantages, mask, old):
        hidden = model.embed(ids)
        with torch.no_grad():
            teacher = model.embed(teacher_ids)
        W, b = model.head.weight, model.head.bias
        loss, metrics = loss_fn(hidden, W, targets, advantages, mask, bias=b, teacher_hidden=teacher, old_logprobs=old)
        lp, ent = fused_linear_logprobs(hidden, W, targets, bias=b, return_entropy=True, impl=impl)
        jsd, _ = opsd_loss(hidden, W, targets, mask, teacher_hidden=teacher, bias=b, form="jsd", impl=impl)
        return loss + 0.01 * (ent * mask).sum() + 0.1 * jsd + 0.001 * lp.sum(), metrics
    return step


def run(step, model, x):
    model.zero_grad()
    loss, metrics = step(**x)
    loss.backward()
    return loss.detach(), metrics, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("impl", IMPLS)
def test_compiled_step_equals_eager(impl):
    torch.manual_seed(0)
    model = Tiny()
    loss_fn = FusedLinearRLSDLoss(options=RLSDOptions(lam=0.5, entropy_coef=0.01), compute_entropy=True, impl=impl)
    step = make_step(model, loss_fn, impl)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = batch()
    for lam in (0.5, 0.0):  # a new lam: the guard on the options recompiles the step
        loss_fn.lam = lam
        want, want_metrics, want_grads = run(step, model, x)
        got, metrics, grads = run(compiled, model, x)
        assert max_rel_err(got, want) < 1e-6, lam
        assert metrics.keys() == want_metrics.keys()
        for k in metrics:
            assert abs(metrics[k].item() - want_metrics[k].item()) < 1e-6, k
        for g, w in zip(grads, want_grads):
            assert max_rel_err(g, w) < 1e-5, lam
