"""Examples from reasoning-gym's task generators (seeded, offline): the question as the prompt, the
gold answer, and the task's worked solution (``answer_cot``, e.g. gsm_symbolic's) as the privileged
context, the paper's "verified trace". ``rlsd gym-data`` writes them as the trainer's JSONL rows.

Graded by the project's verifiers (``math`` for the numeric tasks); tests/trainer/test_gym_tasks.py
checks that they pay exactly where reasoning-gym's own scorers give full credit.
"""

from __future__ import annotations

from .data import Example

TASKS = ("basic_arithmetic", "chain_sum", "gsm_symbolic", "countdown")
"""The tasks this project has checked (others may work: any reasoning-gym task name is passed on)."""


def gym_examples(task: str, size: int, seed: int, **config) -> list:
    """``size`` examples of reasoning-gym's ``task`` (``config``: the task's own options), seeded."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
    out = []
    for i in range(size):
        entry = dataset[i]
        solution = entry["metadata"].get("answer_cot")
        out.append(Example(prompt=entry["question"], answer=entry["answer"], solution=solution or None,
                           meta={"source": f"reasoning_gym/{task}", "seed": seed, "index": i}))
    return out


def gym_score(task: str, size: int, seed: int, index: int, response: str, **config) -> float:
    """reasoning-gym's own score of ``response`` for example ``index`` of that dataset (its answer
    extracted as its scorer expects: the bare answer string)."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
    return float(dataset.score_answer(response, dataset[index]))
