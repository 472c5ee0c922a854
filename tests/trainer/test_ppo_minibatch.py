import pytest
import torch

from trainer_helpers import examples, make_config, params_copy, tiny_setup
from rlsd.loop import Sample, Trainer, ppo_mini_batches
from rlsd.teacher import teacher_prompt


def grouped_batch(trainer, prompts=4, n=4, seed=1):
    """Rollouts of the trainer's model, one group per prompt, advantages +1 / -1 alternating."""
    exs = trainer.train_examples[:prompts]
    groups = trainer.engine.generate([trainer.encode(e.prompt) for e in exs], n, 10, 1.0, seed=seed)
    out = []
    for g, (e, rs) in enumerate(zip(exs, groups)):
        ctx = trainer.encode(teacher_prompt(e, trainer.cfg.teacher))
        out += [Sample(r.prompt_ids, ctx, r.response_ids, r.logprobs, 1.0 if i % 2 else -1.0, g)
                for i, r in enumerate(rs)]
    return out


def trainer_for(tmp_path, **train):
    model, tok = tiny_setup()
    cfg = make_config(tmp_path, train={"lr": 1e-2, **train})
    return Trainer(cfg, model, tok, examples())


def test_split_by_prompt():
    samples = [Sample([], [], [1], [0.0], 0.0, g) for g in (3, 3, 5, 5, 8, 8)]
    assert ppo_mini_batches(samples, 0) == [samples]
    assert [[s.group for s in m] for m in ppo_mini_batches(samples, 2)] == [[3, 3, 5, 5], [8, 8]]


@pytest.mark.parametrize("train", [{"ppo_mini_batch_size": 4}, {"ppo_mini_batch_size": 9}])
def test_one_mini_batch_is_the_single_step_update(tmp_path, train):
    """One mini-batch per batch: the same weights as one plain optimizer step over the batch."""
    plain = trainer_for(tmp_path / "a")
    samples = grouped_batch(plain)
    plain.optimizer.zero_grad(set_to_none=True)
    plain.accumulate_gradients(samples)
    torch.nn.utils.clip_grad_norm_(plain.params, plain.cfg.train.grad_clip)
    plain.optimizer.step()
    for cfg in ({}, train):
        mini = trainer_for(tmp_path / "b", **cfg)
        _, metrics = mini.update(samples)
        assert metrics["ppo_steps"] == 1 and metrics["ppo_clip_frac"] == 0.0
        for k, v in plain.model.state_dict().items():
            assert torch.equal(v, mini.model.state_dict()[k]), k


def test_several_mini_batches_move_the_ratio_and_clip(tmp_path):
    trainer = trainer_for(tmp_path, ppo_mini_batch_size=1, ppo_epochs=2)
    samples = grouped_batch(trainer)
    _, metrics = trainer.update(samples)
    assert metrics["ppo_steps"] == 8
    assert metrics["approx_kl"] > 1e-3 and metrics["ppo_clip_frac"] > 0.0
    # the clip acts: without it (eps huge) the same mini-batches give other weights
    unclipped = trainer_for(tmp_path / "u", ppo_mini_batch_size=1, ppo_epochs=2)
    unclipped.cfg.algo.loss = unclipped.cfg.algo.loss.replace(eps_low=0.999, eps_high=1e6, dual_clip=None)
    unclipped.update(samples)
    change = max((trainer.model.state_dict()[k] - v).abs().max().item()
                 for k, v in unclipped.model.state_dict().items())
    assert change > 1e-4


def test_recomputed_old_logprobs_match_the_engine(tmp_path):
    trainer = trainer_for(tmp_path, recompute_old_logprobs=True)
    samples = grouped_batch(trainer)
    before = params_copy(trainer.model)
    recomputed = trainer.recompute_old_logprobs(samples)
    for s, r in zip(samples, recomputed):
        assert r.response == s.response and r.group == s.group
        torch.testing.assert_close(torch.tensor(r.logprobs), torch.tensor(s.logprobs), atol=1e-4, rtol=0)
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())
    _, metrics = trainer.update(samples)
    assert metrics["ppo_steps"] == 1
