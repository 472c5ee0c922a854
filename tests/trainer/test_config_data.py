import pytest
import torch

from rlsd.advantages import group_advantages, lam_at
from rlsd.config import ConfigError, LoraConfig, load_config
from rlsd.data import CurriculumSampler, DataError, Example, informative_groups, load_examples, write_jsonl


def test_yaml_config_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  name: grpo\n  loss: {lam: 0.5}\nmodel:\n  lora:\n    r: 4\ntrain:\n  lr: 1.0e-5\n")
    cfg = load_config(str(path), ["train.steps=7", "algo.loss_agg=seq-mean-token-mean"])
    assert cfg.algo.name == "grpo" and cfg.algo.loss.lam == 0.5 and cfg.train.lr == 1e-5
    assert cfg.train.steps == 7 and cfg.algo.loss_agg == "seq-mean-token-mean"
    assert isinstance(cfg.model.lora, LoraConfig) and cfg.model.lora.r == 4
    with pytest.raises(ConfigError, match="algo.lamda"):
        load_config(str(path), ["algo.lamda=1"])
    with pytest.raises(ConfigError, match="algo.name"):
        load_config(str(path), ["algo.name=ppo"])


ROWS = [{"prompt": f"q{i}", "answer": str(i), "difficulty": i % 2, "tests": "assert True"} for i in range(6)]


def test_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    write_jsonl(str(tmp_path / "d.jsonl"), ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), str(tmp_path / "d.parquet"))
    for name in ("d.jsonl", "d.parquet"):
        exs = load_examples(str(tmp_path / name))
        assert [e.prompt for e in exs] == [r["prompt"] for r in ROWS]
        assert exs[3].difficulty == 1 and exs[3].meta == {"tests": "assert True"}
    with pytest.raises(DataError, match="no 'answer'"):
        Example.from_row({"prompt": "no answer"})


def test_sampler_epochs_and_state():
    exs = [Example.from_row(r) for r in ROWS]
    s = CurriculumSampler(exs, seed=3)
    first = [i for i, _ in s.sample(6)]
    assert sorted(first) == list(range(6))  # one epoch visits each example once
    state = s.state_dict()
    nxt = [i for i, _ in s.sample(5)]
    s2 = CurriculumSampler(exs, seed=99)
    s2.load_state_dict(state)
    assert [i for i, _ in s2.sample(5)] == nxt


def test_curriculum_moves_to_harder_level():
    exs = [Example.from_row(r) for r in ROWS]
    s = CurriculumSampler(exs, seed=0, curriculum=True, threshold=0.5, window=4)
    assert all(e.difficulty == 0 for _, e in s.sample(5))
    assert not s.update([0, 1, 0, 0])
    assert s.update([1, 1, 1, 1])
    assert all(e.difficulty == 1 for _, e in s.sample(5))


def test_dynamic_sampling_and_advantages():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert informative_groups(r).tolist() == [False, True, False]
    a = group_advantages(r, "grpo")
    assert torch.allclose(a[1], (r[1] - r[1].mean()) / (r[1].std() + 1e-6)) and a[0].abs().sum() == 0
    assert torch.allclose(group_advantages(r, "drgrpo")[1], torch.tensor([-1 / 3, 2 / 3, -1 / 3]))


def test_lam_schedule():
    assert lam_at(10, 1.0) == 1.0
    assert lam_at(0, 0.5, "linear", 0.0, 50) == 0.5
    assert lam_at(25, 0.5, "linear", 0.0, 50) == pytest.approx(0.25)
    assert lam_at(80, 0.5, "linear", 0.0, 50) == 0.0
