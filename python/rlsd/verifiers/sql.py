"""SQL run on SQLite and compared with the reference query by result set."""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter

from . import Verdict, register


def extract_sql(response: str) -> str:
    """The last fenced block (```sql ... ```), or the whole response."""
    blocks = re.findall(r"```(?:sql)?[ \t]*\n(.*?)```", response, flags=re.S | re.I)
    return (blocks[-1] if blocks else response).strip()


def _run(db_script: str, query: str, timeout: float):
    """Rows of ``query`` on a fresh in-memory database built from ``db_script``."""
    con = sqlite3.connect(":memory:")
    try:
        con.executescript(db_script)
        deadline = time.monotonic() + timeout
        con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        return con.execute(query).fetchall()
    finally:
        con.close()


@register("sql")
def sql_result_set(response: str, example, timeout: float = 5.0, ordered: bool = False) -> Verdict:
    """Reward 1 iff the query returns the same rows as the reference (``example.answer``) on the
    database built by ``example.meta['db']`` (an SQL script); rows compare as a multiset unless
    ``ordered``. Each query runs on its own copy, so a query that writes changes nothing."""
    query = extract_sql(response)
    if not query:
        return Verdict(0.0, "malformed: no SQL")
    db = example.meta["db"]
    gold = _run(db, str(example.answer), timeout)
    try:
        got = _run(db, query, timeout)
    except sqlite3.Error as exc:
        return Verdict(0.0, f"malformed: SQL error: {exc}")
    same = got == gold if ordered else Counter(got) == Counter(gold)
    return Verdict(float(same), "ok" if same else "different result set")
