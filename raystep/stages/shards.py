"""Resume machinery shared by the stages: Parquet shards that hold only complete units.

A stage processes fixed *units* (a problem for collect, a localized sample for rectify). Rows stream
out of Ray Data in any order; ``UnitBuffer`` groups them per unit and, once ``units_per_shard`` units
are complete, ``ShardSet.write`` commits them as one ``part-NNNNN.parquet``. The list of units a shard
completes is stored in the shard's own Parquet metadata, and the shard appears by an atomic rename, so
a shard on disk is always whole and self-describing (a unit that produced no rows is still recorded).
A rerun asks ``ShardSet.done_units()`` and skips those units: a stage killed midway and rerun ends
with exactly the rows of an uninterrupted run.

A unit whose rows failed (a request or a generation error, kept with the error) is recorded in its
shard's ``raystep.failed`` metadata with its attempt count. ``ShardSet.reopen_failed`` takes such units
out of their shards (each rewritten atomically) so a rerun does them again, up to ``max_attempts``;
the units done stay done.

Usage::

    shards = ShardSet(run.stage("samples"), schema=records.SAMPLE_FIELDS)
    todo = [p for p in problems if p["id"] not in shards.done_units()]
    buffer = UnitBuffer(shards, expected={p["id"]: n for p in todo}, key="id", units_per_shard=64)
    for row in stream:  # rows of todo units, any order
        buffer.add(row)
    buffer.close()      # flushes the rest; raises if a unit never completed
    rows = shards.rows()
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raystep.records import FieldSpec, RowError, read_parquet

UNITS_KEY = b"raystep.units"
FAILED_KEY = b"raystep.failed"
_SHARD = re.compile(r"^part-(\d{5,})\.parquet$")

FAIL_AFTER_ENV = "RAYSTEP_FAIL_AFTER_SHARDS"
"""Fault injection for resume tests: ``K`` or ``<folder name>:K``: fail right after the K-th shard one
``ShardSet`` writes (in any folder, or only in the folder with that name)."""
FAIL_MODE_ENV = "RAYSTEP_FAIL_MODE"
"""``raise`` (default: an ``InjectedFailure`` exception) or ``kill`` (SIGKILL this process)."""


class InjectedFailure(RuntimeError):
    """Raised by the ``RAYSTEP_FAIL_AFTER_SHARDS`` fault injection (tests of resume only)."""


class IncompleteUnitsError(RuntimeError):
    """The stream ended while some units had not received all their rows."""


def arrow_schema(spec: FieldSpec) -> pa.Schema:
    """An Arrow schema for a field spec: used for shards of units that produced no rows."""
    fields = []
    for name, (types, _required) in spec.items():
        if bool in types:
            typ = pa.bool_()
        elif float in types:
            typ = pa.float64()
        elif int in types:
            typ = pa.int64()
        elif list in types:
            typ = pa.list_(pa.string())
        else:
            typ = pa.string()
        fields.append(pa.field(name, typ))
    return pa.schema(fields)


class ShardSet:
    """The ``part-NNNNN.parquet`` shards of one stage folder."""

    def __init__(
        self, folder: str | os.PathLike[str], schema: FieldSpec | None = None, kind: str | None = None
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.kind = kind
        self.written_here = 0
        for stale in self.folder.glob("*.tmp"):
            stale.unlink()  # a write interrupted before its rename: never committed

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if _SHARD.match(p.name))

    @staticmethod
    def units_of(path: Path) -> list[str]:
        meta = pq.read_schema(path).metadata or {}
        if UNITS_KEY not in meta:
            raise RowError(
                f"{path}: shard has no '{UNITS_KEY.decode()}' metadata; not written by raystep shards"
            )
        return list(json.loads(meta[UNITS_KEY]))

    @staticmethod
    def failed_of(path: Path) -> dict[str, int]:
        """The units of a shard whose rows failed, with how many attempts each has had."""
        meta = pq.read_schema(path).metadata or {}
        return {str(u): int(n) for u, n in json.loads(meta.get(FAILED_KEY, b"{}")).items()}

    def done_units(self) -> set[str]:
        """Units completed by the shards on disk (failed ones included until reopened)."""
        return {u for f in self.files() for u in self.units_of(f)}

    def failed_units(self) -> dict[str, int]:
        """Units kept with an error, and their attempts so far."""
        return {u: n for f in self.files() for u, n in self.failed_of(f).items()}

    def reopen_failed(self, key: str, max_attempts: int) -> dict[str, int]:
        """Take the failed units with fewer than ``max_attempts`` attempts out of their shards, so this
        run redoes them; returns their attempts so far (for the next shard's count).

        ``key`` is the row column naming a row's unit. Each shard is rewritten atomically: a run killed
        in between leaves every unit either done or to do, never half of it.
        """
        reopened: dict[str, int] = {}
        for path in self.files():
            retry = {u: n for u, n in self.failed_of(path).items() if n < max_attempts}
            if retry:
                self.drop_units(path, set(retry), key)
                reopened.update(retry)
        return reopened

    def drop_units(self, path: Path, units: set[str], key: str) -> None:
        """Rewrite one shard without ``units`` (their rows, their names, their failure records)."""
        table = pq.read_table(path)
        meta = dict(table.schema.metadata or {})
        keep = [str(v) not in units for v in table.column(key).to_pylist()] if len(table) else []
        table = table.filter(pa.array(keep, type=pa.bool_())) if len(table) else table
        meta[UNITS_KEY] = json.dumps([u for u in self.units_of(path) if u not in units]).encode()
        failed = {u: n for u, n in self.failed_of(path).items() if u not in units}
        meta[FAILED_KEY] = json.dumps(failed).encode()
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table.replace_schema_metadata(meta), tmp)
        os.replace(tmp, path)

    def drop_units_everywhere(self, units: set[str], key: str) -> None:
        """Forget ``units`` in every shard (a downstream phase built from rows that are being redone)."""
        for path in self.files():
            if units & set(self.units_of(path)):
                self.drop_units(path, units, key)

    def next_index(self) -> int:
        files = self.files()
        return int(_SHARD.match(files[-1].name).group(1)) + 1 if files else 0  # type: ignore[union-attr]

    def write(
        self, rows: list[dict[str, Any]], units: Iterable[str], failed: dict[str, int] | None = None
    ) -> Path:
        """Commit ``rows`` (all rows of ``units``, nothing else) as the next shard, atomically;
        ``failed`` names the units whose rows failed, with their attempt count."""
        units = list(units)
        if rows:
            table = self._conform(pa.Table.from_pylist(rows))
        elif self.schema is not None:
            table = arrow_schema(self.schema).empty_table()
        else:
            table = pa.table({})
        meta = dict(table.schema.metadata or {})
        meta[UNITS_KEY] = json.dumps(units).encode()
        meta[FAILED_KEY] = json.dumps(failed or {}).encode()
        table = table.replace_schema_metadata(meta)
        path = self.folder / f"part-{self.next_index():05d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self.written_here += 1
        _maybe_fail(self.folder.name, self.written_here)
        return path

    def _conform(self, table: pa.Table) -> pa.Table:
        """Give the spec's columns their declared types (an all-None column would infer ``null``),
        so every shard of a folder shares one schema and Ray Data can read the folder as one."""
        if self.schema is None:
            return table
        target = arrow_schema(self.schema)
        for field in target:
            if field.name not in table.column_names:
                table = table.append_column(field, pa.nulls(len(table), field.type))
            elif table.schema.field(field.name).type != field.type:
                index = table.column_names.index(field.name)
                table = table.set_column(index, field, table.column(field.name).cast(field.type))
        return table

    def rows(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every row of every shard, in shard order; validated against ``kind`` when given."""
        kind = kind or self.kind
        return [row for f in self.files() for row in read_parquet(f, kind)]


def require_unique(rows: Iterable[dict[str, Any]], key: str, where: str) -> None:
    """Raise ``ValueError`` when two rows share ``row[key]`` (a unit of resume must be unique).

    The message is ``"<where>; duplicated: [first five duplicated values]"``.
    """
    counts = Counter(row[key] for row in rows)
    duplicates = [value for value, n in counts.items() if n > 1]
    if duplicates:
        raise ValueError(f"{where}; duplicated: {duplicates[:5]}")


def failure_stats(shards: ShardSet, max_attempts: int) -> dict[str, int]:
    """The stage's failed units for its stats: all of them, and those out of attempts."""
    failed = shards.failed_units()
    return {
        "failed_units": len(failed),
        "failed_units_final": sum(n >= max_attempts for n in failed.values()),
        "max_attempts": max_attempts,
    }


def rows_failed(rows: list[dict[str, Any]]) -> bool:
    """The default failure test: a row of the unit kept an ``error``."""
    return any(row.get("error") for row in rows)


def _maybe_fail(folder: str, written: int) -> None:
    spec = os.environ.get(FAIL_AFTER_ENV, "").strip()
    if not spec:
        return
    target, _, limit = spec.rpartition(":")
    if (target and target != folder) or written != int(limit):
        return
    if os.environ.get(FAIL_MODE_ENV, "raise") == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFailure(f"{FAIL_AFTER_ENV}={limit}: failing after shard {written} of {folder}/, as asked")


class UnitBuffer:
    """Groups streamed rows by unit and writes complete units to a ``ShardSet``.

    ``expected`` maps each pending unit to how many rows it will receive (a unit expecting 0 is
    complete at once). ``finalize(unit, rows) -> rows`` may transform a complete unit's rows (sort,
    aggregate, filter) before they are buffered for the shard. ``on_unit(unit, rows)`` is called
    after, e.g. to advance a progress bar or update counters. ``failed(rows)`` says whether a unit's
    (finalized) rows failed, to be retried on a rerun; ``attempts`` holds the earlier attempts of
    reopened units.
    """

    def __init__(
        self,
        shards: ShardSet,
        expected: dict[str, int],
        key: str | Callable[[dict[str, Any]], str],
        units_per_shard: int,
        finalize: Callable[[str, list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
        on_unit: Callable[[str, list[dict[str, Any]]], None] | None = None,
        failed: Callable[[list[dict[str, Any]]], bool] | None = None,
        attempts: dict[str, int] | None = None,
    ):
        self.shards = shards
        self.expected = dict(expected)
        self.key = key if callable(key) else (lambda row, _k=key: str(row[_k]))
        self.units_per_shard = units_per_shard
        self.finalize = finalize
        self.on_unit = on_unit
        self.failed = failed or rows_failed
        self.attempts = attempts or {}
        self.ready_failed: dict[str, int] = {}
        self.failed_units: list[str] = []
        self.partial: dict[str, list[dict[str, Any]]] = {}
        self.ready_units: list[str] = []
        self.ready_rows: list[dict[str, Any]] = []
        self.shards_written: list[Path] = []
        for unit in [u for u, n in self.expected.items() if n == 0]:
            self._complete(unit, [])

    def add(self, row: dict[str, Any]) -> None:
        unit = self.key(row)
        if unit not in self.expected:
            raise KeyError(f"row for unit {unit!r}, which is not pending (done already or unknown)")
        rows = self.partial.setdefault(unit, [])
        rows.append(row)
        if len(rows) > self.expected[unit]:
            raise RuntimeError(f"unit {unit!r} got {len(rows)} rows, expected {self.expected[unit]}")
        if len(rows) == self.expected[unit]:
            self._complete(unit, self.partial.pop(unit))

    def _complete(self, unit: str, rows: list[dict[str, Any]]) -> None:
        del self.expected[unit]
        if self.finalize is not None:
            rows = self.finalize(unit, rows)
        self.ready_units.append(unit)
        self.ready_rows.extend(rows)
        if rows and self.failed(rows):
            self.ready_failed[unit] = self.attempts.get(unit, 0) + 1
            self.failed_units.append(unit)
        if self.on_unit is not None:
            self.on_unit(unit, rows)
        if len(self.ready_units) >= self.units_per_shard:
            self.flush()

    def flush(self) -> None:
        if self.ready_units:
            self.shards_written.append(
                self.shards.write(self.ready_rows, self.ready_units, self.ready_failed)
            )
            self.ready_units, self.ready_rows, self.ready_failed = [], [], {}

    def close(self) -> None:
        """Write what is left; raise when a unit never got all its rows (rows were lost upstream)."""
        self.flush()
        missing = {u: (len(self.partial.get(u, [])), n) for u, n in self.expected.items()}
        if missing:
            sample = dict(list(missing.items())[:5])
            raise IncompleteUnitsError(f"{len(missing)} unit(s) incomplete (got, expected): {sample}")
