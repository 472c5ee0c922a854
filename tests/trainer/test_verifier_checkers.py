"""The string, math and JSON Schema checkers are exact: no rounding, merging or dialect confusion
pays for a wrong answer, and the honest forms of each answer still earn 1. Rows a verifier cannot
grade are refused (at load, and at verification with reward 0)."""

import pytest

from rlsd.data import Example
from rlsd.verifiers import check_row, make_verifier, verify


def ex(answer, **meta):
    return Example(prompt="q", answer=answer, meta=meta)


# ---------------------------------------------------------------- normalized match
@pytest.mark.parametrize("response,gold", [("-5", "5"), ("5", "-5"), ("1/2", "12"), ("3.14", "314"), ("314", "3.14"),
                                           ("", "A"), ("the", "A"), ("5", "5%"), ("1,2", "12"), ("vitamin", "vitamin a"),
                                           ("- 5.", "-5")])
def test_normalized_never_merges_different_numbers_or_empties_the_gold(response, gold):
    assert verify("normalized", response, ex(gold)).reward == 0.0


@pytest.mark.parametrize("response,gold", [("The  Eiffel tower!", "eiffel Tower"), ("a", "A"), ("(A)", "A"),
                                           ("-5.", "-5"), ("Answer: 3.14", "answer 3.14"), ("well-known", "well known"),
                                           ("50 %", "50%"), ("An apple", "apple")])
def test_normalized_honest_forms_still_match(response, gold):
    assert verify("normalized", response, ex(gold)).reward == 1.0


# ---------------------------------------------------------------- math
@pytest.mark.parametrize("response,gold", [(r"\boxed{0.0}", "0.0000001"), (r"\boxed{0}", "4 \\cdot 10^{-7}"),
                                           (r"\boxed{0.00003333}", "1/30000"), (r"\boxed{5\%}", "5"),
                                           (r"\boxed{50\%}", "50"), (r"\boxed{0.05}", "5")])
def test_math_small_golds_and_percent_are_exact(response, gold):
    assert verify("math", response, ex(gold)).reward == 0.0


@pytest.mark.parametrize("response,gold", [(r"\boxed{10^{-7}}", "0.0000001"), (r"\boxed{0.0000333333}", "1/30000"),
                                           (r"\boxed{5\%}", "0.05"), (r"\boxed{5\%}", "5\\%"), (r"\boxed{0.05}", "5\\%"),
                                           (r"\boxed{0.333333}", "1/3"), (r"\boxed{0}", "0"), (r"\boxed{1.5 \times 10^{-8}}", "0.000000015")])
def test_math_honest_answers_still_pass(response, gold):
    assert verify("math", response, ex(gold)).reward == 1.0


# ---------------------------------------------------------------- JSON Schema
D7, D4 = "http://json-schema.org/draft-07/schema#", "http://json-schema.org/draft-04/schema#"
JSON_CASES = [  # (schema, a response that must fail, an honest response that must pass)
    ({"type": "string", "format": "email"}, '"nobody"', '"ada@example.org"'),
    ({"type": "string", "format": "ipv4"}, '"999.1.1.1"', '"10.0.0.1"'),
    ({"type": "string", "format": "date"}, '"2020-13-45"', '"2020-12-31"'),
    ({"$schema": D7, "type": "object", "dependencies": {"a": ["b"]}}, '{"a": 1}', '{"a": 1, "b": 2}'),
    ({"$schema": D7, "type": "array", "items": [{"type": "integer"}]}, '["x"]', '[1, "x"]'),
    ({"$schema": D4, "type": "number", "maximum": 5, "exclusiveMaximum": True}, "5", "4.5"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}}, '{"a": "x", "a": 1}', '{"a": 1}'),
    ({"type": "number", "maximum": 150}, "150.00000000000001", "150.0"),
    ({"type": "integer"}, "1.00000000000000001", "1.0"),
    ({"type": "number", "multipleOf": 0.1}, "0.35", "0.3"),
    ({"type": "number", "multipleOf": 0.01}, "1e-400", "1e300"),
]


@pytest.mark.parametrize("schema,bad,good", JSON_CASES)
def test_json_schema_is_exact_in_its_dialect(schema, bad, good):
    assert verify("json_schema", bad, ex(None, schema=schema)).reward == 0.0
    assert verify("json_schema", good, ex(None, schema=schema)).reward == 1.0


# ---------------------------------------------------------------- rows that cannot be graded
UNGRADABLE = [
    ("json_schema", ex("not json")), ("json_schema", ex(None, schema=True)), ("json_schema", ex(None, schema={})),
    ("json_schema", ex(None, schema={"type": "string", "format": "no-such-format"})),
    ("json_schema", ex(None, schema={"$schema": "http://example.com/mine", "type": "string"})),
    ("json_schema", ex(None, schema={"type": "strnig"})),
    ("normalized", ex("?!")), ("exact", ex("  ")), ("math", ex(" ")),
    ("code", ex(None, tests=[])), ("code", ex(None, tests={"input": "1\n", "output": "1\n"})),
    ("code", ex("")), ("code", ex("x = 1")), ("code", ex("assert (")),
    ("code", ex(None, tests=[{"input": "1\n"}])), ("code", ex(None, tests=[{"input": 1, "output": "1"}])),
    ("sql", ex("SELECT 1")),
]


@pytest.mark.parametrize("name,example", UNGRADABLE, ids=lambda x: x if isinstance(x, str) else repr(x.meta or x.answer)[:40])
def test_ungradable_rows_are_refused_and_never_pay(name, example):
    with pytest.raises(ValueError):
        check_row(name, example)
    anything = "```python\nimport os\n```" if name == "code" else '{"a": 1}'
    verdict = verify(name, anything, example, **({"sandbox": "none"} if name == "code" else {}))
    assert verdict.reward == 0.0 and verdict.reason.startswith("verifier error"), verdict


def test_rows_are_checked_at_load(tmp_path):
    from rlsd.data import DataError, load_examples, write_jsonl
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"prompt": "p", "answer": "x", "schema": {"type": "object"}},
                       {"prompt": "p", "answer": "x", "schema": {"type": "object", "format": "nope"}}])
    verifier = make_verifier("json_schema")
    assert len(load_examples(str(path))) == 2  # without a check, as before
    with pytest.raises(DataError, match=r"rows.jsonl:2: .*format nope"):
        load_examples(str(path), check=verifier.check_row)


# ---------------------------------------------------------------- worker pools
def _die(*_):
    import os
    os._exit(1)


def test_a_broken_pool_is_replaced_and_a_dead_worker_earns_zero():
    from rlsd.verifiers import schema
    from rlsd.verifiers._pool import WorkerFailed
    example = ex(None, schema={"type": "integer"})
    assert verify("json_schema", "1", example).reward == 1.0
    pool = schema.POOL._instance()
    pool.stop()
    pool.join()
    assert verify("json_schema", "1", example).reward == 1.0  # a new pool, not "verifier error" forever
    assert schema.POOL._instance() is not pool
    with pytest.raises(WorkerFailed, match="died"):
        schema.POOL.run(_die, (), 10)
    assert verify("json_schema", "1", example).reward == 1.0
