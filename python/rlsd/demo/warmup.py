"""Supervised warm start of the demo model, cached on disk.

Teacher-forced cross-entropy on worked solutions, ``-mean_t log p(y_t)`` over response tokens
(computed with the fused log-probs, never the logits). A share of the examples carries a
privileged prefix (the answer or the full trace) so that the model learns to USE such context:
without that the self-teacher would agree with the student everywhere and RLSD's credit would be
flat.

The same model on any machine of this kind: a fixed number of steps (accuracy jumps rather than
climbs, so a stop on an accuracy threshold moves by tens of points with the rounding), one thread
and deterministic algorithms whatever the calling process set, and a fingerprint (sha256 of the
weights) to compare. The held-out accuracy is recorded every ``eval_every`` steps.
"""

from __future__ import annotations

import contextlib
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


STEPS = 1200


@dataclass
class WarmupConfig:
    seed: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    prefix_frac: float = 0.3       # share of examples with a privileged prefix (half answer, half trace)
    steps: int = STEPS
    eval_every: int = 100          # held-out accuracy recorded along the way (training does not read it)
    max_new_tokens: int = 32       # response_tokens(terms)
    terms: int = 3                 # numbers per sum


def with_prefix(e: Example, source: str) -> Example:
    ref = e.answer if source == "answer" else e.solution
    return Example(TEMPLATES[source].format(reference=ref, prompt=e.prompt), e.answer, e.solution)


def cache_path(cache_dir: str, cfg: WarmupConfig, heldout: list) -> str:
    key = json.dumps({"cfg": asdict(cfg), "heldout": [e.prompt for e in heldout[:5]], "v": 3}, sort_keys=True)
    return os.path.join(cache_dir, "warmstart-" + hashlib.sha1(key.encode()).hexdigest()[:12])


def accuracy(engine, tok, examples: list, max_new_tokens: int) -> float:
    verifier = make_verifier("exact", pattern=ANSWER_PATTERN)
    return evaluate(engine, tok, examples, "{prompt}", verifier, max_new_tokens)["eval_accuracy"]


@contextlib.contextmanager
def deterministic():
    """One intra-op thread and deterministic algorithms inside; the caller's settings after."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(strict)


def fingerprint(model) -> str:
    """sha256 of the weights (names, shapes and bytes in order): equal iff the models are bitwise equal."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode() + str(tuple(value.shape)).encode() + value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def warm_start(cache_dir: str, heldout: list, cfg: WarmupConfig = WarmupConfig(), log=print) -> tuple:
    """(model directory, info) of the warm-started model; trains and caches it on first use."""
    path = cache_path(cache_dir, cfg, heldout)
    info_file = os.path.join(path, "warmstart.json")
    if os.path.exists(info_file):
        with open(info_file) as f:
            return path, json.load(f)
    with deterministic():
        model, tok, info = train_warm_start(heldout, cfg, log)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    with open(info_file, "w") as f:
        json.dump(info, f, indent=1)
    return path, info


def train_warm_start(heldout: list, cfg: WarmupConfig, log=print, on_eval=None) -> tuple:
    """(model, tokenizer, info) after ``cfg.steps`` supervised steps; ``on_eval(step, model, tok,
    accuracy)`` after each held-out evaluation along the way stops the run early if it returns true."""
    tok = char_tokenizer(ALPHABET)
    model = tiny_qwen3(len(tok), seed=cfg.seed)
    engine = HFEngine(model, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = random.Random(cfg.seed)
    excluded = {e.prompt for e in heldout}
    t0, curve = time.perf_counter(), {}
    for step in range(1, cfg.steps + 1):
        batch = []
        while len(batch) < cfg.batch_size:
            e = make_problem(rng, cfg.terms)
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
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            curve[step] = accuracy(engine, tok, heldout, cfg.max_new_tokens)
            log(f"warm start step {step}: loss {loss.item():.3f}  held-out greedy accuracy {curve[step]:.3f}")
            if on_eval is not None and on_eval(step, model, tok, curve[step]):
                break
    acc = {source: accuracy(engine, tok, heldout if source == "plain" else [with_prefix(e, source) for e in heldout],
                            cfg.max_new_tokens) for source in ("plain", "answer", "solution")}
    curve[step] = acc["plain"]
    info = {"step": step, "seconds": time.perf_counter() - t0, "accuracy": acc,
            "curve": {str(step): a for step, a in curve.items()},  # as the cached JSON reads back
            "fingerprint": fingerprint(model), "config": asdict(cfg)}
    return model, tok, info
