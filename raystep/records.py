"""The rows that flow between stages, and their JSONL / Parquet IO.

Rows are plain dicts (what Ray Data passes around); each kind has a field spec here that readers
validate against. A malformed row is reported with its file and line, or, when the caller passes a
``Rejects`` sink, written there with its reason and counted: never dropped silently.

Kinds and their required fields:
- problem: one question with its gold answer.
- sample: one generated solution, split into steps and graded.
- localized: a wrong sample plus the first wrong step found by a localizer.
- pair: a Step-DPO pair in the public Math-Step-DPO-10K schema plus our provenance fields.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from raystep.errors import InputError
from raystep.fs import StoragePath, atomic_text, location, read_table, write_table


class RowError(InputError):
    """A row that does not fit its schema; the message names file and line."""


# field -> (accepted python types, required)
FieldSpec = dict[str, tuple[tuple[type, ...], bool]]

_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_BOOL = (bool,)
_LIST = (list, tuple)

PROBLEM_FIELDS: FieldSpec = {
    "id": (_STR, True),
    "dataset": (_STR, True),
    "question": (_STR, True),
    "answer": (_STR, True),
    "solution": (_STR, False),
    "subject": (_STR, False),
    "level": (_INT, False),
}

SAMPLE_FIELDS: FieldSpec = {
    **PROBLEM_FIELDS,
    "sample_id": (_STR, True),
    "sample_index": (_INT, True),
    "seed": (_INT, True),
    "prompt": (_STR, True),
    "response": (_STR, True),
    "steps": (_LIST, True),
    "pred": (_STR, False),
    "correct": (_BOOL, True),
    "grade_status": (_STR, True),
    "num_tokens": (_INT, False),
    "error": (_STR, False),
}

LOCALIZED_FIELDS: FieldSpec = {
    **SAMPLE_FIELDS,
    "first_wrong_step": (_INT, True),  # 1-based; 0 when the localizer found no wrong step
    "localizer": (_STR, True),
    "evidence": (_STR, False),
}

PUBLIC_PAIR_FIELDS: tuple[str, ...] = (
    "dataset",
    "prompt",
    "initial_reason_steps",
    "chosen",
    "rejected",
    "full_chosen",
    "full_rejected",
    "answer",
)
"""The exact columns of xinlai/Math-Step-DPO-10K, in its order."""

PAIR_FIELDS: FieldSpec = {
    **{
        name: (_STR, name in ("prompt", "initial_reason_steps", "chosen", "rejected"))
        for name in PUBLIC_PAIR_FIELDS
    },
    # provenance (absent from public files)
    "pair_id": (_STR, False),
    "problem_id": (_STR, False),
    "sample_id": (_STR, False),
    "step_index": (_INT, False),
    "localizer": (_STR, False),
    "chosen_success_rate": (_NUM, False),
    "policy_model": (_STR, False),
    "sampling": (_STR, False),
    "ref_chosen_logp": (_NUM, False),
    "ref_rejected_logp": (_NUM, False),
}

SCHEMAS: dict[str, FieldSpec] = {
    "problem": PROBLEM_FIELDS,
    "sample": SAMPLE_FIELDS,
    "localized": LOCALIZED_FIELDS,
    "pair": PAIR_FIELDS,
}


def check_row(row: Any, kind: str) -> None:
    """Raise ``ValueError`` naming the first field that is missing or of the wrong type."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for name, (types, required) in SCHEMAS[kind].items():
        value = row.get(name)
        if value is None:
            if required:
                raise ValueError(f"missing field '{name}'")
            continue
        if isinstance(value, bool) and bool not in types:
            raise ValueError(f"field '{name}' must be {'/'.join(t.__name__ for t in types)}, got bool")
        if not isinstance(value, types):
            raise ValueError(
                f"field '{name}' must be {'/'.join(t.__name__ for t in types)}, got {type(value).__name__}"
            )
    if kind == "sample" or kind == "localized":
        if not all(isinstance(s, str) for s in row["steps"]):
            raise ValueError("field 'steps' must be a list of strings")
    if kind == "localized":
        k = row["first_wrong_step"]
        if k < 0 or k > len(row["steps"]):
            raise ValueError(f"first_wrong_step {k} is outside 0..{len(row['steps'])}")
    if kind == "pair":
        for name in ("chosen", "rejected"):
            if not row[name].strip():
                raise ValueError(f"field '{name}' is empty")


