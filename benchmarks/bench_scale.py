"""Benchmark: the data stages as the work grows, and deciding what is done at a million rows.

Case 1 runs collect -> localize (the exact verifier) -> rectify on the arithmetic world with the demo's
tiny policy on vLLM's CPU build (``sampling.engine: vllm``, ``ray.data.llm``), at several multiples of
the demo's 200 problems x 4 samples. Each size runs in a fresh driver process on one local Ray, so the
driver's peak memory (``ru_maxrss``) is its own. Per size and stage it prints rows/s, generated
tokens/s, seconds per 1,000 rows (start-up included: each stage starts its engine) and the driver's
peak resident memory (``memory_meter.MemoryPeaks``: sampled twice a second and split into private pages
and the shared object-store pages the driver has touched, which Linux counts in its RSS and so in
``ru_maxrss``), and how far the private peak rose in the stage's second half; per size the
driver's ``ru_maxrss`` and Ray's object store use and spilling (from ``ray memory --stats-only``'s
summary, read in the driver); then the ratios between sizes, and the marginal rate between two sizes
(extra rows over extra seconds), which cancels each stage's fixed start-up.

Case 2 fills ``samples/``, ``localized/`` and ``rectified/`` with ``--million`` synthetic rows (tiny
rows, written directly with pyarrow) and times how long localize and rectify take to decide what is
done (``raystep.stages.stream.done_keys``: shard metadata read in a Ray task) and the driver's memory
for it.

    python benchmarks/bench_scale.py                          # sizes 1 10 100, then the million-row case
    python benchmarks/bench_scale.py --sizes 1 10 --million 1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memory_meter import MemoryPeaks, rss_mb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:
    from raystep.config import RunConfig

DEMO_PROBLEMS = 200


def object_store() -> dict[str, float]:
    """Object store use and spilling so far, from Ray's memory summary (MiB)."""
    import re

    from ray._private.internal_api import memory_summary

    text = memory_summary(stats_only=True)
    used = re.search(r"Plasma memory usage (\d+) MiB", text)
    spilled = re.search(r"Spilled (\d+) MiB", text)
    return {
        "object_store_used_mib": float(used.group(1)) if used else 0.0,
        "spilled_mib": float(spilled.group(1)) if spilled else 0.0,
    }


def scale_config(root: str, policy: str, multiple: int, name: str | None = None) -> RunConfig:
    """The demo's run at ``multiple`` x its problems, localized by the exact verifier."""
    from raystep.config import load_config
    from raystep.experiments.demo import demo_overrides

    settings = [
        *demo_overrides("full", 8321),
        f"storage.root={root}",
        f"name={name or f'scale-{multiple}x'}",
        f"model.path={policy}",
        f"data.limit={DEMO_PROBLEMS * multiple}",
        "localize.methods=[verifier]",
        "sampling.batch_size=128",
        "sampling.shard_size=256",
    ]
    return load_config(None, settings)


def one_size(root: str, policy: str, multiple: int) -> dict[str, Any]:
    """collect -> localize -> rectify for ``multiple`` x the demo's problems, in this process."""
    from raystep.local_ray import ensure_ray
    from raystep.stages import collect, localize, rectify

    config = scale_config(root, policy, multiple)
    ensure_ray()
    out: dict[str, Any] = {"multiple": multiple, "problems": DEMO_PROBLEMS * multiple}
    for name, stage, rows_key, tokens in (
        ("collect", collect, "samples_todo", "generated_tokens"),
        ("localize", localize, "todo", None),
        ("rectify", rectify, "continuations_todo", "continuation_tokens"),
    ):
        start = time.time()
        with MemoryPeaks() as memory:
            stats = stage.run(config)
        seconds = time.time() - start
        rows = int(stats.get(rows_key) or 0)
        out[name] = {
            "rows": rows,
            "seconds": round(seconds, 1),
            "rows_per_s": round(rows / seconds, 1),
            "s_per_1000_rows": round(1000 * seconds / max(rows, 1), 2),
            "driver_mib": memory.rounded(),
        }
        if tokens:
            out[name]["tokens_per_s"] = round(int(stats[tokens]) / seconds, 1)
    out["pairs"] = int(stats.get("pairs") or 0)
    out["driver_peak_mib"] = round(rss_mb(), 1)
    out.update(object_store())
    return out


def fill_million(root: Path, rows: int, per_shard: int = 256) -> None:
    """samples/, localized/ and rectified/ with ``rows`` tiny rows each, every row done."""
    import pyarrow as pa

    from raystep.records import LOCALIZED_FIELDS, SAMPLE_FIELDS
    from raystep.stages.shards import ShardSet, arrow_schema

    for folder, spec, key in (
        ("samples", SAMPLE_FIELDS, "sample_id"),
        ("localized", LOCALIZED_FIELDS, "sample_id"),
        ("rectified", None, "continuation_id"),
    ):
        shards = ShardSet(root / folder, schema=spec)
        schema = arrow_schema(spec) if spec else None
        for start in range(0, rows, per_shard):
            ids = [f"p{i // 4}-s{i % 4}" for i in range(start, min(rows, start + per_shard))]
            if key == "continuation_id":
                ids = [f"{i}-c0" for i in ids]
            n = len(ids)
            if schema is None:
                table = pa.table({key: ids, "sample_id": ids, "correct": [False] * n, "error": [None] * n})
            else:
                columns = {}
                for field in schema:
                    if field.name == key:
                        columns[field.name] = pa.array(ids, field.type)
                    elif field.name in ("correct",):
                        columns[field.name] = pa.array([False] * n, field.type)
                    elif pa.types.is_list(field.type):
                        columns[field.name] = pa.array([["Step 1: 1 + 1 = 3\n"]] * n, field.type)
                    elif pa.types.is_string(field.type):
                        columns[field.name] = pa.array(["x"] * n, field.type)
                    elif pa.types.is_integer(field.type):
                        columns[field.name] = pa.array([1] * n, field.type)
                    else:
                        columns[field.name] = pa.nulls(n, field.type)
                table = pa.table(columns)
                table = table.set_column(table.column_names.index("error"), "error", pa.nulls(n, pa.string()))
            shards.write(table, ids, inject=False)


