import json
import os

import torch

from trainer_helpers import examples, make_config, tiny_setup
from rlsd.loop import Trainer

RESUME_SECTIONS = dict(
    algo={"name": "rlsd", "dynamic_sampling": True, "loss": {"kl_coef": 0.01, "lam": 0.5}, "lam_schedule": "linear",
          "lam_decay_steps": 3},
    teacher={"sync": "frozen", "sync_every": 2},
)


def run(tmp_path, steps, resume=False, **sections):
    model, tok = tiny_setup()
    cfg = make_config(tmp_path, **sections)
    cfg.train.steps, cfg.train.checkpoint_every = steps, 2
    trainer = Trainer(cfg, model, tok, examples(answer="7"), examples(8, seed=5, answer="7"))
    if resume:
        assert trainer.resume() == 2
    return trainer, trainer.train()


def test_train_logs_metrics_plot_and_checkpoint(tmp_path):
    trainer, records = run(tmp_path, 3, train={"eval_every": 2})
    out = trainer.cfg.train.output_dir
    with open(os.path.join(out, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert [r["step"] for r in logged] == [0, 1, 2, 3]
    assert "eval_accuracy" in logged[0] and "eval_accuracy" in logged[2] and "eval_accuracy" in logged[3]
    for key in ("reward_mean", "accuracy", "loss", "credit_clip_frac", "delta_mean", "entropy_mean",
                "approx_kl", "time_step", "time_rollout", "reasons", "lam"):
        assert key in logged[1], key
    assert os.path.exists(os.path.join(out, "metrics.png"))
    assert os.path.exists(os.path.join(out, "checkpoints", "step_000003", "model", "config.json"))


def test_resume_equals_uninterrupted_run(tmp_path):
    full, full_records = run(tmp_path / "a", 4, **RESUME_SECTIONS)
    run(tmp_path / "b", 2, **RESUME_SECTIONS)
    resumed, resumed_records = run(tmp_path / "b", 4, resume=True, **RESUME_SECTIONS)
    assert [r["step"] for r in resumed_records] == [3, 4]
    for a, b in zip(full_records[2:], resumed_records):
        assert a["loss"] == b["loss"] and a["reward_mean"] == b["reward_mean"]
    assert full_records[2]["groups_kept"] > 0 and full_records[2]["loss"] != 0.0
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    with open(os.path.join(resumed.cfg.train.output_dir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]


def test_curriculum_run_logs_level(tmp_path):
    model, tok = tiny_setup()
    cfg = make_config(tmp_path, data={"curriculum": True, "curriculum_window": 8, "curriculum_threshold": 0.0})
    exs = examples(answer="7")
    for i, e in enumerate(exs):
        e.difficulty = i % 2
    trainer = Trainer(cfg, model, tok, exs)
    first, second = trainer.train_step(), trainer.train_step()
    assert first["level"] == 0 and second["level"] == 1
