"""``raystep localize``: the first wrong step of every wrong sample, as a Ray Data stage.

Reads ``samples/`` (collect's shards), keeps the wrong ones (``correct == False``; samples whose
generation failed are skipped and counted), runs the configured localizers in Ray Data actors (one
localizer per actor: rollouts need the policy model there, judge calls share a thread pool and the
replica's share of the request rate), and writes ``localized/`` shards of ``records.LOCALIZED_FIELDS``
rows through ``raystep.stages.shards``: a sample is a unit, so a killed run resumes where it stopped
and no sample is written twice. Rows a localizer could not label keep their ``error`` and are counted.

Rows travel through Ray Data as one JSON string each: samples carry nested lists and optional
columns that are often all-null in a batch, and a string column keeps their types exact end to end.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raystep.config import RunConfig
from raystep.engine_args import engine_env, resolve_device
from raystep.errors import ROWS_FAILED
from raystep.fs import StoragePath, write_image
from raystep.records import LOCALIZED_FIELDS
from raystep.runs import RunDir, report_failures, timed_stage
from raystep.stages.shards import ShardSet, failure_stats
from raystep.stages.stream import done_keys, drop_done, read_stage, scan, start_stage, write_shards

STAGE = "localize"
REFERENCE_COLUMNS: tuple[str, ...] = ("solution", "sample_id", "id")
"""What the ``stepdpo`` judge prompt needs of each wrong sample (checked before any request)."""
SUMMARY_COLUMNS: list[str] = ["first_wrong_step", "error", "evidence", "localizer"]


class LocalizeUDF:
    """Ray Data class UDF: one localizer per actor, a batch of JSON rows in and out."""

    def __init__(self, config_json: str, cache_dir: str | None, requests_per_second: float | None):
        from raystep.config import RunConfig
        from raystep.stages.localizers import build_localizer

        config = RunConfig.model_validate_json(config_json)
        self.localizer = build_localizer(config, cache_dir=cache_dir, requests_per_second=requests_per_second)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        from raystep.stages.localizers import locate_safely

        rows = [json.loads(s) for s in batch["row"]]
        return {"row": [json.dumps(r, ensure_ascii=False) for r in locate_safely(self.localizer, rows)]}


def not_answered(row: dict[str, Any]) -> bool:
    """A row no localizer could label because something failed (a request, a reply, an engine): it is
    retried on a rerun. Methods that answered and disagree (``combine: agree``) gave their verdict."""
    error = str(row.get("error") or "")
    return bool(error) and not (error.startswith("disagree:") and _all_methods_answered(row))


def _all_methods_answered(row: dict[str, Any]) -> bool:
    return all(not res.get("error") for res in method_results(row).values())


def to_localized_row(row: dict[str, Any]) -> dict[str, Any]:
    """Only the localized schema's columns (plus what collect passed through), ready for a shard."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def select_wrong(samples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The samples worth localizing, and counts of what was left out (nothing silently)."""
    wrong = [s for s in samples if s.get("correct") is False and not s.get("error")]
    counts = {
        "samples": len(samples),
        "correct_samples": sum(1 for s in samples if s.get("correct") is True),
        "wrong_samples": len(wrong),
        "skipped_generation_errors": sum(1 for s in samples if s.get("correct") is False and s.get("error")),
    }
    return wrong, counts


