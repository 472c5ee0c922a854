"""Two DDP processes (gloo, CPU) give the same training step as one process on the whole batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from processes import free_port
from trainer_helpers import examples, make_config, tiny_setup
from rlsd.loop import Trainer

SECTIONS = dict(algo={"name": "rlsd", "dynamic_sampling": False, "loss": {"kl_coef": 0.01}},
                train={"steps": 1, "prompts_per_step": 4, "micro_batch_size": 3, "seed": 1})


def one_step(tmp_path):
    model, tok = tiny_setup()
    trainer = Trainer(make_config(tmp_path, **SECTIONS), model, tok, examples(answer="7"))
    record = trainer.train_step()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return record, grads, {k: v.detach().clone() for k, v in model.state_dict().items()}


def worker(rank, world_size, port, tmp_path):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        torch.save(one_step(tmp_path / f"rank{rank}"), tmp_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(worker, args=(2, free_port(), tmp_path), nprocs=2)
    record, grads, params = one_step(tmp_path / "single")
    assert record["grad_norm"] > 0.0 and record["groups_kept"] == 4
    for rank in range(2):
        r_record, r_grads, r_params = torch.load(tmp_path / f"rank{rank}.pt")
        assert r_record["reward_mean"] == record["reward_mean"]
        assert abs(r_record["loss"] - record["loss"]) <= 1e-5 * abs(record["loss"])
        assert abs(r_record["grad_norm"] - record["grad_norm"]) <= 1e-5 * record["grad_norm"]
        for name, g in grads.items():
            torch.testing.assert_close(r_grads[name], g, rtol=1e-5, atol=1e-7, msg=name)
        for name, p in params.items():
            torch.testing.assert_close(r_params[name], p, rtol=1e-5, atol=1e-6, msg=name)
