"""The vLLM rollout engine for real (skipped when vllm is not installed)."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

pytest.importorskip("vllm")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

from trainer_helpers import examples, tiny_setup  # noqa: E402
from rlsd.batch import pad_values, response_hidden  # noqa: E402
from rlsd.data import write_jsonl  # noqa: E402
from rlsd.model import lm_head  # noqa: E402
from rlsd.rollout.vllm import VLLMEngine  # noqa: E402
from rlsd_kernels import fused_linear_logprobs  # noqa: E402

PROMPTS = ["12+34+56=", "71+22+13=", "45+45+10="]


@pytest.fixture(scope="module")
def setup():
    model, tok = tiny_setup()
    engine = VLLMEngine(model, tok, max_new_tokens=12)
    yield model, tok, engine
    engine.close()  # while its process groups exist (a later in-process `rlsd train` destroys them)


def trainer_logprobs(model, groups, temperature):
    flat = [r for g in groups for r in g]
    with torch.no_grad():
        h, targets, mask = response_hidden(model, [r.prompt_ids for r in flat], [r.response_ids for r in flat], 0)
        lp, _ = fused_linear_logprobs(h, lm_head(model)[0], targets, temperature=temperature)
    return lp * mask, pad_values([r.logprobs for r in flat], targets.shape[1]) * mask


def test_generation_and_logprobs_match_trainer(setup):
    model, tok, engine = setup
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    groups = engine.generate(prompts, 4, 12, temperature=0.7, seed=3)
    assert [len(g) for g in groups] == [4, 4, 4]
    for g in groups:
        for r in g:
            assert 0 < len(r.response_ids) == len(r.logprobs) <= 12
            assert r.finished == (r.response_ids[-1] == tok.eos_token_id)
    again = engine.generate(prompts, 4, 12, temperature=0.7, seed=3)
    assert [r.response_ids for r in again[0]] == [r.response_ids for r in groups[0]]
    ours, theirs = trainer_logprobs(model, groups, 0.7)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_weight_sync(setup):
    model, tok, engine = setup
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stale = engine.generate(prompts, 2, 12, temperature=1.0, seed=1)
    ours, theirs = trainer_logprobs(model, stale, 1.0)
    assert (ours - theirs).abs().max() > 1e-3  # the engine still has the old weights
    engine.sync(model)
    fresh = engine.generate(prompts, 2, 12, temperature=1.0, seed=1)
    ours, theirs = trainer_logprobs(model, fresh, 1.0)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_train_run_exits_without_traceback(tmp_path):
    """A successful ``rlsd train`` on the vLLM engine ends quietly: the engine is shut down while the
    process groups it made still exist (else vLLM's exit finaliser prints a ``[rank0]`` traceback)."""
    model, tok = tiny_setup()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    write_jsonl(str(tmp_path / "train.jsonl"), [e.to_row() for e in examples(4, answer="7")])
    cfg = {"model": {"path": str(tmp_path / "model")}, "data": {"train": str(tmp_path / "train.jsonl")},
           "verifier": {"name": "exact", "options": {"pattern": r"(\d)\D*$"}},
           "rollout": {"engine": "vllm", "n": 2, "max_new_tokens": 4},
           "teacher": {"source": "answer", "template": "ans {reference}|{prompt}", "sync": "frozen"},
           "algo": {"name": "grpo+opsd"},
           "train": {"steps": 1, "prompts_per_step": 2, "output_dir": str(tmp_path / "run"), "progress": False,
                     "threads": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = subprocess.run([sys.executable, "-m", "rlsd", "train", str(tmp_path / "c.yaml")], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.jsonl").exists()
