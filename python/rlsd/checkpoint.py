"""Checkpoints: the model (a loadable Hugging Face directory), optimizer, sampler, RNG, step.

Layout: ``<output_dir>/checkpoints/step_<N>/model/`` (``save_pretrained``, plus the tokenizer) and
``trainer_state.pt`` (everything else, including the frozen teacher / reference copies when the
run has them). Loading one into a fresh trainer continues the run exactly.
"""

from __future__ import annotations

import glob
import os
import random

import numpy as np
import torch


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_weights(model, directory: str) -> None:
    """Load the ``*.safetensors`` of ``directory`` into ``model`` in place (a LoRA adapter if it is a PeftModel)."""
    from safetensors.torch import load_file
    state = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        state.update(load_file(path))
    if not state:
        raise FileNotFoundError(f"no safetensors weights in {directory}")
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model, state)
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    bad = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if bad or unexpected:
        raise RuntimeError(f"checkpoint does not fit the model: missing {bad[:5]}, unexpected {unexpected[:5]}")


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, "checkpoints", f"step_{step:06d}")


def latest_checkpoint(output_dir: str):
    found = sorted(glob.glob(os.path.join(output_dir, "checkpoints", "step_*")))
    return found[-1] if found else None


def save_checkpoint(path: str, *, model, tokenizer, optimizer, sampler, step: int, extra: dict) -> str:
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(os.path.join(path, "model"))
    tokenizer.save_pretrained(os.path.join(path, "model"))
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
                "rng": rng_state(), **extra}, os.path.join(path, "trainer_state.pt"))
    return path


def load_checkpoint(path: str, *, model, optimizer, sampler) -> dict:
    """Restore model, optimizer, sampler and RNG in place; returns the state (step and extras)."""
    load_weights(model, os.path.join(path, "model"))
    state = torch.load(os.path.join(path, "trainer_state.pt"), weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    return state
