"""Checkpoints: the model (a loadable Hugging Face directory), optimizer, sampler, RNG, step.

Layout: ``<output_dir>/checkpoints/step_<N>/model/`` (``save_pretrained``, plus the tokenizer),
``trainer_state.pt`` (everything else, including the frozen teacher / reference copies when the
run has them) and ``manifest.json`` (step, config, size and sha256 of every file). A checkpoint is
written into ``step_<N>.tmp``, fsynced, completed by its manifest and renamed into place, so a run
killed mid-write leaves no ``step_<N>`` that looks complete. Loading one into a fresh trainer
continues the run exactly.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
import shutil

import numpy as np
import torch

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"step_(\d+)$")
# Config keys that may differ between a checkpoint and the run resuming it: they change how the run
# is executed, logged or evaluated, not what it trains (micro-batching sums to the same gradient).
RESUMABLE_CHANGES = ("train.steps", "train.output_dir", "train.eval_every", "train.eval_size",
                     "train.checkpoint_every", "train.progress", "train.tensorboard", "train.threads",
                     "train.device", "train.impl", "train.micro_batch_size", "train.micro_batch_tokens",
                     "rollout.engine", "rollout.vllm_options", "data.eval")


class CheckpointError(ValueError):
    """A directory that is not a complete, intact checkpoint of this run; the message names it."""


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


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_checkpoint(path: str, hashes: bool = True) -> dict:
    """The manifest of the checkpoint ``path`` after checking that every file it lists is there with
    its size (and sha256 when ``hashes``); :class:`CheckpointError` saying what is wrong otherwise."""
    if not os.path.isdir(path):
        raise CheckpointError(f"not a checkpoint: {path} is not a directory")
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
        files, step = manifest["files"], int(manifest["step"])
    except FileNotFoundError:
        raise CheckpointError(f"not a checkpoint: {path} has no {MANIFEST} (an interrupted write, or not a "
                              "checkpoint directory; checkpoints are OUTPUT_DIR/checkpoints/step_N)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} ({exc!r})") from None
    for rel, want in files.items():
        full = os.path.join(path, rel)
        if not os.path.isfile(full):
            raise CheckpointError(f"{path}: {rel} is missing")
        size = os.path.getsize(full)
        if size != want["size"]:
            raise CheckpointError(f"{path}: {rel} has {size} bytes, the manifest says {want['size']} (truncated)")
        if hashes and _sha256(full) != want["sha256"]:
            raise CheckpointError(f"{path}: {rel} does not match its sha256 in the manifest (corrupt)")
    return {**manifest, "step": step}


def latest_checkpoint(output_dir: str):
    """The complete checkpoint of ``output_dir`` with the highest step (None if there is none);
    interrupted writes, and checkpoints with a missing or truncated file, are passed over."""
    found = []
    for path in glob.glob(os.path.join(output_dir, "checkpoints", "step_*")):
        match = _STEP_DIR.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    for _, path in sorted(found, reverse=True):
        try:
            verify_checkpoint(path, hashes=False)
        except CheckpointError:
            continue
        return path
    return None


def save_checkpoint(path: str, *, model, tokenizer, optimizer, sampler, step: int, extra: dict) -> str:
    """Write the checkpoint into ``path + '.tmp'``, fsync it, add the manifest last, then rename it to
    ``path`` (replacing an older checkpoint of the same step). ``extra['config']`` goes in the manifest."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    for stale in glob.glob(os.path.join(parent, "step_*.tmp")) + glob.glob(os.path.join(parent, "step_*.old")):
        shutil.rmtree(stale)  # left by a write that was killed
    tmp = path + ".tmp"
    os.makedirs(tmp)
    model.save_pretrained(os.path.join(tmp, "model"))
    tokenizer.save_pretrained(os.path.join(tmp, "model"))
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
                "rng": rng_state(), **extra}, os.path.join(tmp, "trainer_state.pt"))
    files = {}
    for root, _, names in os.walk(tmp):
        for name in sorted(names):
            full = os.path.join(root, name)
            _fsync(full)
            files[os.path.relpath(full, tmp)] = {"size": os.path.getsize(full), "sha256": _sha256(full)}
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump({"step": step, "config": extra.get("config"), "files": files}, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    for root, dirs, _ in os.walk(tmp):
        for name in dirs:
            _fsync(os.path.join(root, name))
    _fsync(tmp)
    if os.path.exists(path):
        os.rename(path, path + ".old")
    os.rename(tmp, path)
    _fsync(parent)
    shutil.rmtree(path + ".old", ignore_errors=True)
    return path


_WHOLE = ("model.lora", "verifier.options", "rollout.vllm_options")  # mappings compared as one value


def _leaves(cfg: dict, where: str = "") -> dict:
    """``section.key -> value`` of a config dict, ``algo.loss.lam -> value`` in nested sections
    (option mappings and LoRA settings stay whole)."""
    out = {}
    for key, value in json.loads(json.dumps(cfg or {}, default=str)).items():
        name = f"{where}.{key}" if where else key
        if isinstance(value, dict) and name not in _WHOLE:
            out.update(_leaves(value, name))
        elif where:  # a top-level section of null has no keys
            out[name] = value
    return out


def config_differences(saved: dict, current: dict) -> list:
    """``key: saved, current`` for each config key whose change would make a resume inexact
    (keys the saved config does not have, from an older version, are not compared)."""
    old, new = _leaves(saved), _leaves(current)
    return [f"{key}: {old[key]!r} in the checkpoint, {new.get(key)!r} now" for key in sorted(old)
            if old[key] != new.get(key) and key not in RESUMABLE_CHANGES]


def load_checkpoint(path: str, *, model, optimizer, sampler, config: dict = None) -> dict:
    """Check ``path`` (manifest, sizes, hashes and, given the run's ``config``, that it was written by
    the same config) before restoring model, optimizer, sampler and RNG in place; returns the state."""
    manifest = verify_checkpoint(path)
    if config is not None and manifest.get("config") is not None:
        diff = config_differences(manifest["config"], config)
        if diff:
            raise CheckpointError(f"{path} was written by a different config: {'; '.join(diff)} "
                                  f"(only {', '.join(RESUMABLE_CHANGES)} may change on resume)")
    state = torch.load(os.path.join(path, "trainer_state.pt"), weights_only=False)
    try:
        sampler.load_state_dict(state["sampler"])  # checks that it fits this training set first
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    load_weights(model, os.path.join(path, "model"))
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return state
