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
from pathlib import Path
from typing import Any

from raystep.config import RunConfig
from raystep.engine_args import engine_env, resolve_device
from raystep.errors import ROWS_FAILED
from raystep.records import LOCALIZED_FIELDS, read_parquet
from raystep.runs import RunDir, report_failures, timed_stage
from raystep.stages.shards import ShardSet, UnitBuffer, failure_stats, require_unique

STAGE = "localize"


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


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts for the manifest: outcome of the final label, per method, agreement, judge and rollout cost."""
    stats: dict[str, Any] = {
        "localized": len(rows),
        "labelled": sum(1 for r in rows if not r.get("error") and r["first_wrong_step"] >= 1),
        "no_wrong_step": sum(1 for r in rows if not r.get("error") and r["first_wrong_step"] == 0),
        "errors": sum(1 for r in rows if r.get("error")),
        "disagreements": sum(1 for r in rows if str(r.get("error") or "").startswith("disagree")),
        "first_wrong_step_hist": dict(
            sorted(Counter(str(r["first_wrong_step"]) for r in rows if not r.get("error")).items())
        ),
    }
    per_method: dict[str, Counter[str]] = {}
    agree = comparable = 0
    judge = Counter[str]()
    rollout = Counter[str]()
    for r in rows:
        results = method_results(r)
        answered = {name: res["first_wrong_step"] for name, res in results.items() if not res.get("error")}
        if len(results) > 1 and len(answered) == len(results):
            comparable += 1
            agree += len(set(answered.values())) == 1
        for name, res in results.items():
            c = per_method.setdefault(name, Counter())
            c[
                "errors" if res.get("error") else ("labelled" if res["first_wrong_step"] else "no_wrong_step")
            ] += 1
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
    stats["per_method"] = {name: dict(c) for name, c in per_method.items()}
    if comparable:
        stats["agreement"] = {
            "rows_all_answered": comparable,
            "all_agree": agree,
            "rate": round(agree / comparable, 4),
        }
    if judge:
        stats["judge"] = {"unparsed_replies": 0, "unparsed_rows": 0, **judge}
    if rollout:
        stats["rollout"] = dict(rollout)
    return stats


def plot_first_wrong_steps(rows: list[dict[str, Any]], path: Path) -> Path:
    """A bar chart of where solutions first go wrong, per method: easier to read than the histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_method: dict[str, Counter[int]] = {}
    for r in rows:
        for name, res in method_results(r).items():
            if not res.get("error"):
                per_method.setdefault(name, Counter())[int(res["first_wrong_step"])] += 1
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(per_method))
    for i, (name, counts) in enumerate(sorted(per_method.items())):
        xs = sorted(counts)
        offset = (i - (len(per_method) - 1) / 2) * width
        ax.bar([x + offset for x in xs], [counts[x] for x in xs], width=width, label=name)
    ax.set_xticks(sorted({x for counts in per_method.values() for x in counts}))
    ax.set_xlabel("first wrong step (0 = none found)")
    ax.set_ylabel("wrong samples")
    ax.set_title(f"localize: {len(rows)} wrong samples")
    if per_method:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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


def run(config: RunConfig) -> dict[str, Any]:
    """Localize every wrong sample of the run's ``samples/`` into ``localized/``; returns the stats."""
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
    with timed_stage(run_dir, STAGE) as stats:
        samples = read_parquet(samples_dir, kind="sample")  # read only: collect may be writing there
        wrong, counts = select_wrong(samples)
        stats.update(counts, methods=list(loc.methods), combine=loc.combine)
        out_dir = run_dir.stage("localized")
        shards = ShardSet(out_dir, schema=LOCALIZED_FIELDS, kind="localized")
        attempts = shards.reopen_failed("sample_id", config.max_attempts)
        done = shards.done_units()
        require_unique(wrong, "sample_id", f"{samples_dir}: sample_id must be unique (the unit of localize)")
        todo = [s for s in wrong if str(s["sample_id"]) not in done]
        stats.update(already_done=len(wrong) - len(todo), todo=len(todo), retried=len(attempts))
        if "judge" in loc.methods:
            from raystep.stages.localizers import require_reference

            stats.update(judge_prompt=loc.judge.prompt, judge_structured=loc.judge.structured)
            require_reference(todo, loc.judge, f"{samples_dir}")  # the stepdpo prompt: before any request
        if todo:
            cache_dir = str(out_dir / "judge-cache")  # build_localizer prefers localize.judge.cache_dir
            rps = loc.judge.requests_per_second / loc.concurrency
            resources = actor_resources(config)
            ds = ray.data.from_items([{"row": json.dumps(s, ensure_ascii=False)} for s in todo])
            ds = ds.map_batches(
                LocalizeUDF,
                fn_constructor_kwargs={
                    "config_json": config.model_dump_json(),
                    "cache_dir": cache_dir,
                    "requests_per_second": rps,
                },
                batch_size=loc.batch_size,
                compute=ray.data.ActorPoolStrategy(size=loc.concurrency),
                **resources,
            )
            buffer = UnitBuffer(
                shards,
                expected={str(s["sample_id"]): 1 for s in todo},
                key="sample_id",
                units_per_shard=config.sampling.shard_size,
                failed=lambda rows: any(not_answered(r) for r in rows),
                attempts=attempts,
            )
            fresh: list[dict[str, Any]] = []
            with tqdm(total=len(todo), desc="localize", unit="sample") as bar:
                for item in ds.iter_rows():
                    row = to_localized_row(json.loads(item["row"]))
                    fresh.append(row)
                    buffer.add(row)
                    bar.update(1)
            buffer.close()
            stats["this_run"] = summarize(fresh)
        all_rows = shards.rows()
        stats.update(summarize(all_rows))
        stats["shards"] = len(shards.files())
        stats.update(failure_stats(shards, config.max_attempts))
        stats["plot"] = str(plot_first_wrong_steps(all_rows, out_dir / "first_wrong_step.png"))
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from raystep.cli import add_config_arguments

    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from raystep.cli import config_from_args

    config = config_from_args(args)
    stats = run(config)
    print(json.dumps(stats, indent=2, default=str))
    print(f"localized/ written to {Path(config.run_dir) / 'localized'}")
    return ROWS_FAILED if report_failures("localize", stats, "samples") else 0
