"""Small shared builders for the trainer tests: a tiny model on the demo's arithmetic task."""

import pytest
import torch

from rlsd.config import config_from_dict
from rlsd.demo.task import ALPHABET, TEMPLATES, make_split
from rlsd.demo.tiny import char_tokenizer, tiny_qwen3
from rlsd.verifiers.sandbox import SandboxUnavailable, check_bwrap

# Random-model outputs are arbitrary characters: reward "the last digit is 7" gives mixed groups.
LAST_DIGIT = {"name": "exact", "options": {"pattern": r"(\d)\D*$"}}


def tiny_setup(seed=0):
    tok = char_tokenizer(ALPHABET)
    model = tiny_qwen3(len(tok), hidden=64, layers=1, heads=1, head_dim=64, ffn=128, seed=seed)
    return model, tok


def examples(n=16, seed=0, answer=None):
    exs = make_split(n, seed)
    if answer is not None:
        for e in exs:
            e.answer = answer
    return exs


def make_config(tmp_path, **sections):
    base = {
        "data": {"prompt_template": "{prompt}"},
        "verifier": LAST_DIGIT,
        "rollout": {"engine": "hf", "n": 4, "max_new_tokens": 10, "temperature": 1.0},
        "teacher": {"sync": "live", "source": "solution", "template": TEMPLATES["solution"]},
        "algo": {"name": "rlsd", "dynamic_sampling": False},
        "train": {"steps": 2, "prompts_per_step": 4, "micro_batch_size": 8, "lr": 1e-3, "seed": 0,
                  "output_dir": str(tmp_path / "run"), "progress": False, "impl": "auto"},
    }
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return config_from_dict(base)


def params_copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_change(before, model):
    return max((model.state_dict()[k] - v).abs().max().item() for k, v in before.items())


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


torch.set_num_threads(1)


def _bwrap_missing():
    try:
        check_bwrap()
    except SandboxUnavailable as exc:
        return str(exc)
    return ""


needs_bwrap = pytest.mark.skipif(bool(_bwrap_missing()), reason=f"code verifier sandbox: {_bwrap_missing()}")