def to_public_pair(row: dict[str, Any]) -> dict[str, str]:
    """Only the public Math-Step-DPO-10K fields, in their order (missing optional ones as '')."""
    return {name: str(row.get(name) or "") for name in PUBLIC_PAIR_FIELDS}


@dataclass
class Rejects:
    """A sink for malformed rows: each is kept with its source, line and reason, and counted; ``save``
    writes them to ``path`` (a local file or an object: one write, since a bucket cannot append)."""

    path: StoragePath
    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, source: str, line: int, reason: str, raw: Any) -> None:
        self.rows.append({"source": source, "line": line, "reason": reason, "raw": raw})
        self.count += 1
        key = reason.split(":")[0][:80]
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def save(self) -> None:
        """Write every rejected row (nothing when there is none)."""
        if self.rows:
            with atomic_text(self.path) as fh:
                fh.writelines(json.dumps(row) + "\n" for row in self.rows)


def iter_json_lines(
    path: str | os.PathLike[str], rejects: Rejects | None = None
) -> Iterator[tuple[int, str, Any]]:
    """``(line number, line, parsed value)`` of each non-blank line of a JSONL file. A line that is not
    UTF-8 or not JSON raises ``RowError`` naming the file and line, or goes to ``rejects``."""
    source = str(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
                value = json.loads(line)
            except UnicodeDecodeError as exc:
                reason, line = f"invalid UTF-8 (byte {exc.start})", raw.decode("utf-8", "replace")
            except json.JSONDecodeError as exc:
                reason = f"invalid JSON: {exc.msg} (column {exc.colno})"
            except RecursionError:
                reason = "invalid JSON: nested too deeply"
            else:
                yield lineno, line, value
                continue
            if rejects is None:
                raise RowError(f"{source}:{lineno}: {reason}")
            rejects.add(source, lineno, reason, line.rstrip("\n"))


def iter_jsonl(
    path: str | os.PathLike[str], kind: str | None = None, rejects: Rejects | None = None
) -> Iterator[dict[str, Any]]:
    """Yield rows of a JSONL file; bad rows raise ``RowError`` (file:line) or go to ``rejects``."""
    source = str(path)
    for lineno, line, row in iter_json_lines(path, rejects):
        try:
            if kind is not None:
                check_row(row, kind)
            elif not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        except ValueError as exc:
            if rejects is None:
                raise RowError(f"{source}:{lineno}: {exc}") from None
            rejects.add(source, lineno, str(exc), line.rstrip("\n"))
            continue
        yield row


def read_jsonl(
    path: str | os.PathLike[str], kind: str | None = None, rejects: Rejects | None = None
) -> list[dict[str, Any]]:
    return list(iter_jsonl(path, kind, rejects))


def write_jsonl(path: str | os.PathLike[str] | StoragePath, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically (temp file + rename, or one put on object storage), so a reader never
    sees half a file."""
    n = 0
    with atomic_text(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def append_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Append rows and flush; for resumable logs whose readers skip ids already present."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
        fh.flush()
        os.fsync(fh.fileno())
    return n


def write_parquet(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> int:
    """Write rows as one Parquet file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(pa.Table.from_pylist(rows) if rows else pa.table({}), path)
    return len(rows)


def read_parquet(path: str | os.PathLike[str] | StoragePath, kind: str | None = None) -> list[dict[str, Any]]:
    """Read a Parquet file or a folder of ``*.parquet`` shards (sorted), validating each row; local or
    on any filesystem ``raystep.fs`` opens."""
    where = location(path)
    files = sorted(where.glob("*.parquet")) if where.is_dir() else [where]
    rows: list[dict[str, Any]] = []
    for f in files:
        try:
            table = read_table(f)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise RowError(f"{f}: not a readable Parquet file: {exc}") from None
        for i, row in enumerate(table.to_pylist(), start=1):
            if kind is not None:
                try:
                    check_row(row, kind)
                except ValueError as exc:
                    raise RowError(f"{f}:row {i}: {exc}") from None
            rows.append(row)
    return rows


def read_rows(
    path: str | os.PathLike[str], kind: str | None = None, rejects: Rejects | None = None
) -> list[dict[str, Any]]:
    """Read JSONL or Parquet (file or shard folder) by extension."""
    p = Path(path)
    if p.is_dir() or p.suffix == ".parquet":
        return read_parquet(p, kind)
    return read_jsonl(p, kind, rejects)
