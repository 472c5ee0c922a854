"""The authors' lam schedule, negative-only and thought-only credit: from the YAML config to the loss."""

import pytest
import torch

import rlsd.objectives
from trainer_helpers import examples, make_config, tiny_setup
from rlsd.advantages import lam_at
from rlsd.config import ConfigError, config_from_dict
from rlsd.loop import Sample, Trainer
from rlsd.objectives import thought_length


def test_warmup_decay_schedule_values():
    # the authors' example: lam 0.5, no warmup, decay over 60 steps (their step count starts at 1)
    assert lam_at(0, 0.5, "warmup-decay", decay_steps=60) == pytest.approx(0.5 * 59 / 60)
    assert lam_at(29, 0.5, "warmup-decay", decay_steps=60) == pytest.approx(0.25)
    assert lam_at(59, 0.5, "warmup-decay", decay_steps=60) == 0.0
    assert lam_at(100, 0.5, "warmup-decay", decay_steps=60) == 0.0
    # warmup 10 then decay 20
    ramp = [lam_at(s, 0.5, "warmup-decay", decay_steps=20, warmup_steps=10) for s in (0, 4, 8, 9, 19, 29, 40)]
    assert ramp == pytest.approx([0.05, 0.25, 0.45, 0.5, 0.25, 0.0, 0.0])
    # no decay: constant after the warmup
    assert [lam_at(s, 0.5, "warmup-decay", decay_steps=0, warmup_steps=4) for s in (0, 3, 50)] == \
        pytest.approx([0.125, 0.5, 0.5])
    assert lam_at(7, 0.5, "warmup-decay", decay_steps=0) == 0.5


ALGO = {"name": "rlsd", "lam": 0.5, "lam_schedule": "warmup-decay", "lam_warmup_steps": 5, "lam_decay_steps": 0,
        "negative_only": True, "credit_span": "thought", "answer_marker": "#"}


def test_config_accepts_the_authors_options():
    a = config_from_dict({"algo": ALGO}).algo
    assert (a.lam_schedule, a.lam_warmup_steps, a.lam_decay_steps, a.negative_only, a.credit_span,
            a.answer_marker) == ("warmup-decay", 5, 0, True, "thought", "#")
    assert config_from_dict({}).algo.negative_only is False and config_from_dict({}).algo.credit_span == "all"


@pytest.mark.parametrize("change,expected", [
    ({"lam_warmup_steps": -1}, "algo.lam_warmup_steps must be >= 0"),
    ({"lam_decay_steps": -1}, "algo.lam_decay_steps must be >= 0"),
    ({"lam_schedule": "linear", "lam_decay_steps": 0}, "algo.lam_decay_steps must be >= 1"),
    ({"lam_schedule": "warmup"}, "algo.lam_schedule must be one of"),
    ({"credit_span": "answer"}, "algo.credit_span must be one of"),
    ({"answer_marker": ""}, "algo.credit_span 'thought' needs algo.answer_marker"),
    ({"negative_only": "yes"}, "algo.negative_only: expected true or false"),
    ({"lam_warmup_steps": 2.5}, "algo.lam_warmup_steps: expected an integer"),
])
def test_config_refuses_bad_values(change, expected):
    with pytest.raises(ConfigError, match=expected):
        config_from_dict({"algo": {**ALGO, **change}})


def test_thought_length_stops_at_the_last_marker():
    assert thought_length([5, 6, 9, 7, 9, 8], [9]) == 4
    assert thought_length([5, 9, 3, 6, 9, 3, 1], [9, 3]) == 4
    assert thought_length([5, 6, 7], [9]) == 3
    assert thought_length([9, 1], [9]) == 0


def test_options_reach_the_loss(tmp_path, monkeypatch):
    """The loss gets negative_only, the thought mask (1 before the marker) and the scheduled lam."""
    seen = []
    real = rlsd.objectives.rlsd_loss
    monkeypatch.setattr(rlsd.objectives, "rlsd_loss", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    model, tok = tiny_setup()
    cfg = make_config(tmp_path, algo=ALGO, train={"steps": 1})
    trainer = Trainer(cfg, model, tok, examples(answer="7"), [])
    marker = tok("#", add_special_tokens=False)["input_ids"]
    assert trainer.answer_marker == marker
    prompt = tok("12+34=")["input_ids"]
    responses = [tok(text)["input_ids"] for text in ("46;#46", "4;#5", "46#4")]
    samples = [Sample(prompt, prompt, r, [-1.0] * len(r), a, 0, thought_length(r, marker))
               for r, a in zip(responses, (1.0, -1.0, -1.0))]
    trainer.step = 2
    trainer.accumulate_gradients(samples)
    kw = seen[-1]
    assert kw["options"].negative_only is True and kw["options"].lam == pytest.approx(0.5 * 3 / 5)
    assert kw["credit_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    # and the trainer fills the thought length of each rollout sample the same way
    monkeypatch.setattr(Trainer, "update", lambda self, s: seen.append(s) or (0.0, {}))
    trainer.train_step()
    assert seen[-1] and all(s.thought == thought_length(s.response, marker) for s in seen[-1])


def test_all_span_passes_no_mask(tmp_path, monkeypatch):
    seen = []
    real = rlsd.objectives.rlsd_loss
    monkeypatch.setattr(rlsd.objectives, "rlsd_loss", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    model, tok = tiny_setup()
    trainer = Trainer(make_config(tmp_path, algo={"name": "rlsd"}, train={"steps": 1}), model, tok,
                      examples(answer="7"), [])
    trainer.train()
    assert seen and all(kw["credit_mask"] is None and kw["options"].negative_only is False for kw in seen)
