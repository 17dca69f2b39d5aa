"""Streaming stages: rows go from Ray Data readers through the workers into Parquet shards that the
workers write themselves. The driver plans, counts and records; it never holds a stage's rows.

A stage is ``read -> keep the rows to do -> work -> write_shards``:

- ``read_stage(folder)`` reads the previous stage's shards with Ray Data (only the columns asked for).
- ``done_keys(shards)`` is the set of units already written, computed in a Ray task from the shards'
  metadata alone (a million units cost one small Arrow array in the object store, nothing in the
  driver). ``drop_done`` filters the stream against it on the workers.
- ``write_shards`` ends the stream: each batch of ``shard_size`` rows becomes one shard, named by the
  hash of its units, written atomically by the worker that holds the batch (so a retried task rewrites
  the same file). The unit of resume is one row (its ``key``): a row is done once its shard is on disk,
  a stage killed at any point and rerun ends with exactly the rows of an uninterrupted run. Rows kept
  with an error are recorded as failed units in their shard, for ``ShardSet.reopen_failed``.
- ``start_stage(config)`` is a stage's first call: connect to Ray (or start a local one) and ``bound_queue``.
- ``bound_queue(config)`` caps the bytes Ray Data keeps queued between a stage's operators: blocks
  under Ray's inline limit (100 KiB) are returned to their owner, the driver, so an uncapped queue
  behind a slow operator would hold rows in the driver after all.
- The driver iterates one small summary row per shard written (rows, failed units): the progress bar,
  the counts, and the ``RAYSTEP_FAIL_AFTER_SHARDS`` fault injection of the resume tests. At each, it
  drops the per-block stats Ray Data keeps for ``Dataset.stats()`` (``forget_block_stats``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from raystep import fs
from raystep.local_ray import ensure_ray
from raystep.records import FieldSpec, RowError, check_row
from raystep.stages.shards import FAIL_MODE_ENV, ShardSet, fail_after, inject_failure

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.data import Dataset

    from raystep.config import RunConfig

RowTest = Callable[[dict[str, Any]], bool]
T = TypeVar("T")


def start_stage(config: RunConfig) -> None:
    """What every stage does first: connect to Ray (a local one when there is none) and cap the queue."""
    ensure_ray()
    bound_queue(config)


def bound_queue(config: RunConfig) -> None:
    """Cap Ray Data's object-store budget for this driver's datasets at ``sampling.queue_mib``.

    Ray returns a task's result under 100 KiB (``max_direct_call_object_size``) to the task's owner
    instead of the object store, and the driver owns every block of a dataset it runs: a batch of 128
    short rows is such a block. Ray Data queues blocks behind a slower operator up to its budget (a share
    of the whole store by default), so without a cap that queue, rows included, grows in the driver.
    """
    import ray.data

    options = ray.data.DataContext.get_current().execution_options
    options.resource_limits = options.resource_limits.copy(
        object_store_memory=config.sampling.queue_mib * 2**20
    )


def has_error(row: dict[str, Any]) -> bool:
    """The default failure test: the row was kept with an ``error``."""
    return bool(row.get("error"))


def read_stage(
    shards: ShardSet,
    columns: list[str] | None = None,
    kind: str | None = None,
    key: str | None = None,
    blocks: int | None = None,
) -> Dataset:
    """The shards of a stage folder as a Ray Data dataset (an error when there are none): one block a
    shard, or ``blocks`` blocks (several shards a block: what a shuffle wants, see rectify's pairs).

    With ``kind``, every row is checked against its field spec on the workers: a bad row is a
    ``RowError`` naming the shard and the row's ``key``.
    """
    import ray.data

    files = [fs.arrow_args(f) for f in shards.files()]
    if not files:
        raise FileNotFoundError(f"{shards.folder}: no shards")
    # Ray Data's DataSourceV2 Parquet reader (the default) starts 32 footer-reader actors for every read
    # (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS): 13-25 s per stage on 2 cores before a row moves, whatever the
    # size; the V1 reader fetches footers in the driver (in tasks for many files): 15.8 s vs 0.2 s a read
    # here (benchmarks/bench_stage_read.py).
    context = ray.data.DataContext.get_current()
    v2, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        ds = ray.data.read_parquet(
            [where for where, _ in files],
            filesystem=files[0][1],  # None: local; else the run folder's pyarrow filesystem
            columns=columns,
            include_paths=kind is not None,
            override_num_blocks=min(blocks or len(files), len(files)),  # auto-split: 16 tasks a 64-row shard
        )
    finally:
        context.use_datasource_v2 = v2
    if kind is not None:
        ds = ds.map_batches(
            _check_rows, fn_kwargs={"kind": kind, "key": key}, batch_format="pyarrow", zero_copy_batch=True
        )
    return ds


def _check_rows(batch: pa.Table, kind: str, key: str | None) -> pa.Table:
    for row in batch.to_pylist():
        try:
            check_row({k: v for k, v in row.items() if k != "path"}, kind)
        except ValueError as exc:
            where = f" ({key} {row.get(key)!r})" if key else ""
            raise RowError(f"{row.get('path')}{where}: {exc}") from None
    return batch.drop_columns(["path"])


def _done_array(folder: str) -> pa.Array:
    return pa.array(sorted(ShardSet(folder, clean=False).done_units()), type=pa.string())


def done_keys(shards: ShardSet) -> tuple[ObjectRef, int]:
    """The units already written (read from shard metadata in a Ray task), as an object ref to an
    Arrow string array, and how many there are."""
    import ray

    ref = ray.remote(num_cpus=0)(_done_array).remote(str(shards.folder))
    count = ray.get(ray.remote(num_cpus=0)(_length).remote(ref))
    return ref, int(count)


def _length(array: pa.Array) -> int:
    return len(array)


_DONE_CACHE: dict[str, pa.Array] = {}


def _done_of(ref: ObjectRef) -> pa.Array:
    import ray

    name = ref.hex()
    if name not in _DONE_CACHE:
        _DONE_CACHE.clear()
        _DONE_CACHE[name] = ray.get(ref)
    return _DONE_CACHE[name]


def _drop_done(batch: pa.Table, key: str, done: list[ObjectRef]) -> pa.Table:
    keys = batch.column(key).cast(pa.string())
    return batch.filter(pc.invert(pc.is_in(keys, value_set=_done_of(done[0]))))


def drop_done(ds: Dataset, key: str, done: ObjectRef) -> Dataset:
    """Keep the rows whose ``key`` is not in ``done`` (filtered on the workers)."""
    return ds.map_batches(
        _drop_done,
        fn_kwargs={"key": key, "done": [done]},  # in a list: Ray passes the ref, the worker gets it once
        batch_format="pyarrow",
        zero_copy_batch=True,
    )


def shard_name(units: list[str]) -> str:
    """A shard's name from its units: a retried write of the same units replaces the same file."""
    return hashlib.sha256("\n".join(sorted(units)).encode()).hexdigest()[:20]


def _write_batch(
    batch: pa.Table,
    folder: str,
    schema: FieldSpec | None,
    key: str,
    failed: RowTest,
    attempts: list[ObjectRef] | None,
    fault: dict[str, Any] | None,
) -> pa.Table:
    import os

    import ray

    rows = batch.to_pylist() if failed is not has_error else None
    units = [str(u) for u in batch.column(key).to_pylist()]
    if failed is has_error and "error" in batch.column_names:
        bad = [u for u, e in zip(units, batch.column("error").to_pylist(), strict=True) if e]
    elif rows is not None:
        bad = [str(r[key]) for r in rows if failed(r)]
    else:
        bad = []
    before = ray.get(attempts[0]) if attempts else {}
    path = ShardSet(folder, schema=schema, clean=False).write(
        batch,
        units,
        failed={u: before.get(u, 0) + 1 for u in bad},
        name=shard_name(units),
        inject=False,
    )
    if fault and len(ShardSet(folder, clean=False).files()) >= fault["at"]:
        os.environ[FAIL_MODE_ENV] = fault["mode"]
        inject_failure(path.parent.name, fault["at"], fault["pid"])
    return pa.table({"shard": [path.name], "rows": [len(units)], "failed": [len(bad)]})


def write_shards(
    ds: Dataset,
    shards: ShardSet,
    key: str,
    shard_size: int,
    failed: RowTest = has_error,
    attempts: dict[str, int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Write ``ds`` as shards of ``shard_size`` rows from the workers; yield one summary per shard
    (``shard``, ``rows``, ``failed``) as it commits. ``key`` names each row's unit; ``failed(row)``
    says whether a row is kept with an error (retried by a rerun); ``attempts`` holds the earlier
    attempts of reopened units."""
    import os

    import ray

    attempts_ref = [ray.put(attempts)] if attempts else None
    after = fail_after(shards.folder.name)  # resume tests: the K-th shard of this run fails the stage
    fault = (
        {
            "at": len(shards.files()) + after,
            "mode": os.environ.get(FAIL_MODE_ENV, "raise"),
            "pid": os.getpid(),
        }
        if after
        else None
    )
    out = ds.map_batches(
        _write_batch,
        fn_kwargs={
            "folder": str(shards.folder),
            "schema": shards.schema,
            "key": key,
            "failed": failed,
            "attempts": attempts_ref,
            "fault": fault,
        },
        batch_size=shard_size,
        batch_format="pyarrow",
    )
    try:
        for summary in out.iter_rows():  # one small row per shard, never the stage's rows
            forget_block_stats(out)
            yield dict(summary)
    except Exception as exc:
        cause = _injected(exc)
        if cause is not None:
            raise cause from None
        raise


def forget_block_stats(ds: Dataset) -> int:
    """Drop the stats record Ray Data keeps per output block of each operator of ``ds``'s running
    execution (for ``Dataset.stats()``, for the dataset's lifetime); return how many were dropped.

    They are the one thing in the driver that grows with a stage's rows (about 40 bytes a row at
    ``sampling.batch_size`` 128, measured in docs/scale.md), and Ray 2.60 has no setting for them, so
    this reaches into the executor (``_current_executor._topology``, ``_output_blocks_stats``); if Ray
    renames those it drops nothing, and ``tests/test_streaming.py`` fails.
    """
    executor = getattr(ds, "_current_executor", None)
    dropped = 0
    for op in getattr(executor, "_topology", None) or ():
        stats = getattr(op, "_output_blocks_stats", None)
        if isinstance(stats, list):
            dropped += len(stats)
            stats.clear()
    return dropped


def _injected(exc: BaseException) -> BaseException | None:
    """The ``InjectedFailure`` a worker raised, out of Ray's wrapping (tests look for that class)."""
    from raystep.stages.shards import InjectedFailure

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, InjectedFailure):
            return InjectedFailure(str(seen).splitlines()[-1])
        seen = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__
    text = str(exc)
    return (
        InjectedFailure(text[text.index("RAYSTEP_FAIL") :].splitlines()[0])
        if "InjectedFailure" in text
        else None
    )


def _rows_of(folder: str, columns: list[str]) -> Iterator[dict[str, Any]]:
    for path in ShardSet(folder, clean=False).files():
        names = set(fs.read_schema(path).names)
        yield from fs.read_table(path, columns=[c for c in columns if c in names]).to_pylist()


def _scan(folder: str, columns: list[str], fn: Callable[[Iterator[dict[str, Any]]], T]) -> T:
    return fn(_rows_of(folder, columns))


def scan(shards: ShardSet, columns: list[str], fn: Callable[[Iterator[dict[str, Any]]], T]) -> T:
    """``fn(rows)`` over a stage's rows (only ``columns``; absent ones left out), in a Ray task that
    reads one shard at a time: how summaries are made without the rows coming to the driver."""
    import ray

    return ray.get(ray.remote(num_cpus=0)(_scan).remote(str(shards.folder), list(columns), fn))
