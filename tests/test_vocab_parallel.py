"""The vocabulary-parallel head on two gloo processes equals the single-process fused loss."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from inputs import make_case, max_rel_err, run

from rlsd_kernels import RLSDOptions, VocabParallel, fused_linear_logprobs, rlsd_loss

SPLIT = 50  # rank 0 holds vocabulary rows [0, 50), rank 1 [50, 123): unequal shards on purpose
OPTIONS = dict(temperature=0.7, options=RLSDOptions(entropy_coef=0.01, lam=0.5))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, case, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
        local = case.cast(torch.float64)
        weight = local.weight.detach()[rows].clone().requires_grad_()
        bias = local.bias.detach()[rows].clone().requires_grad_()
        impl = VocabParallel(chunk_bytes=16 << 10)
        loss, metrics = rlsd_loss(local.hidden, weight, local.targets, local.advantages, local.mask, bias=bias,
                                  impl=impl, **local.extra, **OPTIONS)
        grads = torch.autograd.grad(loss, [local.hidden, weight, bias])
        lp, ent = fused_linear_logprobs(local.hidden, weight, local.targets, bias=bias, temperature=0.7,
                                        return_entropy=True, impl=impl)
        (lp_grad,) = torch.autograd.grad((lp * 0.5).sum() + ent.sum(), [weight])
        results[rank] = dict(loss=loss.detach(), grads=[g.detach() for g in grads], lp=lp.detach(),
                             ent=ent.detach(), lp_grad=lp_grad, metrics={k: v.item() for k, v in metrics.items()})
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one():
    case = make_case(temperature=OPTIONS["temperature"])
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(_free_port(), case, results), nprocs=2, join=True)
    truth_case = case.cast(torch.float64)
    loss, metrics, (dh, dW, db) = run(truth_case, impl="chunked", **OPTIONS)
    lp, ent = fused_linear_logprobs(truth_case.hidden, truth_case.weight, truth_case.targets, bias=truth_case.bias,
                                    temperature=0.7, return_entropy=True, impl="chunked")
    (lp_grad,) = torch.autograd.grad((lp * 0.5).sum() + ent.sum(), [truth_case.weight])
    for rank, rows in ((0, slice(0, SPLIT)), (1, slice(SPLIT, None))):
        r = results[rank]
        assert max_rel_err(r["loss"], loss) < 1e-12
        assert max_rel_err(r["grads"][0], dh) < 1e-10  # every rank holds the full dL/dhidden
        assert max_rel_err(r["grads"][1], dW[rows]) < 1e-10
        assert max_rel_err(r["grads"][2], db[rows]) < 1e-10
        assert max_rel_err(r["lp"], lp.detach()) < 1e-12 and max_rel_err(r["ent"], ent.detach()) < 1e-12
        assert max_rel_err(r["lp_grad"], lp_grad[rows]) < 1e-10
        for key, value in metrics.items():
            assert abs(r["metrics"][key] - value.item()) < 1e-9, key


def test_targets_are_checked_against_the_whole_vocabulary():
    with pytest.raises(ValueError, match="targets"):
        case = make_case()
        impl = VocabParallel()
        impl.vocab_range = lambda W: (0, 123)  # as if a second rank held the rest
        rlsd_loss(case.hidden, case.weight[:50], case.targets.clamp(max=122) * 0 + 200, case.advantages, case.mask,
                  bias=case.bias[:50], impl=impl, **case.extra)
