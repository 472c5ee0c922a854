"""Held-out accuracy: generate one response per problem and verify it."""

from __future__ import annotations


def evaluate(engine, tokenizer, examples: list, prompt_template: str, verifier, max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0, batch_size: int = 256) -> dict:
    """``eval_accuracy`` (fraction with reward 1) and ``eval_reward`` (mean); greedy at temperature 0."""
    rewards = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompts = [tokenizer(prompt_template.format(prompt=e.prompt))["input_ids"] for e in chunk]
        groups = engine.generate(prompts, 1, max_new_tokens, temperature, seed=seed + start)
        rewards += [v.reward for v in verifier.batch([(g[0].text, e) for g, e in zip(groups, chunk)])]
    n = max(len(rewards), 1)
    return {"eval_accuracy": sum(r >= 1.0 for r in rewards) / n, "eval_reward": sum(rewards) / n}
