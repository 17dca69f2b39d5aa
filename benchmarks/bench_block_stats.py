"""What dropping Ray Data's per-block stats costs a stage: collect with ``forget_block_stats`` and with it
made a no-op, side by side.

``raystep.stages.stream.write_shards`` calls ``forget_block_stats`` at every shard summary the driver
reads, so that the stats record Ray Data keeps per output block (for ``Dataset.stats()``) does not grow
with the rows in the driver (docs/scale.md). This script runs the same collect (the demo's tiny policy on
vLLM's CPU build, ``--multiple`` x the demo's 200 problems x 4 samples) in fresh driver processes, each
on its own local Ray, alternating the two modes in ``--rounds`` blocks of A B B A, so a drift of the
machine over the run falls on both. For each run it prints the steady rate (the rows of every shard
after the first over the seconds from the first shard's commit to the last: the engine's start-up is
left out), the wall time, how many stats records were dropped, and the driver's private peak and its
rise over the stage's second half (``memory_meter.MemoryPeaks``); then each mode's mean and the ratio.

    python benchmarks/bench_block_stats.py                   # 30x (24,000 samples), A B B A A B B A (36 min)
    python benchmarks/bench_block_stats.py --multiple 10 --rounds 1

At a few shards a run (1x: 4) the steady rate is noise; from 10x on it has tens of shards.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import mean
from typing import Any

from bench_scale import ensure_policy_dir, fresh_driver, scale_config
from memory_meter import MemoryPeaks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = {"trim": "forget_block_stats at every shard", "keep": "forget_block_stats a no-op"}


def one_run(root: str, policy: str, multiple: int, mode: str, name: str) -> dict[str, Any]:
    """collect once in this process, ``forget_block_stats`` real (``trim``) or a no-op (``keep``)."""
    from raystep.local_ray import ensure_ray
    from raystep.stages import collect, stream

    config = scale_config(root, policy, multiple, name)
    ensure_ray()
    forget, dropped, commits = stream.forget_block_stats, [], []

    def counted(ds: Any) -> int:
        dropped.append(forget(ds) if mode == "trim" else 0)
        return dropped[-1]

    write = collect.write_shards

    def timed(*args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for summary in write(*args, **kwargs):
            commits.append((time.perf_counter(), int(summary["rows"])))
            yield summary

    stream.forget_block_stats, collect.write_shards = counted, timed
    start = time.perf_counter()
    with MemoryPeaks() as memory:
        stats = collect.run(config)
    seconds = time.perf_counter() - start
    steady_rows = sum(rows for _, rows in commits[1:])
    steady_seconds = commits[-1][0] - commits[0][0] if len(commits) > 1 else 0.0
    return {
        "mode": mode,
        "rows": int(stats["samples_todo"]),
        "shards": len(commits),
        "seconds": round(seconds, 1),
        "steady_rows_per_s": round(steady_rows / steady_seconds, 1) if steady_seconds else 0.0,
        "records_dropped": sum(dropped),
        "private_peak_mib": round(memory.peaks["private"], 1),
        "private_second_half_rise_mib": round(memory.second_half_rise(), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--multiple", type=int, default=30, help="multiples of the demo's 200 problems")
    parser.add_argument("--rounds", type=int, default=2, help="A B B A blocks to run")
    parser.add_argument("--root", default=None, help="run folders (default: a new temp folder)")
    parser.add_argument("--policy", default=None, help="a policy folder (default: the demo's warm-up)")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "NAME"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from raystep.console import quiet_libraries

    quiet_libraries()
    if args.one is not None:
        result = one_run(args.root, args.policy, args.multiple, *args.one)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    root = args.root or tempfile.mkdtemp(prefix="raystep-bench-block-stats-")
    policy = args.policy or ensure_policy_dir(root)
    order = ["trim", "keep", "keep", "trim"] * args.rounds
    results = []
    for i, mode in enumerate(order):
        name = f"block-stats-{i}-{mode}"
        run = ["--root", root, "--policy", policy, "--multiple", str(args.multiple), "--one", mode, name]
        results.append(fresh_driver(__file__, *run))
        print(json.dumps(results[-1]), flush=True)

    print(f"\ncollect at {args.multiple}x ({results[0]['rows']:,} samples), fresh driver and Ray each run")
    print(
        "| run | mode | steady rows/s | wall s | records dropped | private peak MiB | second-half rise MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i, r in enumerate(results):
        print(
            f"| {i} | {MODES[r['mode']]} | {r['steady_rows_per_s']} | {r['seconds']} | {r['records_dropped']} "
            f"| {r['private_peak_mib']} | {r['private_second_half_rise_mib']} |"
        )
    rate = {m: mean(r["steady_rows_per_s"] for r in results if r["mode"] == m) for m in MODES}
    wall = {m: mean(r["seconds"] for r in results if r["mode"] == m) for m in MODES}
    print(
        f"steady rows/s, trim / no-op: {rate['trim']:.1f} / {rate['keep']:.1f} = {rate['trim'] / rate['keep']:.3f}; "
        f"wall seconds {wall['trim']:.1f} / {wall['keep']:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
