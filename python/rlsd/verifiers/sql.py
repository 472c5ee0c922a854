"""SQL run on SQLite and compared with the reference query by result set.

Every query runs on a private in-memory copy of the database, under an authorizer that allows
reading only (no ATTACH / DETACH, writes, schema changes, PRAGMAs, transactions or extension
loading), with bounded rows, string, SQL and LIKE pattern length and heap, and a wall-clock deadline:
SQLite's progress handler stops a query between steps, and since one step can be one long C call
(``instr`` or ``LIKE`` on long strings), both queries run in a worker process (``_pool``) that is
killed if they are not done ``2 * timeout`` seconds after they start.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections import Counter

from . import Verdict, register
from ._pool import WorkerFailed, WorkerPool

_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_REFUSED_FUNCTIONS = {"load_extension"}
HEAP_LIMIT = 1 << 30  # bytes; SQLite's hard heap limit is process-wide, so it is only ever lowered to this
MAX_LIKE_PATTERN = 1000  # bytes of a LIKE or GLOB pattern (SQLite's default is 50000)
POOL = WorkerPool()


class TooManyRows(Exception):
    pass


def extract_sql(response: str) -> str:
    """The last fenced block (```sql ... ```), or the whole response."""
    blocks = re.findall(r"```(?:sql)?[ \t]*\n(.*?)```", response, flags=re.S | re.I)
    return (blocks[-1] if blocks else response).strip()


def _read_only(action, arg1, arg2, db_name, trigger):
    if action not in _ALLOWED or (action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _REFUSED_FUNCTIONS):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _database(db: str) -> sqlite3.Connection:
    """A private in-memory database: built by the SQL script ``db``, or copied from the SQLite file at
    path ``db`` opened read-only (the file itself is never written)."""
    con = sqlite3.connect(":memory:")
    if db.endswith((".db", ".sqlite", ".sqlite3")) and os.path.isfile(db):
        src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            src.backup(con)
        finally:
            src.close()
    else:
        con.executescript(db)
    con.execute("PRAGMA temp_store = MEMORY")  # sorts and temporary tables never touch the disk
    con.execute(f"PRAGMA hard_heap_limit = {HEAP_LIMIT}")
    return con


def run_query(db: str, query: str, timeout: float = 5.0, max_rows: int = 100_000,
              max_length: int = 1 << 20) -> list:
    """Rows of ``query`` on a private copy of ``db`` under the read-only authorizer and the bounds;
    raises ``sqlite3.Error`` (refused or failed) or :class:`TooManyRows`."""
    con = _database(db)
    try:
        con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_length)
        con.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, max_length)
        con.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, MAX_LIKE_PATTERN)
        con.set_authorizer(_read_only)
        deadline = time.monotonic() + timeout
        con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        rows = con.execute(query).fetchmany(max_rows + 1)
        if len(rows) > max_rows:
            raise TooManyRows(f"more than {max_rows} rows")
        return rows
    finally:
        con.close()


def compare(db: str, gold_query: str, query: str, timeout: float, max_rows: int, ordered: bool) -> str:
    """'ok', 'different result set', 'too many rows: ...' or 'malformed: ...' (runs in a worker);
    an error in the reference query raises."""
    gold = run_query(db, gold_query, timeout, max_rows)
    try:
        got = run_query(db, query, timeout, max_rows)
    except sqlite3.Error as exc:
        return f"malformed: SQL error: {exc}"
    except TooManyRows as exc:
        return f"too many rows: {exc}"
    same = got == gold if ordered else Counter(got) == Counter(gold)
    return "ok" if same else "different result set"


def check_row(example, **_) -> None:
    db = example.meta.get("db")
    if not isinstance(db, str) or not db.strip():
        raise ValueError("sql: the row has no 'db' (an SQL script or the path of an SQLite file)")
    if not isinstance(example.answer, str) or not example.answer.strip():
        raise ValueError("sql: the answer (the reference query) is empty")


@register("sql", row=check_row)
def sql_result_set(response: str, example, timeout: float = 5.0, ordered: bool = False,
                   max_rows: int = 100_000) -> Verdict:
    """Reward 1 iff the query returns the same rows as the reference (``example.answer``) on the
    database ``example.meta['db']`` (an SQL script, or the path of an SQLite file); rows compare as
    a multiset unless ``ordered``. Each query runs on its own read-only copy, for ``timeout`` seconds."""
    query = extract_sql(response)
    if not query:
        return Verdict(0.0, "malformed: no SQL")
    args = (example.meta["db"], str(example.answer), query, timeout, max_rows, ordered)
    try:
        reason = POOL.run(compare, args, 2 * timeout)
    except WorkerFailed as exc:
        return Verdict(0.0, str(exc))
    return Verdict(float(reason == "ok"), reason)
