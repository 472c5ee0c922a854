import json

import yaml

from trainer_helpers import examples, tiny_setup
from rlsd.cli import main
from rlsd.data import write_jsonl


def test_train_then_eval_from_yaml(tmp_path, capsys):
    model, tok = tiny_setup()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    write_jsonl(str(tmp_path / "train.jsonl"), [e.to_row() for e in examples(8, answer="7")])
    write_jsonl(str(tmp_path / "eval.jsonl"), [e.to_row() for e in examples(4, seed=3)])
    cfg = {
        "model": {"path": str(tmp_path / "model")},
        "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl")},
        "verifier": {"name": "exact", "options": {"pattern": r"(\d)\D*$"}},
        "rollout": {"n": 4, "max_new_tokens": 8},
        "teacher": {"source": "answer", "template": "ans {reference}|{prompt}"},
        "algo": {"name": "rlsd"},
        "train": {"steps": 2, "prompts_per_step": 2, "lr": 1e-3, "output_dir": str(tmp_path / "run"),
                  "progress": False, "threads": 1},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml")]) == 0
    assert (tmp_path / "run" / "metrics.png").exists()
    ckpt = tmp_path / "run" / "checkpoints" / "step_000002"
    assert main(["eval", str(tmp_path / "c.yaml"), "--checkpoint", str(ckpt)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"eval_accuracy", "eval_reward"}


def test_filter_traces(tmp_path, capsys):
    rows = [{"prompt": "1+1", "answer": "2", "solution": "1+1=2 so #2"},
            {"prompt": "2+2", "answer": "4", "solution": "2+2=5 so #5"},
            {"prompt": "3+3", "answer": "6", "solution": "no idea"},
            {"prompt": "4+4", "answer": "8"}]
    write_jsonl(str(tmp_path / "in.jsonl"), rows)
    assert main(["filter-traces", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"),
                 "--verifier", "exact", "--option", r"pattern=#(\d+)"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"rows": 4, "kept": 1, "rejected": {"wrong answer": 1, "malformed": 1, "no trace": 1}}
    kept = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert kept == rows[:1]


def test_study_refuses_unknown_arms():
    import pytest
    with pytest.raises(SystemExit, match="unknown arms"):
        main(["study", "--arms", "grpo", "rlsd-nope"])


def test_study_report_only_writes_results(tmp_path):
    out = tmp_path / "out"
    assert main(["study", "--report-only", "--warm-steps", "2", "--cache", str(tmp_path / "cache"),
                 "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warm_start"]["step"] == 2 and summary["summary"]["arms"] == {}
    anatomy = json.loads((out / "clip_anatomy.json").read_text())
    assert set(anatomy) == {"warm start"} and "credited (A != 0): the metric" in anatomy["warm start"]["answer"]["by_tokens"]
    assert (out / "metrics.csv").read_text().startswith("arm,seed,step,eval_accuracy")


def test_study_of_harder_sums_keeps_its_own_runs_and_results(tmp_path, monkeypatch):
    """--terms 4 defaults to its own runs and output folders (finished 3-number runs are never
    reused for it), and its warm start, data and rollouts are 4-number sums."""
    monkeypatch.chdir(tmp_path)
    assert main(["study", "--terms", "4", "--report-only", "--warm-steps", "2", "--cache", str(tmp_path / "c")]) == 0
    summary = json.loads((tmp_path / "docs/study/terms4/summary.json").read_text())
    assert summary["settings"]["terms"] == 4 and summary["settings"]["base"]["rollout"]["max_new_tokens"] == 44
    rows = (tmp_path / "rlsd-demo/study-terms4/data/eval.jsonl").read_text().splitlines()
    assert json.loads(rows[0])["prompt"].count("+") == 3
