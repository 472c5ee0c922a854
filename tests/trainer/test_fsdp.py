"""FSDP2 (torch's ``fully_shard``, gloo on the CPU) around the thin trainer's student: two processes,
each holding half of every parameter, give the same loss, gradients and AdamW step as one process
on the whole batch.

The step is the thin trainer's own micro-batch path (``response_hidden`` through a wrapped body,
``lm_head``, ``algorithm_loss`` with the step's global normaliser, the backward scaled by the world
size as in ``Trainer.accumulate_gradients``), with the decoder layers and the whole body
``fully_shard``-ed: the LM head (tied to the embeddings here) lives in the root group, which stays
unsharded between the forward and the backward, so the fused loss reads the full head. The teacher
is a frozen copy (the trainer's synced teacher), its log-probs computed before sharding.
"""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from processes import free_port
from trainer_helpers import make_config
from rlsd.batch import pad_values, response_hidden
from rlsd.demo.task import ALPHABET
from rlsd.demo.tiny import char_tokenizer, tiny_qwen3
from rlsd.distributed import DecoderBody
from rlsd.loop import global_normalizer
from rlsd.model import lm_head
from rlsd.objectives import algorithm_loss
from rlsd.teacher import TeacherInputs

ALGO = {"name": "rlsd", "loss": {"lam": 0.7, "kl_coef": 0.0}, "loss_agg": "token-mean"}


def batch(vocab):
    g = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    lengths = [(5, 4), (3, 6), (6, 2), (4, 5)]
    contexts, responses = [ids(c) for c, _ in lengths], [ids(r) for _, r in lengths]
    teacher_contexts = [ids(c + 3) for c, _ in lengths]
    old = [(-4.0 + 0.3 * torch.randn(len(r), generator=g)).tolist() for r in responses]
    return contexts, teacher_contexts, responses, old, [1.0, -0.5, 0.8, -1.2]


def one_step(rank, world_size, tmp_path):
    tok = char_tokenizer(ALPHABET)
    model = tiny_qwen3(len(tok), hidden=64, layers=2, heads=1, head_dim=64, ffn=128, seed=0)
    algo = make_config(tmp_path, algo=ALGO).algo
    contexts, teacher_contexts, responses, old, adv = batch(len(tok))
    pad = tok.pad_token_id
    with torch.no_grad():
        h_t, targets, _ = response_hidden(model, teacher_contexts, responses, pad)
        teacher_lp = torch.log_softmax(h_t @ lm_head(model)[0].T, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    body = DecoderBody(model)
    if world_size > 1:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(body)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    normalizer = global_normalizer(algo.loss_agg, [len(r) for r in responses])
    mine = list(range(rank, len(responses), world_size))
    hidden, targets, mask = response_hidden(model, [contexts[i] for i in mine], [responses[i] for i in mine], pad,
                                            body=body)
    T = targets.shape[1]
    loss, metrics = algorithm_loss(
        algo, algo.loss.lam, hidden, lm_head(model)[0], targets, mask, advantages=torch.tensor([adv[i] for i in mine]),
        teacher=TeacherInputs(logprobs=teacher_lp[mine, :T]), old_logprobs=pad_values([old[i] for i in mine], T),
        normalizer=normalizer)
    (loss * world_size).backward()
    full = lambda t: t.full_tensor() if isinstance(t, DTensor) else t  # noqa: E731
    grads = {n: full(p.grad).clone() for n, p in model.named_parameters()}
    optimizer.step()
    total = loss.detach().clone()
    if world_size > 1:
        dist.all_reduce(total)
    params = {n: full(p.detach()).clone() for n, p in model.named_parameters()}
    sharded = {n: isinstance(p, DTensor) for n, p in model.named_parameters()}
    return total.item(), grads, params, sharded, float(metrics["credit_clip_frac"])


def worker(rank, world_size, port, tmp_path):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        torch.save(one_step(rank, world_size, tmp_path / f"rank{rank}"), tmp_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fsdp2_two_processes_equal_one_process(tmp_path):
    mp.spawn(worker, args=(2, free_port(), tmp_path), nprocs=2)
    loss, grads, params, sharded, _ = one_step(0, 1, tmp_path / "single")
    assert not any(sharded.values())
    for rank in range(2):
        r_loss, r_grads, r_params, r_sharded, clip_frac = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert all(r_sharded.values()) and clip_frac > 0.0
        assert abs(r_loss - loss) <= 1e-5 * abs(loss)
        for name, g in grads.items():
            assert g.abs().max() > 0, name
            torch.testing.assert_close(r_grads[name], g, rtol=1e-5, atol=1e-7, msg=name)
        for name, p in params.items():
            torch.testing.assert_close(r_params[name], p, rtol=1e-5, atol=1e-6, msg=name)
