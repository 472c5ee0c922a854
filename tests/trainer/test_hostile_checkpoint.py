"""Hostile checkpoints: a write killed midway, truncated or corrupt files, a directory that is not a
checkpoint, another config's checkpoint. None is ever loaded; the metrics log keeps each step once."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from trainer_helpers import examples, make_config, tiny_setup
from rlsd.checkpoint import CheckpointError, config_differences, latest_checkpoint, verify_checkpoint
from rlsd.config import Config, config_to_dict
from rlsd.loop import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SECTIONS = dict(algo={"name": "rlsd", "loss": {"lam": 0.5}}, teacher={"sync": "frozen", "sync_every": 2})


def build(run_dir, steps=4, algo=None, train=None):
    """A tiny-model trainer writing to ``run_dir``, checkpointing every 2 steps (the eager loss: what
    is tested here does not depend on the kernel)."""
    model, tok = tiny_setup()
    cfg = make_config(run_dir, algo={**SECTIONS["algo"], **(algo or {})}, teacher=SECTIONS["teacher"],
                      train={"steps": steps, "checkpoint_every": 2, "impl": "eager", **(train or {})})
    return Trainer(cfg, model, tok, examples(answer="7"))


def logged(trainer) -> list:
    with open(os.path.join(trainer.cfg.train.output_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def ckpt(run_dir, step=None) -> str:
    base = os.path.join(str(run_dir), "run", "checkpoints")
    return base if step is None else os.path.join(base, f"step_{step:06d}")


def params(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(before, model) -> bool:
    return all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 4-step run with complete checkpoints at steps 2 and 4, and its log."""
    root = tmp_path_factory.mktemp("finished")
    trainer = build(root)
    trainer.train()
    return root, logged(trainer)


@pytest.fixture
def run_copy(finished, tmp_path):
    shutil.copytree(finished[0] / "run", tmp_path / "run")
    return tmp_path


KILL_DURING_STEP_4 = """
import os, pathlib, signal, sys, torch
sys.path[:0] = [{root!r} + "/python", {root!r}, {here!r}]
from test_hostile_checkpoint import build
real_save = torch.save

def save_then_die(obj, path, *args, **kwargs):  # the model files are written; trainer_state.pt is half written
    if isinstance(obj, dict) and obj.get("step") == 4:
        with open(path, "wb") as f:
            f.write(b"half a pickle")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, path, *args, **kwargs)

torch.save = save_then_die
build(pathlib.Path({run_dir!r})).train()
"""


def test_run_killed_during_a_checkpoint_write_resumes_from_the_last_complete_one(tmp_path, finished):
    script = KILL_DURING_STEP_4.format(root=ROOT, here=HERE, run_dir=str(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sorted(os.listdir(ckpt(tmp_path))) == ["step_000002", "step_000004.tmp"]
    with pytest.raises(CheckpointError, match="no manifest.json"):
        verify_checkpoint(ckpt(tmp_path) + "/step_000004.tmp")
    assert latest_checkpoint(str(tmp_path / "run")) == ckpt(tmp_path, 2)

    trainer = build(tmp_path)
    assert trainer.resume() == 2
    trainer.train()
    log = logged(trainer)
    assert [r["step"] for r in log] == [1, 2, 3, 4]  # step 3 and 4 were logged before the kill: not twice
    assert [r["loss"] for r in log] == [r["loss"] for r in finished[1]]  # and the resume is exact
    assert sorted(os.listdir(ckpt(tmp_path))) == ["step_000002", "step_000004"]
    assert verify_checkpoint(ckpt(tmp_path, 4))["step"] == 4


def test_manifest_lists_every_file_with_size_and_hash(finished):
    root, _ = finished
    manifest = verify_checkpoint(ckpt(root, 4))
    assert manifest["step"] == 4 and manifest["config"]["algo"]["loss"]["lam"] == 0.5
    on_disk = {os.path.relpath(os.path.join(d, n), ckpt(root, 4)) for d, _, ns in os.walk(ckpt(root, 4)) for n in ns}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    assert {"model/config.json", "model/model.safetensors", "trainer_state.pt"} <= set(manifest["files"])
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in manifest["files"].values())


def corrupt(path, how):
    if how == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 10)
    elif how == "flipped":
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
    else:
        os.remove(path)


@pytest.mark.parametrize("name,how,expected,skipped", [
    ("model/model.safetensors", "truncated", r"model/model.safetensors has \d+ bytes, the manifest says \d+", True),
    ("trainer_state.pt", "truncated", r"trainer_state.pt has \d+ bytes", True),
    ("model/model.safetensors", "flipped", "model/model.safetensors does not match its sha256", False),
    ("trainer_state.pt", "missing", "trainer_state.pt is missing", True),
    ("manifest.json", "missing", "no manifest.json", True),
])
def test_damaged_checkpoint_is_never_loaded(run_copy, name, how, expected, skipped):
    corrupt(os.path.join(ckpt(run_copy, 4), name), how)
    # the newest intact one is picked when resuming; a size check finds truncation, the hash check corruption
    assert latest_checkpoint(str(run_copy / "run")) == ckpt(run_copy, 2 if skipped else 4)
    trainer = build(run_copy)
    before = params(trainer.model)
    with pytest.raises(CheckpointError, match=expected):
        trainer.resume(ckpt(run_copy, 4))
    assert unchanged(before, trainer.model) and trainer.step == 0


