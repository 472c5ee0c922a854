"""reasoning-gym's tasks as training rows (rlsd/gym_tasks.py): seeded examples with the worked
solution as privileged context, graded by the project's ``math`` verifier exactly where
reasoning-gym's own scorer gives full credit."""

import pytest

pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed")
from rlsd.data import Example, load_examples, write_jsonl  # noqa: E402
from rlsd.gym_tasks import gym_examples, gym_score  # noqa: E402
from rlsd.verifiers import make_verifier  # noqa: E402

SIZE, SEED = 12, 7


def candidates(answer: str) -> list:
    """Answers a policy might give: the gold one, near misses, and a trailing-zero spelling."""
    from decimal import Decimal
    n = Decimal(answer)
    return [answer, str(n + 1), str(-n) if n else "1", f"{answer}0", f"{n * 10}"]


@pytest.mark.parametrize("task", ["basic_arithmetic", "chain_sum", "gsm_symbolic"])
def test_math_verifier_pays_where_reasoning_gym_gives_full_credit(task):
    verifier = make_verifier("math")
    examples = gym_examples(task, SIZE, SEED)
    assert len({e.prompt for e in examples}) == SIZE
    pairs, theirs = [], []
    for i, example in enumerate(examples):
        for answer in candidates(str(example.answer)):
            pairs.append((f"Working... so the answer is \\boxed{{{answer}}}", example))
            theirs.append(gym_score(task, SIZE, SEED, i, answer) == 1.0)
    ours = [v.reward == 1.0 for v in verifier.batch(pairs)]
    differ = [pairs[k][0] for k in range(len(pairs)) if ours[k] != theirs[k]]
    if task == "gsm_symbolic":
        # reasoning-gym 0.1.25's gsm_symbolic scorer gives full credit to the negated answer (-57 for
        # 57); the math verifier does not: those are the only disagreements, and all in that direction
        negated = [f"\\boxed{{-{e.answer}}}" for e in examples if str(e.answer) != "0"]
        assert differ and all(any(n in d for n in negated) for d in differ)
        assert not any(o and not t for o, t in zip(ours, theirs))
    else:
        assert not differ
    assert sum(ours) >= SIZE  # the gold answer, at least


def test_rows_round_trip_and_carry_the_worked_solution(tmp_path):
    examples = gym_examples("gsm_symbolic", SIZE, SEED)
    assert all(e.solution and str(e.answer) in e.solution for e in examples)  # the trace ends at the answer
    write_jsonl(str(tmp_path / "train.jsonl"), [e.to_row() for e in examples])
    again = load_examples(str(tmp_path / "train.jsonl"), check=make_verifier("math").check_row)
    assert [(e.prompt, e.answer, e.solution) for e in again] == [(e.prompt, e.answer, e.solution) for e in examples]
    assert isinstance(again[0], Example) and again[0].meta["source"] == "reasoning_gym/gsm_symbolic"
    assert gym_examples("gsm_symbolic", SIZE, SEED)[3].prompt == examples[3].prompt  # seeded
    assert gym_examples("gsm_symbolic", SIZE, SEED + 1)[3].prompt != examples[3].prompt
