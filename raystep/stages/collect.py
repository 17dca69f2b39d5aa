"""``raystep collect``: problems -> N step-formatted samples each -> split into steps -> graded.

Writes ``problems/`` (the problem rows, once: a rerun reads them back so the unit set never changes)
and ``samples/part-*.parquet`` (every sample with its verdict, ``records.SAMPLE_FIELDS`` plus
``finish_reason``, ``grade_method``, ``sampling``), written by the Ray Data workers
(``raystep.stages.stream``). The unit of resume is a sample (``sample_id``): a rerun skips the samples
already written. Counts and timings go into the run manifest, per-problem accuracy into
``collect/per_problem_accuracy.json``; the wrong samples are the candidates for localization.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from raystep import steps
from raystep.config import RunConfig
from raystep.config_args import add_config_arguments, config_from_args
from raystep.engines import config_and_tokenizer, sampling_defaults
from raystep.engines.base import fan_out, normalize_sampling
from raystep.engines.graded import graded_dataset
from raystep.errors import ROWS_FAILED, EmptyInputError
from raystep.fs import location, read_metadata
from raystep.records import PROBLEM_FIELDS, SAMPLE_FIELDS, Rejects
from raystep.runs import RunDir, report_failures, timed_stage
from raystep.stages.shards import ShardSet, failure_stats
from raystep.stages.stream import done_keys, drop_done, read_stage, scan, start_stage, write_shards

PROBLEM_KEYS: tuple[str, ...] = tuple(PROBLEM_FIELDS)


def load_run_problems(config: RunConfig, run: RunDir) -> list[dict[str, Any]]:
    """The run's problems as rows (for tools and tests; the stage itself streams them)."""
    ensure_problems(config, run)
    return ShardSet(run.stage("problems"), kind="problem", clean=False).rows()


def ensure_problems(config: RunConfig, run: RunDir) -> int:
    """How many problems the run has: those in ``problems/`` when written, else read from the
    configured source and written there as they are read, in shards of ``sampling.shard_size`` (so a
    rerun works on the same units, the stage's readers stream them, and a corpus of any size passes
    through the driver one shard at a time). The manifest records the set once it is whole: shards
    without that record are a write cut short, and are redone."""
    shards = ShardSet(run.stage("problems"), schema=PROBLEM_FIELDS, kind="problem")
    wanted = config.data.model_dump(mode="json")
    recorded = run.read_manifest().get("stages", {}).get("problems", {})
    if shards.files() and (not shards.done_units() or "problems" not in recorded):
        for path in shards.files():  # an empty set (an older raystep) or an interrupted write
            path.unlink()
    if shards.files():
        if recorded.get("data") is not None and recorded["data"] != wanted:
            print(
                f"raystep collect: {run.path}/problems/ was built with data={recorded['data']}; keeping those "
                f"problems (the units of this run), not data={wanted}. Use a new run name for other problems.",
                file=sys.stderr,
            )
        return sum(read_metadata(f).num_rows for f in shards.files())
    from raystep.datasets import iter_problems

    rejects = Rejects(run.stage("problems") / "rejects.jsonl") if config.data.rejects else None
    count = write_problems(iter_problems(config.data, rejects=rejects), shards, config.sampling.shard_size)
    if rejects is not None:
        rejects.save()
    if not count:
        where = config.data.path or config.data.hub_name or config.data.source
        rejected = (
            f" ({rejects.count} rejected, see {rejects.path})"
            if rejects is not None and rejects.count
            else ""
        )
        raise EmptyInputError(f"{where}: no problems to collect{rejected}")
    run.update_manifest("problems", data=wanted, problems=count)
    if rejects is not None and rejects.count:
        run.update_manifest("problems", rejects=rejects.count, reject_reasons=rejects.reasons)
    return count


def write_problems(problems: Iterable[dict[str, Any]], shards: ShardSet, shard_size: int) -> int:
    """Write ``problems`` as shards of ``shard_size`` rows while reading them; returns how many.

    Holds one shard's rows; the ids are unique already (``datasets.iter_problems`` sees to it).
    """
    rows = iter(problems)
    count = 0
    while chunk := list(itertools.islice(rows, shard_size)):
        shards.write(chunk, [p["id"] for p in chunk], inject=False)
        count += len(chunk)
    return count


def sample_requests(
    config: RunConfig, problems: list[dict[str, Any]], tokenizer: Any = None
) -> list[dict[str, Any]]:
    """N engine rows per problem: the step prompt and a per-sample seed, problem fields passed through."""
    base = normalize_sampling(sampling_defaults(config))
    rows = []
    for problem in problems:
        prompt = steps.build_prompt(config.model.template, problem["question"], steps.STEP_PRIMER, tokenizer)
        row = {k: problem.get(k) for k in PROBLEM_KEYS} | {"prompt": prompt}
        for sample in fan_out(row, config.sampling.n, base):
            rows.append({**sample, "sample_id": sample_id(sample)})
    return rows


def sample_id(row: dict[str, Any]) -> str:
    return f"{row['id']}-s{row['sample_index']}"


def _requests(batch: pa.Table, config_json: str) -> pa.Table:
    """Ray Data: a batch of problems -> their sample requests (on the workers)."""
    config, tokenizer = config_and_tokenizer(config_json)
    return pa.Table.from_pylist(sample_requests(config, batch.to_pylist(), tokenizer))


