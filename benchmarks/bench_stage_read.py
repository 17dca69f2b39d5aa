"""What reading a stage's shards costs before a row moves: Ray Data's two Parquet readers, side by side.

Every data stage starts by reading the previous stage's shards with Ray Data. Ray 2.60's default
Parquet reader (DataSourceV2) lists the files in a task that starts 32 footer-reader actors
(``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``) for every read, whatever the number of files; on a 2-core
machine each is a new Python process. The V1 reader fetches the footers in the driver (in tasks when
there are many files). ``raystep.stages.stream.read_stage`` uses V1 with one block per shard.

This script writes a stage folder of ``--shards`` problem shards (``--rows`` rows each), starts a local
Ray as a raystep run does, and reads the folder ``--repeats`` times each way, in one run:

- ``v2``: ``ray.data.read_parquet`` with Ray Data's default reader;
- ``read_stage``: raystep's read (V1 reader, one block per shard, rows checked on the workers).

It prints the median seconds of each read (``materialize()``) and their ratio; the first read of each
(worker start-up) is reported apart.

    python benchmarks/bench_stage_read.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def write_folder(folder: Path, shards: int, rows: int) -> None:
    from raystep.records import PROBLEM_FIELDS
    from raystep.stages.shards import ShardSet

    out = ShardSet(folder, schema=PROBLEM_FIELDS, kind="problem")
    for s in range(shards):
        batch = [
            {"id": f"p{s}-{i}", "dataset": "bench", "question": f"What is {s} + {i}?", "answer": str(s + i)}
            for i in range(rows)
        ]
        out.write(batch, [r["id"] for r in batch], inject=False)


def timed(read: Callable[[], int], repeats: int, expected: int) -> tuple[float, list[float]]:
    """Seconds of the first read and of each later one (every read must see every row)."""
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        n = read()
        seconds.append(time.perf_counter() - start)
        if n != expected:
            raise SystemExit(f"read {n} rows, expected {expected}")
    return seconds[0], seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray
    import ray.data

    from raystep.local_ray import ensure_ray
    from raystep.stages.shards import ShardSet
    from raystep.stages.stream import read_stage

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "problems"
        write_folder(folder, args.shards, args.rows)
        shards = ShardSet(folder, kind="problem", clean=False)
        files = [str(f) for f in shards.files()]
        expected = args.shards * args.rows
        ensure_ray()
        results = {
            "v2": timed(lambda: ray.data.read_parquet(files).materialize().count(), args.repeats, expected),
            "read_stage": timed(
                lambda: read_stage(shards, kind="problem", key="id").materialize().count(),
                args.repeats,
                expected,
            ),
        }
    print(f"{args.shards} shards x {args.rows} rows, {args.repeats} reads each after a first one")
    for name, (first, rest) in results.items():
        print(f"  {name:10s} first {first:6.2f} s, then median {statistics.median(rest):6.2f} s")
    ratio = statistics.median(results["v2"][1]) / statistics.median(results["read_stage"][1])
    print(f"read_stage is {ratio:.1f}x faster than Ray Data's default reader")
    ray.shutdown()


if __name__ == "__main__":
    main()
