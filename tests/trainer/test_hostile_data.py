"""Hostile data files: each bad file or row gives a DataError naming the file and line (or row)."""

import json

import pytest

from rlsd.data import CurriculumSampler, DataError, Example, load_examples, read_rows, write_jsonl

GOOD = '{"prompt": "1+1", "answer": "2"}\n'


def write(tmp_path, content, name="d.jsonl"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def error(path) -> str:
    with pytest.raises(DataError) as info:
        load_examples(path)
    return str(info.value)


def parquet(tmp_path, rows, name="d.parquet"):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = str(tmp_path / name)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_missing_and_empty_files(tmp_path):
    assert "data file not found: " in error(str(tmp_path / "nope.jsonl"))
    assert "no data file named: set data.train" in error("")
    assert "not a file" in error(str(tmp_path))
    for content in ("", "\n\n  \n"):
        path = write(tmp_path, content)
        assert error(path) == f"{path}: no rows"


@pytest.mark.parametrize("lines,line,expected", [
    (['{"prompt": "a", "answer": "1"', GOOD], 1, "not valid JSON"),
    ([GOOD, "\n", "not json at all\n", GOOD], 3, "not valid JSON"),
    ([GOOD, '["prompt", "answer"]\n'], 2, "expected a JSON object, got list"),
    ([GOOD, "42\n"], 2, "expected a JSON object, got int"),
    ([GOOD, '{"prompt": "a", "answer": "1", "answer": "2"}\n'], 2, "duplicate key 'answer'"),
    ([GOOD, GOOD, '{"prompt": "a"}\n'], 3, "the row has no 'answer' (keys: ['prompt'])"),
    (['{"answer": "1"}\n'], 1, "the row has no 'prompt'"),
    (['{"question": "a", "solution": "b"}\n'], 1, "the row has no 'prompt' or 'answer'"),
    (['{"prompt": "a", "answer": null}\n'], 1, "the row has no 'answer'"),
    (['{"prompt": 7, "answer": "1"}\n'], 1, "'prompt' must be a string, got int"),
    (['{"prompt": ["a"], "answer": "1"}\n'], 1, "'prompt' must be a string, got list"),
    (['{"prompt": "", "answer": "1"}\n'], 1, "'prompt' is empty"),
    (['{"prompt": " \\n ", "answer": "1"}\n'], 1, "'prompt' is empty"),
    (['{"prompt": "a", "answer": ""}\n'], 1, "'answer' is empty"),
    (['{"prompt": "a", "answer": "1", "solution": ["x"]}\n'], 1, "'solution' must be a string or null, got list"),
    (['{"prompt": "a", "answer": "1", "document": 3}\n'], 1, "'document' must be a string or null"),
    (['{"prompt": "a", "answer": "1", "difficulty": "hard"}\n'], 1, "'difficulty' must be an integer, got str"),
    (['{"prompt": "a", "answer": "1", "difficulty": 1.5}\n'], 1, "'difficulty' must be an integer, got float"),
    (['{"prompt": "a", "answer": "1", "difficulty": true}\n'], 1, "'difficulty' must be an integer, got bool"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, lines, line, expected):
    path = write(tmp_path, "".join(lines))
    message = error(path)
    assert message.startswith(f"{path}:{line}: ") and expected in message, message


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write(tmp_path, GOOD.encode() + b'{"prompt": "caf\xe9", "answer": "1"}\n')
    assert error(path).startswith(f"{path}:2: not valid UTF-8")
    bom = write(tmp_path, b"\xef\xbb\xbf" + GOOD.encode(), "bom.jsonl")  # a UTF-8 byte-order mark is fine
    assert load_examples(bom)[0].prompt == "1+1"


def test_values_that_are_fine(tmp_path):
    rows = [{"prompt": "caf\u00e9 \u2211", "answer": 3, "difficulty": 2.0, "solution": None},
            {"prompt": "q", "answer": {"type": "object"}, "tests": ["assert f()"], "difficulty": None},
            {"prompt": "q", "answer": "0"}, {"prompt": "q", "answer": "0"}]
    exs = load_examples(write(tmp_path, "".join(json.dumps(r) + "\n" for r in rows)))
    assert exs[0].prompt == "caf\u00e9 \u2211" and exs[0].answer == 3 and exs[0].difficulty == 2
    assert exs[1].answer == {"type": "object"} and exs[1].meta == {"tests": ["assert f()"]} and exs[1].difficulty == 0
    assert exs[2] == exs[3] and len(exs) == 4  # duplicates are kept: each is drawn once per epoch
    assert sorted(i for i, _ in CurriculumSampler(exs, seed=1).sample(4)) == [0, 1, 2, 3]


def test_huge_row(tmp_path):
    prompt = "x" * (8 << 20)
    path = str(tmp_path / "big.jsonl")
    write_jsonl(path, [{"prompt": prompt, "answer": "1"}, {"prompt": "a", "answer": "2"}])
    exs = load_examples(path)
    assert len(exs) == 2 and exs[0].prompt == prompt and exs[1].answer == "2"


def test_parquet(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": str(i), "difficulty": i} for i in range(3)]
    assert [e.answer for e in load_examples(parquet(tmp_path, rows))] == ["0", "1", "2"]
    path = parquet(tmp_path, [{"prompt": "q", "solution": "s"}], "no_answer.parquet")
    assert error(path) == f"{path}: no column 'answer' (columns: ['prompt', 'solution'])"
    path = parquet(tmp_path, [{"prompt": "q", "answer": "1"}, {"prompt": "q", "answer": None}], "null.parquet")
    assert error(path).startswith(f"{path}: row 2: the row has no 'answer'")
    path = parquet(tmp_path, [{"prompt": 1, "answer": "1"}], "int.parquet")
    assert error(path).startswith(f"{path}: row 1: 'prompt' must be a string, got int")
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = str(tmp_path / "empty.parquet")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), path)
    assert error(path) == f"{path}: no rows"
    path = write(tmp_path, GOOD, "fake.parquet")
    assert error(path).startswith(f"{path}: not a readable Parquet file")


def test_read_rows_and_from_row():
    with pytest.raises(DataError, match="a row must be a mapping, got list"):
        Example.from_row(["prompt"])
    with pytest.raises(DataError, match="data file not found"):
        read_rows("/nonexistent/rows.jsonl")


def test_sampler_state_of_another_training_set():
    exs = [Example.from_row({"prompt": f"q{i}", "answer": "1", "difficulty": i % 2}) for i in range(6)]
    state = CurriculumSampler(exs, seed=0, curriculum=True).state_dict()
    for other in (exs[1:], exs + exs[:1]):
        with pytest.raises(DataError, match="does not fit this training set"):
            CurriculumSampler(other, seed=0, curriculum=True).load_state_dict(state)
    with pytest.raises(DataError, match="does not fit"):
        CurriculumSampler(exs, seed=0, curriculum=False).load_state_dict(state)
    same = CurriculumSampler(exs, seed=5, curriculum=True)
    same.load_state_dict(state)
    assert same.state_dict() == state


def test_an_empty_training_set_fails_instead_of_hanging():
    sampler = CurriculumSampler([], seed=0, curriculum=True)  # constructible: `rlsd eval` trains on nothing
    with pytest.raises(ValueError, match="training set is empty"):
        sampler.sample(1)
    assert sampler.sample(0) == []