def test_unreadable_manifest(run_copy):
    with open(os.path.join(ckpt(run_copy, 4), "manifest.json"), "w") as f:
        f.write('{"step": 4, "fil')
    with pytest.raises(CheckpointError, match="unreadable manifest.json"):
        verify_checkpoint(ckpt(run_copy, 4))
    assert latest_checkpoint(str(run_copy / "run")) == ckpt(run_copy, 2)


def test_a_directory_that_is_not_a_checkpoint(run_copy, tmp_path):
    trainer = build(run_copy)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for path, expected in [(tmp_path / "empty", "has no manifest.json"), (run_copy / "run", "has no manifest.json"),
                           (tmp_path / "nope", "is not a directory"), (tmp_path / "file", "is not a directory"),
                           (ckpt(run_copy, 4) + "/model", "has no manifest.json")]:
        with pytest.raises(CheckpointError, match=expected) as info:
            trainer.resume(str(path))
        assert str(path) in str(info.value)
    assert latest_checkpoint(str(tmp_path / "empty")) is None


def test_resume_with_a_different_config(run_copy):
    trainer = build(run_copy, algo={"loss": {"lam": 0.9}}, train={"lr": 1e-4})
    before = params(trainer.model)
    with pytest.raises(CheckpointError, match="different config") as info:
        trainer.resume()
    assert "algo.loss.lam: 0.5 in the checkpoint, 0.9 now" in str(info.value)
    assert "train.lr: 0.001 in the checkpoint, 0.0001 now" in str(info.value)
    assert unchanged(before, trainer.model) and trainer.step == 0
    # more steps, other micro-batches and evaluation settings do not change what is trained
    trainer = build(run_copy, steps=6, train={"micro_batch_size": 3, "eval_every": 5})
    assert trainer.resume() == 4


def test_resume_on_another_training_set(run_copy):
    model, tok = tiny_setup()
    cfg = make_config(run_copy, algo=SECTIONS["algo"], teacher=SECTIONS["teacher"], train={"impl": "eager"})
    trainer = Trainer(cfg, model, tok, examples(answer="7")[:10])
    before = params(trainer.model)
    with pytest.raises(CheckpointError, match="step_000004: the sampler state does not fit this training set"):
        trainer.resume()
    assert unchanged(before, trainer.model)


def test_metrics_log_after_a_kill(tmp_path):
    from rlsd.metrics import MetricsLog, read_jsonl
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "loss": 0.')
    assert read_jsonl(str(path)) == [{"step": 1}, {"step": 2}, {"step": 3}]  # the cut record is left out
    log = MetricsLog(str(path))
    log.log({"step": 3, "loss": 1.0})  # a run restarting at step 3 replaces steps 3 and later
    log.log({"step": 4})
    assert read_jsonl(str(path)) == [{"step": 1}, {"step": 2}, {"step": 3, "loss": 1.0}, {"step": 4}]
    path.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2: not a JSON record"):
        MetricsLog(str(path)).truncate_after(5)


def test_config_differences():
    saved = config_to_dict(Config())
    changed = config_to_dict(Config())
    changed["verifier"]["options"] = {"pattern": "x"}
    changed["model"]["lora"] = {"r": 4}
    changed["train"].update(steps=1000, output_dir="elsewhere", seed=1)
    assert config_differences(saved, changed) == [
        "model.lora: None in the checkpoint, {'r': 4} now", "train.seed: 0 in the checkpoint, 1 now",
        "verifier.options: {} in the checkpoint, {'pattern': 'x'} now"]
    del saved["algo"]["loss"]["lam"]  # a key the checkpoint's (older) config did not have is not compared
    assert config_differences(saved, config_to_dict(Config())) == []


def test_log_keeps_each_step_once(run_copy, finished):
    log_path = run_copy / "run" / "metrics.jsonl"
    with open(log_path, "a") as f:
        f.write('{"step": 5, "loss": 0.')  # a record cut short by a kill
    trainer = build(run_copy)
    assert trainer.resume(ckpt(run_copy, 2)) == 2  # an older checkpoint than the newest
    assert [r["step"] for r in logged(trainer)] == [1, 2]
    trainer.train()  # rewrites steps 3 and 4, and their checkpoint
    assert [r["loss"] for r in logged(trainer)] == [r["loss"] for r in finished[1]]
    assert sorted(os.listdir(ckpt(run_copy))) == ["step_000002", "step_000004"]
    verify_checkpoint(ckpt(run_copy, 4))
    # a new run (no resume) in the same directory starts the log again instead of appending to it
    build(run_copy, steps=1).train()
    assert [r["step"] for r in logged(trainer)] == [1]