def to_sample(row: dict[str, Any]) -> dict[str, Any]:
    """Engine output -> a sample row (before grading): the response starts with the step primer."""
    response = steps.STEP_PRIMER + row["generated_text"]
    return {
        **{k: row.get(k) for k in PROBLEM_KEYS},
        "sample_id": sample_id(row),
        "sample_index": int(row["sample_index"]),
        "seed": int(row["seed"]),
        "prompt": row["prompt"],
        "response": response,
        "steps": list(steps.split_steps(response).steps),
        "num_tokens": int(row["num_generated_tokens"]),
        "finish_reason": row["finish_reason"],
        "generation_error": row.get("generation_error"),
        "sampling": json.dumps(dict(row["sampling"]), sort_keys=True),
    }


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts and per-problem accuracy of the samples (one pass, any iterable)."""
    per_problem: dict[str, list[int]] = {}
    c: Counter[str] = Counter()
    grade_status: Counter[str] = Counter()
    finish: Counter[str] = Counter()
    for r in rows:
        ok = bool(r["correct"])
        counts = per_problem.setdefault(r["id"], [0, 0])
        counts[0] += ok
        counts[1] += 1
        c["samples"] += 1
        c["correct"] += ok
        c["errors"] += bool(r.get("error"))
        c["generated_tokens"] += int(r.get("num_tokens") or 0)
        grade_status[r["grade_status"]] += 1
        finish[r.get("finish_reason") or "unknown"] += 1
    accuracy = {pid: round(k / n, 4) for pid, (k, n) in sorted(per_problem.items())}
    values = list(accuracy.values())
    return {
        "problems": len(per_problem),
        "samples": c["samples"],
        "correct": c["correct"],
        "wrong": c["samples"] - c["correct"],
        "errors": c["errors"],
        "grade_status": dict(grade_status),
        "finish_reason": dict(finish),
        "generated_tokens": c["generated_tokens"],
        "accuracy": round(sum(values) / len(values), 4) if values else 0.0,
        "problems_all_correct": sum(v == 1.0 for v in values),
        "problems_all_wrong": sum(v == 0.0 for v in values),
        "problems_mixed": sum(0.0 < v < 1.0 for v in values),
        "per_problem_accuracy": accuracy,
    }


def summarize_to(folder: str) -> Callable[[Iterable[dict[str, Any]]], dict[str, Any]]:
    """``summarize``, with the per-problem accuracy written to ``<folder>/per_problem_accuracy.json``
    instead of returned (it grows with the problems; the manifest gets the counts)."""
    return functools.partial(_summarize_to, folder)


def _summarize_to(folder: str, rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    stats = summarize(rows)
    path = location(folder) / "per_problem_accuracy.json"
    path.write_text(json.dumps(stats.pop("per_problem_accuracy")) + "\n")
    return {**stats, "per_problem_accuracy_file": str(path)}


SUMMARY_COLUMNS: list[str] = ["id", "correct", "error", "num_tokens", "grade_status", "finish_reason"]


def run(config: RunConfig) -> dict[str, Any]:
    """Collect samples for every problem not yet written; returns (and records) the stage stats.

    Streams: problems are read from ``problems/`` by Ray Data, fanned out, generated, graded and
    written as shards by the workers; a sample is the unit of resume."""
    run_dir = RunDir.from_config(config)
    run_dir.record_config(config)
    start_stage(config)
    with timed_stage(run_dir, "collect") as stats:
        n_problems = ensure_problems(config, run_dir)
        shards = ShardSet(run_dir.stage("samples"), schema=SAMPLE_FIELDS, kind="sample")
        attempts = shards.reopen_failed("sample_id", config.max_attempts)
        done, n_done = done_keys(shards)
        n = config.sampling.n
        todo = n_problems * n - n_done
        stats.update(
            problems_resumed=n_problems - -(-todo // n),
            problems_todo=-(-todo // n),
            samples_resumed=n_done,
            samples_todo=todo,
            retried=len(attempts),
        )
        start = time.time()
        if todo > 0:
            problems = ShardSet(run_dir.stage("problems"), kind="problem", clean=False)
            ds = read_stage(problems, kind="problem", key="id").map_batches(
                _requests, fn_kwargs={"config_json": config.model_dump_json()}, batch_format="pyarrow"
            )
            ds = graded_dataset(config, drop_done(ds, "sample_id", done), to_sample)
            written = 0
            with tqdm(total=todo, desc="collect: samples", unit="sample", dynamic_ncols=True) as bar:
                for shard in write_shards(
                    ds, shards, "sample_id", config.sampling.shard_size, attempts=attempts
                ):
                    bar.update(shard["rows"])
                    written += 1
            stats["shards_written"] = written
        elapsed = time.time() - start
        stats.update(scan(shards, SUMMARY_COLUMNS, summarize_to(str(run_dir.stage("collect")))))
        stats["generate_seconds"] = round(elapsed, 3)
        stats["samples_per_s"] = round(todo / elapsed, 3) if todo > 0 and elapsed > 0 else None
        stats["shards"] = len(shards.files())
        stats.update(failure_stats(shards, config.max_attempts))
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    stats = run(config_from_args(args))
    print(json.dumps(stats, indent=2))
    return ROWS_FAILED if report_failures("collect", stats, "problems") else 0
