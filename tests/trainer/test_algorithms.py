"""The algorithm table: the config accepts its names, each row's loss terms, coefficients, teacher
and dynamic-sampling default reach the step."""

import re

import pytest
import torch

import rlsd.objectives
from rlsd.algorithms import ALGORITHMS, Algorithm
from rlsd.config import ConfigError, config_from_dict
from rlsd.objectives import algorithm_loss
from rlsd.teacher import TeacherInputs

RLSD_LOSS, OPSD_LOSS = 1.0, 10.0


@pytest.fixture
def calls(monkeypatch):
    """The kernel calls of algorithm_loss, each (name, keywords); rlsd_loss returns 1, opsd_loss 10."""
    seen = []
    monkeypatch.setattr(rlsd.objectives, "rlsd_loss",
                        lambda *a, **kw: seen.append(("rlsd", kw)) or (torch.tensor(RLSD_LOSS), {}))
    monkeypatch.setattr(rlsd.objectives, "opsd_loss",
                        lambda *a, **kw: seen.append(("opsd", kw)) or (torch.tensor(OPSD_LOSS), {}))
    return seen


# name -> (loss, the lam rlsd_loss gets (None: not called), whether it reads the teacher)
EXPECTED = {"grpo": (RLSD_LOSS, 0.0, False), "rlsd": (RLSD_LOSS, 0.3, True), "opsd": (OPSD_LOSS, None, False),
            "grpo+opsd": (RLSD_LOSS + 0.5 * OPSD_LOSS, 0.0, False)}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_each_row_calls_its_losses_with_its_coefficients(calls, name):
    algo = config_from_dict({"algo": {"name": name, "opsd_coef": 0.5}}).algo
    teacher = TeacherInputs(logprobs=torch.zeros(2, 3))
    loss, _ = algorithm_loss(algo, 0.3, None, None, None, None, advantages=None, teacher=teacher)
    want_loss, want_lam, reads_teacher = EXPECTED[name]
    assert float(loss) == want_loss
    rl = [kw for kind, kw in calls if kind == "rlsd"]
    assert [kw["options"].lam for kw in rl] == ([] if want_lam is None else [want_lam])
    assert all((kw["teacher_logprobs"] is teacher.logprobs) == reads_teacher for kw in rl)
    assert all(kw["teacher_hidden"] is None for _, kw in calls)
    assert all(kw["teacher_logprobs"] is teacher.logprobs for kind, kw in calls if kind == "opsd")
    assert ALGORITHMS[name].needs_teacher == (reads_teacher or any(kind == "opsd" for kind, _ in calls))


def test_config_names_come_from_the_table():
    for name in ALGORITHMS:
        assert config_from_dict({"algo": {"name": name}}).algo.algorithm is ALGORITHMS[name]
    with pytest.raises(ConfigError, match=re.escape(f"algo.name must be one of {list(ALGORITHMS)}")):
        config_from_dict({"algo": {"name": "ppo"}})


def test_dynamic_sampling_defaults_to_the_algorithm_and_an_explicit_value_wins():
    def sampled(**algo):
        return config_from_dict({"algo": algo}).algo.samples_dynamically
    assert [sampled(name=n) for n in ALGORITHMS] == [ALGORITHMS[n].dynamic_sampling for n in ALGORITHMS]
    assert sampled(name="opsd") is False and sampled(name="rlsd") is True
    assert sampled(name="opsd", dynamic_sampling=True) is True and sampled(name="grpo", dynamic_sampling=False) is False


def test_teacher_inputs_are_one_of_hidden_or_logprobs():
    with pytest.raises(ValueError, match="hidden states or its log-probs, not both"):
        TeacherInputs(hidden=torch.zeros(1, 2, 4), logprobs=torch.zeros(1, 2))


def test_a_row_that_cannot_run_is_refused():
    with pytest.raises(ValueError, match="credit needs a reward term"):
        Algorithm("x", reward=False, credit=True, distill=True, scaled_distill=False, dynamic_sampling=True)
