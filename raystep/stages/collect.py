"""``raystep collect``: problems -> N step-formatted samples each -> split into steps -> graded.

Writes ``problems/`` (the problem rows, once: a rerun reads them back so the unit set never changes)
and ``samples/part-NNNNN.parquet`` (every sample with its verdict, ``records.SAMPLE_FIELDS`` plus
``finish_reason``, ``grade_method``, ``sampling``). The unit of resume is a problem: a shard holds
all N samples of each problem it lists, so a rerun skips the problems already written. Per-problem
accuracy, counts and timings go into the run manifest; the wrong samples are the candidates for
localization.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import Any

from tqdm import tqdm

from raystep import steps
from raystep.cli import add_config_arguments, config_from_args
from raystep.config import RunConfig
from raystep.engines import prompt_tokenizer, sampling_defaults
from raystep.engines.base import fan_out, normalize_sampling
from raystep.engines.graded import fold_errors, generate_and_grade
from raystep.errors import ROWS_FAILED, EmptyInputError
from raystep.records import PROBLEM_FIELDS, SAMPLE_FIELDS, Rejects
from raystep.runs import RunDir, report_failures, timed_stage
from raystep.stages.shards import ShardSet, UnitBuffer, failure_stats, require_unique

PROBLEM_KEYS: tuple[str, ...] = tuple(PROBLEM_FIELDS)


def load_run_problems(config: RunConfig, run: RunDir) -> list[dict[str, Any]]:
    """The run's problems: read back from ``problems/`` when written, else loaded and written there."""
    shards = ShardSet(run.stage("problems"), schema=PROBLEM_FIELDS, kind="problem")
    wanted = config.data.model_dump(mode="json")
    if shards.files() and not shards.done_units():  # an empty set recorded by an older raystep
        for path in shards.files():
            path.unlink()
    if shards.files():
        recorded = run.read_manifest().get("stages", {}).get("problems", {}).get("data")
        if recorded is not None and recorded != wanted:
            print(
                f"raystep collect: {run.path}/problems/ was built with data={recorded}; keeping those problems "
                f"(the units of this run), not data={wanted}. Use a new run name for other problems.",
                file=sys.stderr,
            )
        return shards.rows()
    from raystep.datasets import load_problems

    rejects = Rejects(run.stage("problems") / "rejects.jsonl") if config.data.rejects else None
    problems = load_problems(config.data, rejects=rejects)
    if not problems:
        where = config.data.path or config.data.hub_name or config.data.source
        rejected = (
            f" ({rejects.count} rejected, see {rejects.path})"
            if rejects is not None and rejects.count
            else ""
        )
        raise EmptyInputError(f"{where}: no problems to collect{rejected}")
    require_unique(problems, "id", "problem ids must be unique (they are the unit of resume)")
    shards.write(problems, [p["id"] for p in problems])
    run.update_manifest("problems", data=wanted, problems=len(problems))
    if rejects is not None and rejects.count:
        run.update_manifest("problems", rejects=rejects.count, reject_reasons=rejects.reasons)
    return problems


def sample_requests(
    config: RunConfig, problems: list[dict[str, Any]], tokenizer: Any = None
) -> list[dict[str, Any]]:
    """N engine rows per problem: the step prompt and a per-sample seed, problem fields passed through."""
    base = normalize_sampling(sampling_defaults(config))
    rows = []
    for problem in problems:
        prompt = steps.build_prompt(config.model.template, problem["question"], steps.STEP_PRIMER, tokenizer)
        row = {k: problem.get(k) for k in PROBLEM_KEYS} | {"prompt": prompt}
        rows.extend(fan_out(row, config.sampling.n, base))
    return rows


def to_sample(row: dict[str, Any]) -> dict[str, Any]:
    """Engine output -> a sample row (before grading): the response starts with the step primer."""
    response = steps.STEP_PRIMER + row["generated_text"]
    return {
        **{k: row.get(k) for k in PROBLEM_KEYS},
        "sample_id": f"{row['id']}-s{row['sample_index']}",
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


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and per-problem accuracy of the samples (what the manifest records)."""
    per_problem: dict[str, list[bool]] = {}
    for r in rows:
        per_problem.setdefault(r["id"], []).append(bool(r["correct"]))
    accuracy = {pid: round(sum(v) / len(v), 4) for pid, v in sorted(per_problem.items())}
    values = list(accuracy.values())
    return {
        "problems": len(per_problem),
        "samples": len(rows),
        "correct": sum(bool(r["correct"]) for r in rows),
        "wrong": sum(not r["correct"] for r in rows),
        "errors": sum(bool(r.get("error")) for r in rows),
        "grade_status": dict(Counter(r["grade_status"] for r in rows)),
        "finish_reason": dict(Counter(r.get("finish_reason") or "unknown" for r in rows)),
        "generated_tokens": sum(int(r.get("num_tokens") or 0) for r in rows),
        "accuracy": round(sum(values) / len(values), 4) if values else 0.0,
        "problems_all_correct": sum(v == 1.0 for v in values),
        "problems_all_wrong": sum(v == 0.0 for v in values),
        "problems_mixed": sum(0.0 < v < 1.0 for v in values),
        "per_problem_accuracy": accuracy,
    }


def run(config: RunConfig) -> dict[str, Any]:
    """Collect samples for every problem not yet written; returns (and records) the stage stats."""
    run_dir = RunDir.from_config(config)
    run_dir.record_config(config)
    with timed_stage(run_dir, "collect") as stats:
        problems = load_run_problems(config, run_dir)
        shards = ShardSet(run_dir.stage("samples"), schema=SAMPLE_FIELDS, kind="sample")
        attempts = shards.reopen_failed("id", config.max_attempts)
        done = shards.done_units()
        todo = [p for p in problems if p["id"] not in done]
        stats.update(
            problems_resumed=len(problems) - len(todo), problems_todo=len(todo), retried=len(attempts)
        )
        start = time.time()
        if todo:
            n = config.sampling.n
            bar = tqdm(total=len(todo), desc="collect: problems", unit="problem", dynamic_ncols=True)
            buffer = UnitBuffer(
                shards,
                expected={p["id"]: n for p in todo},
                key="id",
                units_per_shard=config.sampling.shard_size,
                finalize=lambda _unit, rows: sorted(
                    (fold_errors(r) for r in rows), key=lambda r: r["sample_index"]
                ),
                on_unit=lambda _unit, _rows: bar.update(1),
                attempts=attempts,
            )
            requests = sample_requests(config, todo, prompt_tokenizer(config))
            for row in generate_and_grade(config, requests, to_sample):
                buffer.add(row)
            buffer.close()
            bar.close()
            stats["shards_written"] = len(buffer.shards_written)
        elapsed = time.time() - start
        rows = shards.rows()
        stats.update(summarize(rows))
        new_samples = len(todo) * config.sampling.n
        stats["generate_seconds"] = round(elapsed, 3)
        stats["samples_per_s"] = round(new_samples / elapsed, 3) if todo and elapsed > 0 else None
        stats["shards"] = len(shards.files())
        stats.update(failure_stats(shards, config.max_attempts))
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    stats = run(config_from_args(args))
    brief = {k: v for k, v in stats.items() if k != "per_problem_accuracy"}
    print(json.dumps(brief, indent=2))
    return ROWS_FAILED if report_failures("collect", stats, "problems") else 0
