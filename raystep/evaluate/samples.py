"""The per-sample answer log of one benchmark evaluation: append as answers arrive, resume, finalize.

``samples.jsonl`` is appended to while requests complete, so a killed evaluation keeps every graded
answer. A rerun skips the (id, sample) keys already answered, retries the ones that ended in a
request error, and ``finalize`` rewrites the file with each planned item exactly once (the newest
good answer wins), in benchmark order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from raystep.records import RowError, write_jsonl

Key = tuple[str, int]


def row_key(row: dict[str, Any]) -> Key:
    return (str(row["id"]), int(row["sample"]))


def read_log(path: Path) -> list[dict[str, Any]]:
    """Rows of an answer log. A torn *last* line (the process was killed mid-write) is ignored, since
    its item is simply asked again; a malformed line anywhere else is an error naming file and line."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "id" not in row or "sample" not in row:
                raise ValueError("expected an object with 'id' and 'sample'")
        except ValueError as exc:
            if lineno == len(lines):
                break
            raise RowError(f"{path}:{lineno}: {exc}") from None
        rows.append(row)
    return rows


def repair_tail(path: Path) -> None:
    """Make the log safe to append to after a kill: a torn last line is cut off (its item is asked
    again); a complete last line that only lacks its newline gets one."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
        complete = True
    except ValueError:
        complete = False
    with path.open("r+b") as fh:
        if complete:
            fh.seek(0, 2)
            fh.write(b"\n")
        else:
            fh.truncate(cut)


def answered_keys(rows: Iterable[dict[str, Any]]) -> set[Key]:
    """Keys with a usable answer; rows that kept a request error are asked again on a rerun."""
    return {row_key(r) for r in rows if not r.get("error")}


def merge(
    rows: Iterable[dict[str, Any]], plan: list[Key]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per key: the last good answer, else the last error. Returns (planned rows in plan order,
    rows whose key is outside the plan, e.g. from an earlier run with a larger ``limit``)."""
    best: dict[Key, dict[str, Any]] = {}
    for row in rows:
        key = row_key(row)
        old = best.get(key)
        if old is None or not row.get("error") or old.get("error"):
            best[key] = row
    planned = [best[k] for k in plan if k in best]
    plan_set = set(plan)
    extra = [r for k, r in best.items() if k not in plan_set]
    return planned, extra


def finalize(path: Path, plan: list[Key]) -> list[dict[str, Any]]:
    """Rewrite the log atomically with each key once; return the planned rows (in plan order).

    Rows outside the plan are kept at the end of the file (never thrown away) but not returned.
    """
    planned, extra = merge(read_log(path), plan)
    write_jsonl(path, [*planned, *extra])
    return planned
