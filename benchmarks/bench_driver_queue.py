"""The driver's memory when blocks queue between a stage's operators: Ray Data's default budget vs
``raystep.stages.stream.bound_queue``, side by side.

Ray returns a task's result under 100 KiB (``max_direct_call_object_size``) to the task's owner instead
of the object store, and the driver owns every block of a dataset it runs. A generation stage makes
such blocks (a batch of 128 short rows is about 40 KB), and Ray Data queues them behind a slower
operator up to its object-store budget, a share of the whole store by default: the queue, rows
included, is then in the driver. ``bound_queue`` caps the budget at ``sampling.queue_mib``.

This script starts a local Ray as a raystep run does, then runs the same dataset in two fresh driver
processes, one with Ray Data's default budget and one bounded: an engine-like actor makes ``--rows``
rows of 300 characters in blocks of 128, a slower task consumes them. Each driver prints how much its
private resident memory (``memory_meter.MemoryPeaks``, sampled 5 times a second) rose to over its level
after a warm-up run; the script prints both and their difference (Linux: reads ``/proc``).

    python benchmarks/bench_driver_queue.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import pyarrow as pa, ray, ray.data
    from raystep.config import load_config
    from raystep.local_ray import ensure_ray
    from memory_meter import MemoryPeaks, resident
    from raystep.stages.stream import bound_queue

    mode, rows, queue_mib = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ensure_ray()  # joins the Ray at RAY_ADDRESS as a raystep stage does (a loopback-only Ray included)
    if mode == "bounded":
        bound_queue(load_config(None, [f"sampling.queue_mib={queue_mib}"]))

    class Generate:  # an engine replica: batches of 128 short rows, blocks under Ray's 100 KiB
        def __call__(self, batch):
            return pa.table({"id": batch["id"], "text": pa.array(["x" * 300] * len(batch["id"]))})

    def write(batch):  # one at a time and slower than the replica, so its input queues
        time.sleep(0.01)
        return pa.table({"rows": [len(batch)]})

    def run(n):
        ds = ray.data.range(n, override_num_blocks=max(1, n // 256)).map_batches(
            Generate, batch_size=128, compute=ray.data.ActorPoolStrategy(size=1), batch_format="pyarrow"
        )
        written = ds.map_batches(write, compute=ray.data.TaskPoolStrategy(size=1), batch_format="pyarrow")
        return sum(r["rows"] for r in written.iter_rows())

    run(2560)
    before = resident()["private"]
    with MemoryPeaks(every=0.2) as memory:
        start = time.perf_counter()
        done = run(rows)
        seconds = time.perf_counter() - start
    grown = memory.peaks["private"] - before
    print("RESULT " + json.dumps({"rows": done, "grown_mib": round(grown, 1), "seconds": round(seconds, 1)}))
    """
)


def driver_growth(address: str, mode: str, rows: int, queue_mib: int = 16) -> dict:
    """Run the dataset in a fresh driver (``mode``: ``default`` or ``bounded``); its rows, its private
    memory's peak growth over a warm-up run in MiB, and its seconds."""
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, mode, str(rows), str(queue_mib)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not result:
        raise RuntimeError(
            f"the {mode} driver printed no result (rc {proc.returncode}): {proc.stderr[-3000:]}"
        )
    return json.loads(result[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--queue-mib", type=int, default=16)
    args = parser.parse_args()

    import ray

    from raystep.local_ray import ensure_ray

    ensure_ray()
    address = ray.get_runtime_context().gcs_address
    results = {
        mode: driver_growth(address, mode, args.rows, args.queue_mib) for mode in ("default", "bounded")
    }
    print(f"{args.rows:,} rows of 300 characters in blocks of 128, a slower consumer, one fresh driver each")
    for mode, out in results.items():
        label = "Ray Data's default budget" if mode == "default" else f"bound_queue, {args.queue_mib} MiB"
        print(f"  {label:28s} driver grew {out['grown_mib']:7.1f} MiB in {out['seconds']:6.1f} s")
    print(
        f"bounded: {results['default']['grown_mib'] - results['bounded']['grown_mib']:.1f} MiB less driver "
        f"memory, {results['default']['seconds'] / results['bounded']['seconds']:.2f}x the speed"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
