import pytest
from trainer_helpers import needs_bwrap

from rlsd.data import Example
from rlsd.verifiers import REGISTRY, make_verifier, verify
from rlsd.verifiers import code as code_verifier
from rlsd.verifiers.sandbox import SandboxUnavailable, check_bwrap


def ex(answer, **meta):
    return Example(prompt="q", answer=answer, meta=meta)


def test_registry_has_every_verifier():
    assert {"exact", "normalized", "math", "code", "sql", "json_schema"} <= set(REGISTRY)


@pytest.mark.parametrize("name,response,reward", [
    ("exact", " 42 ", 1.0), ("exact", "43", 0.0),
    ("normalized", "The  Eiffel tower!", 1.0), ("normalized", "Louvre", 0.0),
])
def test_match(name, response, reward):
    answer = "42" if name == "exact" else "eiffel Tower"
    assert verify(name, response, ex(answer)).reward == reward


def test_match_pattern_and_malformed():
    v = make_verifier("exact", pattern=r"#(-?\d+)")
    assert v("12+34=46;46+56=102;#102", ex(102)).reward == 1.0
    assert v("12+34=46;#101", ex(102)).reward == 0.0
    bad = v("no answer here", ex(102))
    assert bad.reward == 0.0 and bad.reason.startswith("malformed")


def test_math():
    assert verify("math", r"so the answer is $\boxed{\frac{1}{2}}$", ex("0.5")).reward == 1.0
    assert verify("math", r"$\boxed{3}$", ex("2")).reward == 0.0
    bad = verify("math", "I do not know", ex("2"))
    assert bad.reward == 0.0 and bad.reason


CODE_OK = "```python\ndef f(x):\n    return 2 * x\n```"
TESTS = "assert f(2) == 4\nassert f(0) == 0"


@needs_bwrap
def test_code_good_wrong_malformed():
    assert verify("code", CODE_OK, ex(TESTS)).reward == 1.0
    assert verify("code", "def f(x):\n    return x", ex(TESTS)).reward == 0.0
    bad = verify("code", "def f(x) return", ex(TESTS))
    assert bad.reward == 0.0 and "SyntaxError" in bad.reason


@needs_bwrap
def test_code_infinite_loop_times_out():
    v = verify("code", "def f(x):\n    while True: pass", ex("assert f(1)"), timeout=1.0)
    assert v.reward == 0.0 and "timeout" in v.reason


@needs_bwrap
def test_code_batch_keeps_order():
    v = make_verifier("code", workers=2)
    pairs = [(CODE_OK, ex(TESTS)), ("def f(x):\n    return x", ex(TESTS))] * 3
    assert [d.reward for d in v.batch(pairs)] == [1.0, 0.0] * 3


IO_CASES = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6"}]


@needs_bwrap
def test_code_stdin_stdout_cases():
    for program in ["a, b = map(int, input().split())\nprint(a + b)",
                    "import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())), end='  \\n\\n')\nexit()"]:
        assert verify("code", program, ex(None, tests=IO_CASES)).reward == 1.0, program
    wrong = verify("code", "print(3)", ex(None, tests=IO_CASES))
    assert wrong.reward == 0.0 and wrong.reason == "failed: case 2: wrong output"
    assert verify("code", "import sys\nsys.exit(1)", ex(None, tests=IO_CASES)).reward == 0.0
    bad = verify("code", "print(3)", ex(None, tests=[{"stdin": "1"}]))
    assert bad.reward == 0.0 and "'input' and 'output'" in bad.reason


def test_code_options_are_checked_when_built():
    with pytest.raises(ValueError, match="sandbox"):
        make_verifier("code", sandbox="docker")
    with pytest.warns(RuntimeWarning, match="UNSANDBOXED"):
        v = make_verifier("code", sandbox="none")
    assert v(CODE_OK, ex(TESTS)).reward == 1.0
    assert v("def f(x):\n    return 0\nimport os\nos._exit(0)", ex(TESTS)).reward == 0.0


def test_code_without_a_sandbox_fails_when_built(monkeypatch):
    with pytest.raises(SandboxUnavailable, match="sandbox='none'"):
        check_bwrap("no-such-bwrap")
    with pytest.raises(SandboxUnavailable, match="UNSANDBOXED"):
        check_bwrap("/bin/false")

    def missing(bwrap="bwrap"):
        raise SandboxUnavailable("no bwrap")
    monkeypatch.setattr(code_verifier, "check_bwrap", missing)
    with pytest.raises(SandboxUnavailable):
        make_verifier("code")


@needs_bwrap
def test_code_memory_limit():
    v = verify("code", "x = bytearray(4 << 30)", ex("assert True"), memory_mb=256)
    assert v.reward == 0.0 and "MemoryError" in v.reason


DB = "CREATE TABLE t(a INT, b TEXT); INSERT INTO t VALUES (1,'x'),(2,'y'),(3,'x');"


def test_sql():
    gold = ex("SELECT a FROM t WHERE b = 'x'", db=DB)
    assert verify("sql", "```sql\nSELECT a FROM t WHERE b='x' ORDER BY a DESC\n```", gold).reward == 1.0
    assert verify("sql", "SELECT a FROM t", gold).reward == 0.0
    bad = verify("sql", "SELEC a FRM t", gold)
    assert bad.reward == 0.0 and "SQL error" in bad.reason
    assert verify("sql", "DROP TABLE t", gold).reward == 0.0
    assert verify("sql", "SELECT a FROM t WHERE b = 'x'", gold).reward == 1.0  # the table is intact


def test_sql_runaway_query_is_stopped():
    loop = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    v = verify("sql", loop, ex("SELECT 1", db=DB), timeout=0.5)
    assert v.reward == 0.0 and "interrupted" in v.reason


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


def test_json_schema():
    e = ex(None, schema=SCHEMA)
    assert verify("json_schema", 'Here: {"name": "Ada", "age": 36}', e).reward == 1.0
    wrong = verify("json_schema", '{"name": "Ada", "age": "old"}', e)
    assert wrong.reward == 0.0 and "schema violation" in wrong.reason
    bad = verify("json_schema", '{"name": "Ada", ', e)
    assert bad.reward == 0.0 and bad.reason.startswith("malformed")


def test_crashing_verifier_gives_zero():
    v = verify("sql", "SELECT 1", ex("SELECT 1"))  # no 'db' in meta -> KeyError inside
    assert v.reward == 0.0 and "verifier error" in v.reason
