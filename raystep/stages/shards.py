"""Parquet shards that hold only complete units: the resume machinery of the data stages.

A shard is one ``part-*.parquet`` file written to a temporary name and renamed into place (on object
storage: put in one request, see ``raystep.fs``), so a shard on disk is always whole. The units it completes (for the streaming stages, the key of each of its rows)
are stored in its own Parquet metadata; ``ShardSet.done_units()`` reads only that, and a rerun skips
those units. Who writes: ``raystep.stages.stream.write_shards`` from the Ray Data workers, or
``ShardSet.write`` directly (the problems of a run, tests, tools).

A unit whose rows failed (a request or a generation error, kept with the error) is recorded in its
shard's ``raystep.failed`` metadata with its attempt count. ``ShardSet.reopen_failed`` takes such units
out of their shards (each rewritten atomically) so a rerun does them again, up to ``max_attempts``;
the units done stay done.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from raystep import fs
from raystep.fs import StoragePath
from raystep.records import FieldSpec, RowError, read_parquet

UNITS_KEY = b"raystep.units"
FAILED_KEY = b"raystep.failed"
_SHARD = re.compile(r"^part-([0-9a-f]{5,})\.parquet$")
_NUMBERED = re.compile(r"^\d+$")

FAIL_AFTER_ENV = "RAYSTEP_FAIL_AFTER_SHARDS"
"""Fault injection for resume tests: ``K`` or ``<folder name>:K``: fail right after the K-th shard one
``ShardSet`` writes (in any folder, or only in the folder with that name)."""
FAIL_MODE_ENV = "RAYSTEP_FAIL_MODE"
"""``raise`` (default: an ``InjectedFailure`` exception) or ``kill`` (SIGKILL this process)."""


class InjectedFailure(RuntimeError):
    """Raised by the ``RAYSTEP_FAIL_AFTER_SHARDS`` fault injection (tests of resume only)."""


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
        self,
        folder: str | os.PathLike[str] | StoragePath,
        schema: FieldSpec | None = None,
        kind: str | None = None,
        clean: bool = True,
    ):
        self.folder = fs.location(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.kind = kind
        self.written_here = 0
        if clean:  # the driver, before a stage's writers start (a worker must not remove another's .tmp)
            for stale in self.folder.glob("*.tmp"):
                stale.unlink()  # a write interrupted before its rename: never committed

    def files(self) -> list[StoragePath]:
        return sorted(p for p in self.folder.iterdir() if _SHARD.match(p.name))

    @staticmethod
    def units_of(path: StoragePath) -> list[str]:
        meta = fs.read_schema(path).metadata or {}
        if UNITS_KEY not in meta:
            raise RowError(
                f"{path}: shard has no '{UNITS_KEY.decode()}' metadata; not written by raystep shards"
            )
        return list(json.loads(meta[UNITS_KEY]))

    @staticmethod
    def failed_of(path: StoragePath) -> dict[str, int]:
        """The units of a shard whose rows failed, with how many attempts each has had."""
        meta = fs.read_schema(path).metadata or {}
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

    def drop_units(self, path: StoragePath, units: set[str], key: str) -> None:
        """Rewrite one shard without ``units`` (their rows, their names, their failure records)."""
        table = fs.read_table(path)
        meta = dict(table.schema.metadata or {})
        keep = [str(v) not in units for v in table.column(key).to_pylist()] if len(table) else []
        table = table.filter(pa.array(keep, type=pa.bool_())) if len(table) else table
        meta[UNITS_KEY] = json.dumps([u for u in self.units_of(path) if u not in units]).encode()
        failed = {u: n for u, n in self.failed_of(path).items() if u not in units}
        meta[FAILED_KEY] = json.dumps(failed).encode()
        fs.write_table(table.replace_schema_metadata(meta), path)

    def drop_units_everywhere(self, units: set[str], key: str) -> None:
        """Forget ``units`` in every shard (a downstream phase built from rows that are being redone)."""
        for path in self.files():
            if units & set(self.units_of(path)):
                self.drop_units(path, units, key)

    def next_index(self) -> int:
        numbered = [
            int(m.group(1))
            for f in self.files()
            if (m := _SHARD.match(f.name)) and _NUMBERED.match(m.group(1))
        ]
        return max(numbered) + 1 if numbered else 0

    def write(
        self,
        rows: list[dict[str, Any]] | pa.Table,
        units: Iterable[str],
        failed: dict[str, int] | None = None,
        name: str | None = None,
        inject: bool = True,
    ) -> StoragePath:
        """Commit ``rows`` (all rows of ``units``, nothing else) as a shard, atomically; ``failed`` names
        the units whose rows failed, with their attempt count. ``name`` (hex) names the shard; by default
        the next number (the driver's writes; a worker names its shard by its units)."""
        units = list(units)
        if isinstance(rows, pa.Table) and len(rows):
            table = self._conform(rows)
        elif rows and not isinstance(rows, pa.Table):
            table = self._conform(pa.Table.from_pylist(rows))
        elif self.schema is not None:
            table = arrow_schema(self.schema).empty_table()
        else:
            table = pa.table({})
        meta = dict(table.schema.metadata or {})
        meta[UNITS_KEY] = json.dumps(units).encode()
        meta[FAILED_KEY] = json.dumps(failed or {}).encode()
        table = table.replace_schema_metadata(meta)
        path = self.folder / f"part-{name or f'{self.next_index():05d}'}.parquet"
        fs.write_table(table, path)
        self.written_here += 1
        if inject:  # the driver's writes; a stage streaming from workers counts its shards itself
            maybe_fail(self.folder.name, self.written_here)
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


def fail_after(folder: str) -> int | None:
    """How many shards of ``folder`` this process may write before the fault injection fires."""
    spec = os.environ.get(FAIL_AFTER_ENV, "").strip()
    target, _, limit = spec.rpartition(":")
    return int(limit) if spec and (not target or target == folder) else None


def inject_failure(folder: str, written: int, pid: int | None = None) -> None:
    """The fault itself: SIGKILL the (driver) process ``pid`` or raise ``InjectedFailure``."""
    if os.environ.get(FAIL_MODE_ENV, "raise") == "kill":
        os.kill(pid or os.getpid(), signal.SIGKILL)
    raise InjectedFailure(f"{FAIL_AFTER_ENV}: failing after shard {written} of {folder}/, as asked")


def maybe_fail(folder: str, written: int) -> None:
    if fail_after(folder) == written:
        inject_failure(folder, written)
