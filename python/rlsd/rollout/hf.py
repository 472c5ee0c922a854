"""Rollouts with Hugging Face ``generate`` on the training model itself (weights always in sync).

The sampled tokens' log-probs are gathered step by step (:class:`TokenLogprobs`): only one [B, V]
row of scores is alive at a time, never the [B, T, V] of ``output_scores``.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from . import Rollout


class TokenLogprobs(LogitsProcessor):
    """Records ``log softmax(z / tau)[y_t]`` of each sampled token, the quantity of the trainer's loss.
    Called before sampling step t with the tokens up to t - 1: it gathers the previous step's row."""

    def __init__(self, temperature: float):
        self.temperature, self.prev, self.rows = temperature, None, []

    def __call__(self, input_ids, scores):
        if self.prev is not None:
            self.rows.append(self.prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        z = scores / self.temperature if self.temperature > 0 else scores
        self.prev = torch.log_softmax(z.float(), -1)
        return scores

    def finish(self, new_tokens) -> torch.Tensor:
        """[B, T] log-probs of ``new_tokens`` [B, T] (the generated part of the sequences)."""
        if self.prev is not None and new_tokens.shape[1] > len(self.rows):
            self.rows.append(self.prev.gather(-1, new_tokens[:, len(self.rows)].unsqueeze(-1)).squeeze(-1))
        self.prev = None
        return torch.stack(self.rows, 1) if self.rows else torch.zeros(new_tokens.shape[0], 0)


class HFEngine:
    def __init__(self, model, tokenizer, chunk_size: int = 256):
        self.model, self.tokenizer, self.chunk_size = model, tokenizer, chunk_size
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def sync(self, model) -> None:
        """Nothing to push: generation runs on the trainer's own module."""

    def close(self) -> None:
        """Nothing to release."""

    @torch.no_grad()
    def generate(self, prompts: list, n: int, max_new_tokens: int, temperature: float = 1.0,
                 seed=None) -> list:
        if seed is not None:
            torch.manual_seed(seed)
        flat = [p for p in prompts for _ in range(n)]
        out = []
        for start in range(0, len(flat), self.chunk_size):
            out += self._generate(flat[start:start + self.chunk_size], max_new_tokens, temperature)
        return [out[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _generate(self, prompts: list, max_new_tokens: int, temperature: float) -> list:
        device = next(self.model.parameters()).device
        P = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), P), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, P - len(p):] = torch.tensor(p)
            attn[i, P - len(p):] = 1
        sample = temperature > 0
        record = TokenLogprobs(temperature if sample else 0.0)
        was_training = self.model.training
        self.model.eval()
        try:
            sequences = self.model.generate(
                input_ids=ids.to(device), attention_mask=attn.to(device), max_new_tokens=max_new_tokens,
                do_sample=sample, temperature=temperature if sample else None, top_k=0, top_p=1.0,
                eos_token_id=self.eos_id, pad_token_id=self.pad_id, use_cache=True, logits_processor=[record])
        finally:
            self.model.train(was_training)
        new = sequences[:, P:]
        tok_lp = record.finish(new).cpu()
        new = new.cpu()
        rollouts = []
        for i, p in enumerate(prompts):
            row = new[i].tolist()
            finished = self.eos_id in row
            m = row.index(self.eos_id) + 1 if finished else len(row)
            resp = row[:m]
            rollouts.append(Rollout(list(p), resp, tok_lp[i, :m].tolist(),
                                    self.tokenizer.decode(resp, skip_special_tokens=True), finished))
        return rollouts