def million_case(rows: int) -> dict[str, Any]:
    from raystep.local_ray import ensure_ray
    from raystep.stages.shards import ShardSet
    from raystep.stages.stream import done_keys

    root = Path(tempfile.mkdtemp(prefix="raystep-million-"))
    start = time.time()
    fill_million(root, rows)
    out: dict[str, Any] = {"rows": rows, "fill_seconds": round(time.time() - start, 1)}
    ensure_ray()
    before = rss_mb()
    for stage, folder in (("localize", "localized"), ("rectify", "rectified")):
        start = time.time()
        _, count = done_keys(ShardSet(root / folder, clean=False))
        out[f"{stage}_decide_seconds"] = round(time.time() - start, 2)
        out[f"{stage}_done_units"] = count
    out["shards_per_folder"] = len(ShardSet(root / "localized", clean=False).files())
    out["driver_peak_mib_before"] = round(before, 1)
    out["driver_peak_mib_after"] = round(rss_mb(), 1)
    return out


def ensure_policy_dir(root: str) -> str:
    from raystep.config import load_config
    from raystep.experiments.demo import demo_overrides
    from raystep.synth.policy import ensure_policy, settings_from_config

    config = load_config(None, demo_overrides("full", 8321))
    policy_dir, _ = ensure_policy(Path(root) / "policy", settings_from_config(config), True)
    return str(policy_dir)


def fresh_driver(script: str, *args: str) -> dict[str, Any]:
    """Run ``script args`` in a fresh Python process (a driver of its own, so its peak memory is its
    own) and return the JSON of its last ``RESULT`` line."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{' '.join(args)}: failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[1, 10, 100], help="multiples of 200 problems"
    )
    parser.add_argument("--million", type=int, default=1_000_000, help="rows of the resume case (0: skip)")
    parser.add_argument("--root", default=None, help="run folders (default: a new temp folder)")
    parser.add_argument("--policy", default=None, help="a policy folder (default: the demo's warm-up)")
    parser.add_argument("--one-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--one-million", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from raystep.console import quiet_libraries

    quiet_libraries()
    if args.one_size is not None:
        print("RESULT " + json.dumps(one_size(args.root, args.policy, args.one_size)), flush=True)
        return 0
    if args.one_million is not None:
        print("RESULT " + json.dumps(million_case(args.one_million)), flush=True)
        return 0

    root = args.root or tempfile.mkdtemp(prefix="raystep-bench-scale-")
    policy = args.policy or ensure_policy_dir(root)
    results = []
    runs = [["--one-size", str(m)] for m in args.sizes] + (
        [["--one-million", str(args.million)]] if args.million else []
    )
    for extra in runs:
        results.append(fresh_driver(__file__, "--root", root, "--policy", policy, *extra))
        print(json.dumps(results[-1]), flush=True)

    sized = [r for r in results if "multiple" in r]
    if sized:
        print("\n| size | problems | stage | rows | rows/s | s / 1,000 rows | tokens/s |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in sized:
            for stage in ("collect", "localize", "rectify"):
                s = r[stage]
                print(
                    f"| {r['multiple']}x | {r['problems']} | {stage} | {s['rows']} | {s['rows_per_s']} | "
                    f"{s['s_per_1000_rows']} | {s.get('tokens_per_s', '')} |"
                )
        print(
            "\n| size | stage | driver peak RSS (MiB) | of it private | of it object-store pages "
            "| private peak's rise in the stage's second half |"
            "\n| --- | --- | --- | --- | --- | --- |"
        )
        for r in sized:
            for stage in ("collect", "localize", "rectify"):
                m = r[stage]["driver_mib"]
                print(
                    f"| {r['multiple']}x | {stage} | {m['rss']} | {m['private']} | {m['object_store']} "
                    f"| {m['private_second_half_rise']} |"
                )
        print("\n| size | driver peak (ru_maxrss, MiB) | object store used (MiB) | spilled (MiB) | pairs |")
        print("| --- | --- | --- | --- | --- |")
        for r in sized:
            print(
                f"| {r['multiple']}x | {r['driver_peak_mib']} | {r['object_store_used_mib']} | "
                f"{r['spilled_mib']} | {r['pairs']} |"
            )
        base = sized[0]
        for r in sized[1:]:
            for stage in ("collect", "localize", "rectify"):
                ratio = r[stage]["rows_per_s"] / max(base[stage]["rows_per_s"], 1e-9)
                print(f"{stage} rows/s at {r['multiple']}x / at {base['multiple']}x: {ratio:.2f}")
        # each stage pays a fixed start-up (an engine, actor pools): the rate between two sizes cancels it
        for small, big in zip(sized, sized[1:], strict=False):
            for stage in ("collect", "localize", "rectify"):
                rows = big[stage]["rows"] - small[stage]["rows"]
                seconds = big[stage]["seconds"] - small[stage]["seconds"]
                if rows > 0 and seconds > 0:
                    print(
                        f"{stage} marginal rows/s from {small['multiple']}x to {big['multiple']}x: "
                        f"{rows / seconds:.1f} (fixed start-up about "
                        f"{small[stage]['seconds'] - small[stage]['rows'] * seconds / rows:.0f} s)"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
