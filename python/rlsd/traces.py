"""Keep only the synthetic traces that reach the right answer (for the 'solution' privileged context)."""

from __future__ import annotations

from collections import Counter

from .data import Example, read_rows, write_jsonl
from .verifiers import make_verifier


def filter_traces(rows: list, verifier, field: str = "solution") -> tuple:
    """(rows whose ``field`` passes the verifier against their answer, Counter of rejection reasons)."""
    kept, reasons = [], Counter()
    for row in rows:
        trace = row.get(field)
        if not trace:
            reasons["no trace"] += 1
            continue
        verdict = verifier(str(trace), Example.from_row(row))
        if verdict.reward >= 1.0:
            kept.append(row)
        else:
            reasons[verdict.reason.split(":")[0]] += 1
    return kept, reasons


def filter_traces_file(src: str, dst: str, verifier_name: str, options: dict, field: str = "solution") -> tuple:
    rows = read_rows(src)
    kept, reasons = filter_traces(rows, make_verifier(verifier_name, **options), field)
    write_jsonl(dst, kept)
    return len(rows), len(kept), reasons
