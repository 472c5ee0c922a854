"""RLSDTrainer under ``accelerate launch --multi_gpu --num_processes 2`` (torchrun; with the
trainer's ``use_cpu=True`` the processes run on the CPU over gloo: ``--cpu`` alone would launch a
single process without mpirun) gives the same training step as one process on the whole batch.

The rollouts come from a ``rollout_func`` (TRL's hook for custom generation) that answers each
prompt with fixed tokens, the same whatever the number of processes, so both runs see the same
batch; everything after generation is TRL's and the adapter's own code: the rewards gathered
across processes, the group advantages, the teacher prompts, the DAPO normaliser
``num_items_in_batch / processes``, the DDP gradient all-reduce and the optimizer step (plain SGD,
so the parameter change is ``lr`` times the gradient and a wrong scale would show).

Run directly (``python this_file.py OUT``), it trains one step and saves the parameter change.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl", reason="trl is not installed")
pytest.importorskip("accelerate", reason="accelerate is not installed")

HERE = Path(__file__).resolve().parent
LR = 0.5


def rollout(prompts, trainer):
    """Fixed completions: the g-th copy of a prompt in this process's list gets tokens built from
    the prompt and g (each process holds whole groups: per_device_train_batch_size is a multiple
    of num_generations)."""
    tok = trainer.processing_class
    seen, prompt_ids, completion_ids = {}, [], []
    for p in prompts:
        g = seen[p] = seen.get(p, -1) + 1
        prompt_ids.append(tok(p)["input_ids"])
        digits = str(sum(map(ord, p)) * (g + 3))
        text = digits[: 2 + g] + "x" * (1 + 2 * g)
        completion_ids.append(tok(text)["input_ids"] + [tok.eos_token_id])
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def train_one_step(out_dir, per_device_batch):
    sys.path[:0] = [str(HERE), str(HERE.parent)]  # test_trl imports privileged_cases from tests/
    from test_trl import char_tokenizer, config, dataset, reward_digits, tiny_qwen3

    from rlsd_kernels.integrations.trl import RLSDTrainer

    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    torch.set_num_threads(1)
    tok = char_tokenizer()
    model = tiny_qwen3(len(tok))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = config(out_dir, per_device_train_batch_size=per_device_batch, num_generations=2, max_steps=1, optim="sgd",
                  learning_rate=LR, lr_scheduler_type="constant", max_grad_norm=0.0, loss_type="dapo")
    trainer = RLSDTrainer(model, reward_digits, args=args, train_dataset=dataset(8), processing_class=tok,
                          rollout_func=rollout, lam=0.5)
    trainer.train()
    if trainer.accelerator.is_main_process:
        logged = next(e for e in trainer.state.log_history if "loss" in e)
        change = {n: p.detach() - before[n] for n, p in model.named_parameters()}
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
        torch.save({"change": change, "log": logged, "processes": trainer.accelerator.num_processes,
                    "backend": backend}, Path(out_dir) / "step.pt")
    if torch.distributed.is_initialized():  # an orderly shutdown: gloo's threads outliving exit abort it
        trainer.accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()


def run(out_dir, processes):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    per_device = str(4 // processes)  # the whole batch: 4 completions (2 prompts x 2) per step
    if processes == 1:
        cmd = [sys.executable, __file__, str(out_dir), per_device]
    else:  # torchrun under accelerate; the trainer's use_cpu=True makes it gloo on the CPU
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", __file__, str(out_dir),
               per_device]
    proc = subprocess.run(cmd, env=env, cwd=HERE.parent.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(Path(out_dir) / "step.pt")


def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    two = run(tmp_path / "two", 2)
    one = run(tmp_path / "one", 1)
    assert (two["processes"], two["backend"], one["processes"]) == (2, "gloo", 1)
    assert one["log"]["rlsd/credit_clip_frac"] >= 0.0 and one["log"]["reward"] > 0.0
    for key in ("loss", "reward", "reward_std", "rlsd/delta_mean", "entropy"):
        assert two["log"][key] == pytest.approx(one["log"][key], rel=1e-4, abs=1e-6), key
    moved = [n for n, c in one["change"].items() if c.abs().max() > 0]
    assert "lm_head.weight" in moved and len(moved) == len(one["change"])
    for name, change in one["change"].items():
        torch.testing.assert_close(two["change"][name], change, rtol=1e-4, atol=1e-7, msg=name)


if __name__ == "__main__":
    train_one_step(sys.argv[1], int(sys.argv[2]))
