"""Supervised warm start of the demo model, cached on disk.

Teacher-forced cross-entropy on worked solutions, ``-mean_t log p(y_t)`` over response tokens
(computed with the fused log-probs, never the logits). A share of the examples carries a
privileged prefix (the answer or the full trace) so that the model learns to USE such context:
without that the self-teacher would agree with the student everywhere and RLSD's credit would be
flat. Accuracy jumps rather than climbs, so training stops on a held-out accuracy threshold (and
a check that the prefix helps), not on a step count.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass

import torch

from rlsd_kernels import fused_linear_logprobs

from ..batch import response_hidden
from ..data import Example
from ..evaluate import evaluate
from ..model import lm_head
from ..rollout.hf import HFEngine
from ..verifiers import make_verifier
from .task import ALPHABET, ANSWER_PATTERN, TEMPLATES, make_problem
from .tiny import char_tokenizer, tiny_qwen3


@dataclass
class WarmupConfig:
    seed: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    prefix_frac: float = 0.3       # share of examples with a privileged prefix (half answer, half trace)
    min_accuracy: float = 0.3      # stop at the first evaluation reaching this greedy accuracy ...
    min_prefix_gain: float = 0.2   # ... if the answer prefix raises accuracy by at least this much
    eval_every: int = 50
    max_steps: int = 4000
    max_new_tokens: int = 32


def with_prefix(e: Example, source: str) -> Example:
    ref = e.answer if source == "answer" else e.solution
    return Example(TEMPLATES[source].format(reference=ref, prompt=e.prompt), e.answer, e.solution)


def cache_path(cache_dir: str, cfg: WarmupConfig, heldout: list) -> str:
    key = json.dumps({"cfg": asdict(cfg), "heldout": [e.prompt for e in heldout[:5]], "v": 2}, sort_keys=True)
    return os.path.join(cache_dir, "warmstart-" + hashlib.sha1(key.encode()).hexdigest()[:12])


def accuracy(engine, tok, examples: list, max_new_tokens: int) -> float:
    verifier = make_verifier("exact", pattern=ANSWER_PATTERN)
    return evaluate(engine, tok, examples, "{prompt}", verifier, max_new_tokens)["eval_accuracy"]


def warm_start(cache_dir: str, heldout: list, cfg: WarmupConfig = WarmupConfig(), log=print) -> tuple:
    """(model directory, info) of the warm-started model; trains and caches it on first use."""
    path = cache_path(cache_dir, cfg, heldout)
    info_file = os.path.join(path, "warmstart.json")
    if os.path.exists(info_file):
        with open(info_file) as f:
            return path, json.load(f)
    tok = char_tokenizer(ALPHABET)
    model = tiny_qwen3(len(tok), seed=cfg.seed)
    engine = HFEngine(model, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = random.Random(cfg.seed)
    excluded = {e.prompt for e in heldout}
    t0, acc = time.perf_counter(), {}
    for step in range(1, cfg.max_steps + 1):
        batch = []
        while len(batch) < cfg.batch_size:
            e = make_problem(rng)
            if e.prompt in excluded:
                continue
            if rng.random() < cfg.prefix_frac:
                e = with_prefix(e, "answer" if rng.random() < 0.5 else "solution")
            batch.append(e)
        contexts = [tok(e.prompt)["input_ids"] for e in batch]
        responses = [tok(e.solution)["input_ids"] + [tok.eos_token_id] for e in batch]
        hidden, targets, mask = response_hidden(model, contexts, responses, tok.pad_token_id)
        lp, _ = fused_linear_logprobs(hidden, lm_head(model)[0], targets)
        loss = -(lp * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0:
            acc = {"plain": accuracy(engine, tok, heldout, cfg.max_new_tokens)}
            log(f"warm start step {step}: loss {loss.item():.3f}  held-out greedy accuracy {acc['plain']:.3f}")
            if acc["plain"] >= cfg.min_accuracy:
                for source in ("answer", "solution"):
                    acc[source] = accuracy(engine, tok, [with_prefix(e, source) for e in heldout], cfg.max_new_tokens)
                log(f"  with the answer in context {acc['answer']:.3f}, with the trace {acc['solution']:.3f}")
                if acc["answer"] >= acc["plain"] + cfg.min_prefix_gain:
                    break
    info = {"step": step, "seconds": time.perf_counter() - t0, "accuracy": acc, "config": asdict(cfg)}
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    with open(info_file, "w") as f:
        json.dump(info, f, indent=1)
    return path, info
