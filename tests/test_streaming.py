"""The data stages stream: rows go from Ray Data readers to shards the workers write, never through the
driver. Guarded by the driver's peak memory on a run whose rows are several times the cap (the old
path read every row into the driver, then sent them all back to Ray), and by resume decisions that
read only shard metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_localize_stage import CHECKER, make_samples

from raystep.records import SAMPLE_FIELDS
from raystep.stages.shards import ShardSet, arrow_schema
from raystep.stages.stream import shard_name

DRIVER_CAP_MB = 150
"""How much more memory the driver of a big run may use than the driver of a tiny one."""

PAD_KB = 64
"""Each sample carries this much reference solution text (it passes through to ``localized/``)."""

DRIVER = textwrap.dedent(
    """
    import json, resource, sys
    from raystep.cli import main
    rc = main(["localize", *[a for item in sys.argv[1:] for a in ("--set", item)]])
    print("RESULT " + json.dumps({"rc": rc, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    """
)


def write_padded_samples(run: Path, problems: int) -> tuple[int, int]:
    """A samples folder of ``problems`` x 4 rows, each padded; returns (rows, bytes of text)."""
    rows, truth = make_samples(problems)
    pad = "x" * (PAD_KB * 1024)
    shards = ShardSet(run / "samples", schema=SAMPLE_FIELDS)
    for i in range(0, len(rows), 64):
        chunk = [{**r, "solution": pad} for r in rows[i : i + 64]]
        shards.write(chunk, [r["sample_id"] for r in chunk])
    return len(truth), len(rows) * PAD_KB * 1024


def localize_in_a_driver(tmp_path: Path, name: str, ray_address: str) -> dict:
    settings = [
        f"storage.root={tmp_path / 'runs'}",
        f"name={name}",
        "localize.methods=[verifier]",
        f"localize.verifier={CHECKER}",
        "localize.batch_size=64",
        "sampling.shard_size=64",
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, *settings],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=900,
    )
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert result, proc.stderr[-3000:]
    return json.loads(result[-1].removeprefix("RESULT "))


@pytest.mark.slow
def test_localize_streams_rows_past_the_driver(tmp_path, ray_local):
    address = ray_local.get_runtime_context().gcs_address
    small_wrong, _ = write_padded_samples(tmp_path / "runs" / "small", problems=20)
    big_wrong, big_bytes = write_padded_samples(tmp_path / "runs" / "big", problems=1500)
    assert big_bytes > 2 * DRIVER_CAP_MB * 2**20  # holding the rows once would break the cap twice over

    small = localize_in_a_driver(tmp_path, "small", address)
    big = localize_in_a_driver(tmp_path, "big", address)
    assert small["rc"] == 0 and big["rc"] == 0

    localized = ShardSet(tmp_path / "runs" / "big" / "localized")
    assert sum(pq.read_metadata(f).num_rows for f in localized.files()) == big_wrong  # all of it written
    grown_mb = (big["maxrss_kb"] - small["maxrss_kb"]) / 1024
    assert grown_mb < DRIVER_CAP_MB, (small, big)


@pytest.mark.slow
def test_the_queue_between_operators_is_bounded_not_held_in_the_driver(ray_local):
    """Ray returns blocks under 100 KiB to their owner, the driver: the queue behind a slow operator
    (here 3,125 blocks, 120 MB of rows) grows in the driver unless ``bound_queue`` caps it."""
    from bench_driver_queue import driver_growth

    address = ray_local.get_runtime_context().gcs_address
    grown = {mode: driver_growth(address, mode, 400_000, queue_mib=16) for mode in ("bounded", "default")}
    assert grown["bounded"]["rows"] == grown["default"]["rows"] == 400_000
    bounded, default = grown["bounded"]["grown_mib"], grown["default"]["grown_mib"]
    assert bounded < 80, grown  # the 16 MiB queue plus Ray Data's per-block bookkeeping
    assert default > bounded + 40, grown  # without the cap the rows queue in the driver


def test_the_driver_drops_ray_datas_per_block_stats_as_shards_commit(tmp_path, ray_local, monkeypatch):
    """Ray Data keeps a stats record per output block of each operator for a dataset's lifetime, the one
    thing in a stage's driver that grows with its rows: ``write_shards`` drops them at every shard. If
    Ray renames what ``forget_block_stats`` reaches into, it drops nothing and this fails."""
    import ray.data

    from raystep.stages import stream

    dropped: list[int] = []
    forget = stream.forget_block_stats
    monkeypatch.setattr(stream, "forget_block_stats", lambda ds: dropped.append(forget(ds)) or dropped[-1])
    rows, _ = make_samples(10)  # 40 rows, in 20 blocks
    table = pa.Table.from_pylist(rows, schema=arrow_schema(SAMPLE_FIELDS))
    blocks = [table.slice(i, 2) for i in range(0, len(rows), 2)]
    ds = ray.data.from_arrow(blocks).map_batches(lambda batch: batch, batch_size=2, batch_format="pyarrow")
    shards = ShardSet(tmp_path / "s", schema=SAMPLE_FIELDS)
    summaries = list(stream.write_shards(ds, shards, "sample_id", shard_size=4))

    assert sum(s["rows"] for s in summaries) == len(rows)
    assert len(dropped) == len(summaries)  # once per shard read
    assert sum(dropped) >= len(summaries)  # every shard's block had a record, dropped
    assert max(dropped) < sum(dropped)  # dropped as they came, never all kept to the end


def test_shards_are_named_by_their_units_so_a_retried_write_replaces_itself():
    assert shard_name(["b", "a"]) == shard_name(["a", "b"])
    assert shard_name(["a"]) != shard_name(["a", "b"])
    assert len(shard_name(["a"])) == 20


def test_deciding_what_is_done_reads_only_metadata(tmp_path, ray_local):
    from raystep.stages.stream import done_keys

    shards = ShardSet(tmp_path / "s", schema=SAMPLE_FIELDS)
    rows, _ = make_samples(3)
    shards.write(rows[:6], [r["sample_id"] for r in rows[:6]])
    shards.write(rows[6:], [r["sample_id"] for r in rows[6:]], failed={rows[-1]["sample_id"]: 1})
    ref, count = done_keys(shards)
    assert count == len(rows)
    assert sorted(ray_local.get(ref).to_pylist()) == sorted(r["sample_id"] for r in rows)


def test_a_stage_read_is_one_block_a_shard_without_ray_datas_footer_actors(tmp_path, ray_local):
    """``read_stage`` asks for Ray Data's V1 Parquet reader (the default V2 reader starts 32 footer-reader
    actors per read) and one block per shard, and leaves the process's Data context as it found it."""
    from raystep.records import PROBLEM_FIELDS
    from raystep.stages.stream import read_stage

    shards = ShardSet(tmp_path / "problems", schema=PROBLEM_FIELDS, kind="problem")
    for s in range(3):
        rows = [{"id": f"p{s}-{i}", "dataset": "t", "question": "q", "answer": str(i)} for i in range(5)]
        shards.write(rows, [r["id"] for r in rows], inject=False)
    context = ray_local.data.DataContext.get_current()
    before = context.use_datasource_v2
    read = read_stage(shards, kind="problem", key="id").materialize()
    assert context.use_datasource_v2 == before
    assert (read.num_blocks(), read.count()) == (3, 15)
    fewer = read_stage(shards, blocks=2).materialize()  # a shuffle's input: several shards a block
    assert (fewer.num_blocks(), fewer.count()) == (2, 15)
    stats = read.stats()
    assert "ReadParquet" in stats and "ListFiles" not in stats


def test_problems_are_written_as_they_are_read_one_shard_in_the_driver(tmp_path):
    """collect's ``problems/``: a corpus passes through the driver one shard at a time."""
    from raystep.records import PROBLEM_FIELDS
    from raystep.stages.collect import write_problems

    pulled = 0

    def corpus(n: int):
        nonlocal pulled
        for i in range(n):
            pulled += 1
            yield {"id": f"p{i}", "dataset": "t", "question": f"q{i}", "answer": str(i)}

    shards = ShardSet(tmp_path / "problems", schema=PROBLEM_FIELDS, kind="problem")
    held: list[int] = []
    write = shards.write

    def spy(rows, units, **kwargs):
        held.append(pulled - sum(held))  # rows read since the last shard: what the driver held
        return write(rows, units, **kwargs)

    shards.write = spy
    assert write_problems(corpus(1000), shards, shard_size=64) == 1000
    assert max(held) == 64 and len(held) == 16  # 15 full shards and one of 40
    assert sorted(shards.done_units(), key=lambda u: int(u[1:])) == [f"p{i}" for i in range(1000)]


def test_a_problems_write_cut_short_is_redone_whole(tmp_path):
    """Shards of ``problems/`` without the manifest's record are an interrupted write: the next run
    rewrites the whole set from the source (the set of units never comes out short)."""
    from raystep.config import load_config
    from raystep.runs import RunDir
    from raystep.stages import collect

    source = tmp_path / "problems.jsonl"
    source.write_text("".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(10)))
    config = load_config(
        None,
        [
            f"storage.root={tmp_path / 'runs'}",
            "name=cut",
            "data.source=jsonl",
            f"data.path={source}",
            "sampling.shard_size=4",
        ],
    )
    run = RunDir.from_config(config)
    first = ShardSet(run.stage("problems"), schema=None)
    first.write([{"id": "x", "dataset": "t", "question": "q", "answer": "1"}], ["x"], inject=False)
    assert collect.ensure_problems(config, run) == 10
    problems = ShardSet(run.stage("problems"), clean=False)
    assert len(problems.done_units()) == 10 and "x" not in problems.done_units()
    assert run.read_manifest()["stages"]["problems"]["problems"] == 10
    assert collect.ensure_problems(config, run) == 10  # recorded: kept as it is
    assert len(problems.files()) == 3
