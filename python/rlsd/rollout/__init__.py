"""Rollout engines behind one small interface.

``engine.generate(prompts, n, max_new_tokens, temperature, seed)`` takes token-id lists and returns,
per prompt, ``n`` :class:`Rollout` s whose ``logprobs`` are the sampling log-probs *after*
temperature, ``log softmax(z / tau)[y_t]``: the same quantity the trainer's loss computes, so they
serve as ``old_logprobs``. Temperature 0 is greedy. ``engine.sync(model)`` pushes the trainer's
current weights to the engine after an optimizer step; ``engine.close()`` releases it (before the
process group is destroyed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Rollout:
    prompt_ids: list
    response_ids: list       # ends with EOS when ``finished``
    logprobs: list           # one per response token
    text: str                # decoded response without special tokens
    finished: bool


def make_engine(cfg, model, tokenizer):
    """The engine named by ``cfg.engine`` (a :class:`rlsd.config.RolloutConfig`)."""
    if cfg.engine == "hf":
        from .hf import HFEngine
        return HFEngine(model, tokenizer)
    if cfg.engine == "vllm":
        from .vllm import VLLMEngine
        return VLLMEngine(model, tokenizer, max_new_tokens=cfg.max_new_tokens, **cfg.vllm_options)
    raise ValueError(f"unknown rollout engine {cfg.engine!r}")