def method_results(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method: ``first_wrong_step``, ``error``, ``evidence`` (dict), for single and combined rows."""
    evidence = json.loads(row["evidence"]) if row.get("evidence") else {}
    if isinstance(evidence, dict) and "methods" in evidence:
        return {
            name: {**res, "evidence": res.get("evidence") or {}} for name, res in evidence["methods"].items()
        }
    return {
        str(row["localizer"]): {
            "first_wrong_step": row["first_wrong_step"],
            "error": row.get("error"),
            "evidence": evidence,
        }
    }


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts for the manifest (one pass, any iterable): outcome of the final label, per method,
    agreement, judge and rollout cost, and where each method first found a wrong step."""
    total = Counter[str]()
    hist = Counter[str]()
    per_method: dict[str, Counter[str]] = {}
    steps_found: dict[str, Counter[int]] = {}
    judge = Counter[str]()
    rollout = Counter[str]()
    for r in rows:
        total["localized"] += 1
        error = str(r.get("error") or "")
        if error:
            total["errors"] += 1
            total["disagreements"] += error.startswith("disagree")
        else:
            total["labelled" if r["first_wrong_step"] >= 1 else "no_wrong_step"] += 1
            hist[str(r["first_wrong_step"])] += 1
        results = method_results(r)
        answered = {name: res["first_wrong_step"] for name, res in results.items() if not res.get("error")}
        if len(results) > 1 and len(answered) == len(results):
            total["comparable"] += 1
            total["agree"] += len(set(answered.values())) == 1
        for name, res in results.items():
            c = per_method.setdefault(name, Counter())
            c[
                "errors" if res.get("error") else ("labelled" if res["first_wrong_step"] else "no_wrong_step")
            ] += 1
            if not res.get("error"):
                steps_found.setdefault(name, Counter())[int(res["first_wrong_step"])] += 1
            ev = res.get("evidence") or {}
            if name.startswith("judge"):
                judge["rows"] += 1
                judge["cached"] += bool(ev.get("cached"))
                judge["requests"] += int(ev.get("attempts") or 0)
                # replies no reader understood (each one, retried or not), and rows left without a verdict
                judge["unparsed_replies"] += int(ev.get("parse_failures") or 0)
                judge["unparsed_rows"] += "VerdictParseError" in str(res.get("error") or "")
                if ev.get("parsed_by"):
                    judge[f"parsed_by_{ev['parsed_by']}"] += 1
                for k, v in (ev.get("usage") or {}).items():
                    judge[k] += int(v or 0)
            elif name == "rollout":
                rollout["rows"] += 1
                rollout["rollouts"] += int(ev.get("rollouts") or 0)
                rollout["probes"] += len(ev.get("probes") or [])
    stats: dict[str, Any] = {
        "localized": total["localized"],
        "labelled": total["labelled"],
        "no_wrong_step": total["no_wrong_step"],
        "errors": total["errors"],
        "disagreements": total["disagreements"],
        "first_wrong_step_hist": dict(sorted(hist.items())),
        "per_method": {name: dict(c) for name, c in per_method.items()},
        "first_wrong_step_per_method": {
            name: {str(k): v for k, v in sorted(c.items())} for name, c in sorted(steps_found.items())
        },
    }
    if total["comparable"]:
        stats["agreement"] = {
            "rows_all_answered": total["comparable"],
            "all_agree": total["agree"],
            "rate": round(total["agree"] / total["comparable"], 4),
        }
    if judge:
        stats["judge"] = {"unparsed_replies": 0, "unparsed_rows": 0, **judge}
    if rollout:
        stats["rollout"] = dict(rollout)
    return stats


def plot_first_wrong_steps(
    per_method: dict[str, dict[str, int]], total: int, path: StoragePath
) -> StoragePath:
    """A bar chart of where solutions first go wrong, per method (``summarize``'s
    ``first_wrong_step_per_method``): easier to read than the histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = {name: {int(k): v for k, v in c.items()} for name, c in per_method.items()}
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(counts))
    for i, (name, c) in enumerate(sorted(counts.items())):
        xs = sorted(c)
        offset = (i - (len(counts) - 1) / 2) * width
        ax.bar([x + offset for x in xs], [c[x] for x in xs], width=width, label=name)
    ax.set_xticks(sorted({x for c in counts.values() for x in c}))
    ax.set_xlabel("first wrong step (0 = none found)")
    ax.set_ylabel("wrong samples")
    ax.set_title(f"localize: {total} wrong samples")
    if counts:
        ax.legend()
    fig.tight_layout()
    write_image(fig, path, dpi=100)
    plt.close(fig)
    return path


def actor_resources(config: RunConfig) -> dict[str, Any]:
    """Ray resources of one localizer actor: rollouts on vLLM hold an engine (its GPUs or CPUs, its env)."""
    if "rollout" not in config.localize.methods or config.sampling.engine != "vllm":
        return {"num_cpus": 1}
    device = resolve_device(config)
    if device == "cuda":
        resources: dict[str, Any] = {"num_cpus": 1, "num_gpus": config.engine.tensor_parallel_size}
    else:
        resources = {"num_cpus": config.engine.cpus_per_replica}
    return {**resources, "runtime_env": {"env_vars": engine_env(config, device)}}


def count_wrong(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``select_wrong``'s counts in one pass, and the first wrong sample with no reference solution."""
    counts = Counter[str]()
    unsolved: dict[str, Any] | None = None
    for s in rows:
        counts["samples"] += 1
        counts["correct_samples"] += s.get("correct") is True
        if s.get("correct") is False:
            if s.get("error"):
                counts["skipped_generation_errors"] += 1
                continue
            counts["wrong_samples"] += 1
            if not (isinstance(s.get("solution"), str) and s["solution"].strip()):
                counts["no_solution"] += 1
                unsolved = unsolved or s
    keys = ("samples", "correct_samples", "wrong_samples", "skipped_generation_errors")
    return {**{k: counts[k] for k in keys}, "no_solution": counts["no_solution"], "first_unsolved": unsolved}


def _wrong_as_json(batch: pa.Table) -> pa.Table:
    """The samples worth localizing, one JSON string each (see the module's docstring)."""
    keep = pc.and_(pc.equal(batch.column("correct"), False), pc.is_null(batch.column("error")))
    rows = batch.filter(pc.fill_null(keep, False)).to_pylist()
    return pa.table({"row": pa.array([json.dumps(r, ensure_ascii=False) for r in rows], pa.string())})


def _from_json(batch: pa.Table) -> pa.Table:
    return pa.Table.from_pylist([to_localized_row(json.loads(s)) for s in batch.column("row").to_pylist()])


def run(config: RunConfig) -> dict[str, Any]:
    """Localize every wrong sample of the run's ``samples/`` into ``localized/``; returns the stats.

    Streams: the samples are read, filtered and localized on the workers, which write the shards;
    the driver counts and records (see ``raystep.stages.stream``)."""
    import ray
    from tqdm import tqdm

    run_dir = RunDir.from_config(config)
    samples_dir = run_dir.path / "samples"
    if not samples_dir.is_dir():
        raise FileNotFoundError(f"{samples_dir}: no samples; run `raystep collect` first")
    loc = config.localize
    if "judge" in loc.methods:
        from raystep.stages.localizers.judge import api_key_for

        api_key_for(loc.judge.base_url, loc.judge.api_key_env)  # fail here, not inside an actor
    run_dir.record_config(config)
    start_stage(config)
    with timed_stage(run_dir, STAGE) as stats:
        samples = ShardSet(samples_dir, kind="sample", clean=False)  # read only: collect may be writing
        counts = scan(samples, ["correct", "error", *REFERENCE_COLUMNS], count_wrong)
        unsolved, missing = counts.pop("first_unsolved"), counts.pop("no_solution")
        stats.update(counts, methods=list(loc.methods), combine=loc.combine)
        out_dir = run_dir.stage("localized")
        shards = ShardSet(out_dir, schema=LOCALIZED_FIELDS, kind="localized")
        attempts = shards.reopen_failed("sample_id", config.max_attempts)
        done, n_done = done_keys(shards)
        todo = max(0, counts["wrong_samples"] - n_done)
        stats.update(already_done=n_done, todo=todo, retried=len(attempts))
        if "judge" in loc.methods:
            stats.update(judge_prompt=loc.judge.prompt, judge_structured=loc.judge.structured)
            if missing and loc.judge.prompt == "stepdpo" and todo:  # before any request
                from raystep.stages.localizers.judge_prompts import MissingReference, reference_solution

                try:
                    reference_solution(unsolved)
                except MissingReference as exc:
                    raise MissingReference(
                        f"{samples_dir}: {missing} of {counts['wrong_samples']} rows have no reference "
                        f"solution; {exc}"
                    ) from None
        if todo:
            cache_dir = str(out_dir / "judge-cache")  # build_localizer prefers localize.judge.cache_dir
            rps = loc.judge.requests_per_second / loc.concurrency
            ds = drop_done(read_stage(samples, kind="sample", key="sample_id"), "sample_id", done)
            ds = ds.map_batches(_wrong_as_json, batch_format="pyarrow")
            ds = ds.map_batches(
                LocalizeUDF,
                fn_constructor_kwargs={
                    "config_json": config.model_dump_json(),
                    "cache_dir": cache_dir,
                    "requests_per_second": rps,
                },
                batch_size=loc.batch_size,
                compute=ray.data.ActorPoolStrategy(size=loc.concurrency),
                **actor_resources(config),
            )
            ds = ds.map_batches(_from_json, batch_format="pyarrow")
            with tqdm(total=todo, desc="localize", unit="sample") as bar:
                for shard in write_shards(
                    ds, shards, "sample_id", config.sampling.shard_size, not_answered, attempts
                ):
                    bar.update(shard["rows"])
        stats.update(scan(shards, SUMMARY_COLUMNS, summarize))
        stats["shards"] = len(shards.files())
        stats.update(failure_stats(shards, config.max_attempts))
        stats["plot"] = str(
            plot_first_wrong_steps(
                stats["first_wrong_step_per_method"], stats["localized"], out_dir / "first_wrong_step.png"
            )
        )
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from raystep.config_args import add_config_arguments

    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from raystep.config_args import config_from_args

    config = config_from_args(args)
    stats = run(config)
    print(json.dumps(stats, indent=2, default=str))
    print(f"localized/ written to {config.run_dir}/localized")
    return ROWS_FAILED if report_failures("localize", stats, "samples") else 0
