"""``raystep rectify``: resample the first wrong step from the correct prefix and write Step-DPO pairs.

For each localized wrong sample with first wrong step k > 0, ``rectify.n`` continuations are sampled
from ``build_prompt(template, question, steps.prefix(k))`` (steps 1..k-1 then ``Step k:``) and graded
as prefix + continuation. The correct ones give the chosen step (``steps.first_step(continuation,
k)``); the rejected step is the original step k. Chosen steps that repeat (whitespace-normalised) or
equal the rejected step are dropped; optionally each chosen step's own continuations must reach the
answer at least ``min_success_rate`` of ``success_rollouts`` times; ``verify_chosen`` is a hook for
the localize area; at most ``max_pairs_per_sample`` pairs are kept per sample.

The stage streams (``raystep.stages.stream``): rows go from Ray Data readers to shards the workers
write, never through the driver. Phases:
  A. ``rectified/``: every continuation with its verdict (what the choice is made from); a
     continuation is the unit of resume, and each carries its sample's fields (``unit``, JSON);
  B. ``pairs/``: the pairs (``records.PAIR_FIELDS``: the public Math-Step-DPO-10K columns plus
     provenance), built per sample with Ray Data's ``groupby`` from the stored continuations, and
     rebuilt whole on each run (it generates nothing, except the optional success rollouts, which are
     resumable rows of their own in ``rollouts/``); then ``pairs/pairs.jsonl`` (public schema +
     provenance, sorted by ``pair_id``), written by a Ray task.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from tqdm import tqdm

from raystep import steps
from raystep.config import RunConfig
from raystep.config_args import add_config_arguments, config_from_args
from raystep.engines import config_and_tokenizer
from raystep.engines.base import make_sampling, sample_seeds
from raystep.engines.graded import graded_dataset
from raystep.errors import ROWS_FAILED
from raystep.records import PAIR_FIELDS, PUBLIC_PAIR_FIELDS, read_parquet, to_public_pair, write_jsonl
from raystep.runs import RunDir, report_failures, timed_stage
from raystep.stages.shards import ShardSet, arrow_schema, failure_stats, require_unique
from raystep.stages.stream import done_keys, drop_done, read_stage, scan, start_stage, write_shards

if TYPE_CHECKING:
    from ray.data import MaterializedDataset
    from ray.data.grouped_data import GroupedData

ChosenVerifier = Callable[[list[dict[str, Any]], RunConfig], tuple[list[dict[str, Any]], int, int]]

UNIT_KEYS: tuple[str, ...] = (
    "id",
    "dataset",
    "question",
    "answer",
    "sample_id",
    "response",
    "first_wrong_step",
    "localizer",
)
"""What the pairs phase needs of a localized sample; each continuation row carries it (as JSON)."""

SKIP_COLUMNS: list[str] = ["correct", "error", "first_wrong_step", "response"]

PROVENANCE_FIELDS: tuple[str, ...] = (
    "pair_id",
    "problem_id",
    "sample_id",
    "step_index",
    "localizer",
    "chosen_success_rate",
    "rectify_success_rate",
    "policy_model",
    "sampling",
)


def normalize_step(text: str) -> str:
    """Whitespace-normalised step text: what duplicate and same-as-rejected checks compare."""
    return " ".join(text.split())


# -- which samples are rectified ------------------------------------------------------------------


def skip_reason(row: dict[str, Any]) -> str | None:
    """Why a localized row is not rectified (None: it is a unit of this stage)."""
    if row.get("correct"):
        return "correct"
    if row.get("error"):
        return "error"
    if int(row["first_wrong_step"]) <= 0:
        return "no_wrong_step"
    split = steps.split_steps(row["response"])
    if int(row["first_wrong_step"]) > len(split):
        return "step_out_of_range"
    if not split.body(int(row["first_wrong_step"])).strip():
        return "empty_wrong_step"
    return None


def wrong_step(row: dict[str, Any]) -> tuple[str, str, str]:
    """(prefix, rejected step body, original remainder after the prefix) of a localized sample."""
    k = int(row["first_wrong_step"])
    split = steps.split_steps(row["response"])
    prefix = split.prefix(k)
    return prefix, split.body(k), row["response"][len(prefix) :]


def rectify_sampling(config: RunConfig, seed: int) -> dict[str, Any]:
    r = config.rectify
    return make_sampling(
        temperature=r.temperature,
        top_p=r.top_p,
        max_new_tokens=r.max_new_tokens,
        seed=seed,
        stop=config.sampling.stop,
    )


def continuation_requests(
    config: RunConfig, units: list[dict[str, Any]], tokenizer: Any = None
) -> list[dict[str, Any]]:
    """``rectify.n`` engine rows per unit, each continuing the correct prefix with its own seed."""
    rows = []
    for unit in units:
        prefix, _, _ = wrong_step(unit)
        prompt = steps.build_prompt(config.model.template, unit["question"], prefix, tokenizer)
        seeds = sample_seeds(config.sampling.seed, config.rectify.n, unit["sample_id"], "rectify")
        for j, seed in enumerate(seeds):
            rows.append(
                {
                    "sample_id": unit["sample_id"],
                    "continuation_id": f"{unit['sample_id']}-c{j}",
                    "unit": json.dumps({k: unit.get(k) for k in UNIT_KEYS}, ensure_ascii=False),
                    "continuation_index": j,
                    "first_wrong_step": int(unit["first_wrong_step"]),
                    "prefix": prefix,
                    "answer": unit["answer"],
                    "prompt": prompt,
                    "seed": seed,
                    "sampling": rectify_sampling(config, seed),
                }
            )
    return rows


def to_continuation(row: dict[str, Any]) -> dict[str, Any]:
    """Engine output -> a continuation row; ``response`` (prefix + continuation) is what is graded."""
    k = int(row["first_wrong_step"])
    return {
        "sample_id": row["sample_id"],
        "continuation_id": row["continuation_id"],
        "unit": row["unit"],
        "continuation_index": int(row["continuation_index"]),
        "seed": int(row["seed"]),
        "answer": row["answer"],
        "continuation": row["generated_text"],
        "chosen": steps.first_step(row["generated_text"], k),
        "response": row["prefix"] + row["generated_text"],
        "num_tokens": int(row["num_generated_tokens"]),
        "finish_reason": row["finish_reason"],
        "generation_error": row.get("generation_error"),
    }


# -- choosing the pairs (plain functions: tested without a model) ----------------------------------


def build_candidates(
    unit: dict[str, Any], continuations: list[dict[str, Any]], config: RunConfig
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Pairs from the correct continuations of one sample, before the success-rate filter and the cap.

    Returns the candidate pairs (in continuation order) and counts of what was dropped and why.
    """
    counts: Counter[str] = Counter()
    prefix, rejected, full_rejected = wrong_step(unit)
    k = int(unit["first_wrong_step"])
    conts = sorted(continuations, key=lambda c: c["continuation_index"])
    correct = [c for c in conts if c.get("correct")]
    counts["continuations"] = len(conts)
    counts["continuations_correct"] = len(correct)
    counts["continuation_errors"] = sum(bool(c.get("error")) for c in conts)
    rate = len(correct) / len(conts) if conts else 0.0
    seen: set[str] = set()
    candidates = []
    for c in correct:
        chosen = c["chosen"]
        key = normalize_step(chosen)
        if not key:
            counts["dropped_empty_chosen"] += 1
            continue
        if key == normalize_step(rejected):
            counts["dropped_same_as_rejected"] += 1
            continue
        if key in seen:
            counts["dropped_duplicate"] += 1
            continue
        seen.add(key)
        sampling = {**rectify_sampling(config, c["seed"]), "n": config.rectify.n}
        candidates.append(
            {
                "dataset": unit.get("dataset") or "",
                "prompt": unit["question"],
                "initial_reason_steps": prefix,
                "chosen": chosen,
                "rejected": rejected,
                "full_chosen": c["continuation"],
                "full_rejected": full_rejected,
                "answer": unit["answer"],
                "pair_id": f"{unit['sample_id']}-k{k}-c{c['continuation_index']}",
                "problem_id": unit["id"],
                "sample_id": unit["sample_id"],
                "step_index": k,
                "localizer": unit.get("localizer") or "",
                "chosen_success_rate": None,
                "rectify_success_rate": round(rate, 4),
                "policy_model": config.model.path,
                "sampling": json.dumps(sampling, sort_keys=True),
            }
        )
    return candidates, counts


def success_rates(candidates: list[dict[str, Any]], rollouts: list[dict[str, Any]]) -> dict[str, float]:
    """Per pair id, the fraction of its rollouts (continuations after the chosen step) that are correct."""
    by_pair: dict[str, list[bool]] = {c["pair_id"]: [] for c in candidates}
    for r in rollouts:
        by_pair[r["pair_id"]].append(bool(r.get("correct")))
    return {pid: (sum(v) / len(v) if v else 0.0) for pid, v in by_pair.items()}


def select_pairs(
    candidates: list[dict[str, Any]],
    rollouts: list[dict[str, Any]],
    config: RunConfig,
    verify: ChosenVerifier | None = None,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Success-rate filter (when measured), the ``verify_chosen`` hook, then the per-sample cap."""
    counts: Counter[str] = Counter()
    r = config.rectify
    kept = candidates
    if r.success_rollouts > 0:
        rates = success_rates(candidates, rollouts)
        kept = []
        for c in candidates:
            c = {**c, "chosen_success_rate": round(rates[c["pair_id"]], 4)}
            if rates[c["pair_id"]] >= r.min_success_rate:
                kept.append(c)
            else:
                counts["dropped_low_success_rate"] += 1
    if r.verify_chosen and kept:
        kept, removed, errors = (verify or load_chosen_verifier())(kept, config)
        counts["dropped_verify_chosen"] += removed
        counts["verify_chosen_errors"] += errors
    counts["dropped_over_cap"] += max(0, len(kept) - r.max_pairs_per_sample)
    return kept[: r.max_pairs_per_sample], counts


def load_chosen_verifier() -> ChosenVerifier:
    """The ``rectify.verify_chosen`` filter, ``localizers.chosen.verify_pairs``: the pairs whose chosen
    step the configured localizer accepts, how many it removed, and how many it could not judge (kept).
    Imported when used: it brings the localizers (and their engines) with it."""
    from raystep.stages.localizers.chosen import verify_pairs

    return verify_pairs


def rollout_requests(
    config: RunConfig,
    units: dict[str, dict[str, Any]],
    candidates: list[dict[str, Any]],
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """``success_rollouts`` engine rows per candidate, continuing after its chosen step."""
    rows = []
    for c in candidates:
        unit = units[c["sample_id"]]
        prefix = c["initial_reason_steps"] + c["chosen"]
        prompt = steps.build_prompt(config.model.template, unit["question"], prefix, tokenizer)
        seeds = sample_seeds(config.sampling.seed, config.rectify.success_rollouts, c["pair_id"], "success")
        for j, seed in enumerate(seeds):
            rows.append(
                {
                    "sample_id": c["sample_id"],
                    "pair_id": c["pair_id"],
                    "rollout_id": f"{c['pair_id']}-r{j}",
                    "prefix": prefix,
                    "answer": c["answer"],
                    "prompt": prompt,
                    "seed": seed,
                    "sampling": rectify_sampling(config, seed),
                }
            )
    return rows


def to_rollout(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "sample_id": row["sample_id"],
        "pair_id": row["pair_id"],
        "rollout_id": row["rollout_id"],
        "answer": row["answer"],
        "response": row["prefix"] + row["generated_text"],
        "finish_reason": row["finish_reason"],
        "generation_error": row.get("generation_error"),
    }


# -- the stage ----------------------------------------------------------------------------------


def read_localized(run: RunDir) -> list[dict[str, Any]]:
    """The localize stage's rows (any ``part-*.parquet`` in ``localized/``), validated (for tools)."""
    folder = run.path / "localized"
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        raise FileNotFoundError(f"{folder}: no localized shards; run `raystep localize` first")
    rows = read_parquet(folder, kind="localized")
    require_unique(rows, "sample_id", f"{folder}: sample_id must be unique (the unit of rectify)")
    return rows


def count_units(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """How many localized samples there are, how many are rectified, and why the others are not."""
    reasons: Counter[str] = Counter(skip_reason(r) or "rectified" for r in rows)
    return {
        "localized": sum(reasons.values()),
        "units": reasons["rectified"],
        "skipped": {k: v for k, v in reasons.items() if k != "rectified"},
    }


def _continuation_requests(batch: pa.Table, config_json: str) -> pa.Table:
    """Ray Data: localized samples -> the continuation requests of those that are rectified."""
    config, tokenizer = config_and_tokenizer(config_json)
    units = [r for r in batch.to_pylist() if skip_reason(r) is None]
    return _table(continuation_requests(config, units, tokenizer), CONTINUATION_REQUEST_COLUMNS)


CONTINUATION_REQUEST_COLUMNS: tuple[str, ...] = (
    "sample_id",
    "continuation_id",
    "unit",
    "continuation_index",
    "first_wrong_step",
    "prefix",
    "answer",
    "prompt",
    "seed",
    "sampling",
)
ROLLOUT_REQUEST_COLUMNS: tuple[str, ...] = (
    "sample_id",
    "pair_id",
    "rollout_id",
    "prefix",
    "answer",
    "prompt",
    "seed",
    "sampling",
)


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> pa.Table:
    """Rows as a table; an empty batch keeps its columns (Ray Data unifies the blocks' schemas)."""
    if rows:
        return pa.Table.from_pylist(rows)
    return pa.table({c: pa.array([], pa.string()) for c in columns})


def _phase_continuations(config: RunConfig, run: RunDir, todo_units: int, stats: dict[str, Any]) -> ShardSet:
    shards = ShardSet(run.stage("rectified"))
    attempts = shards.reopen_failed("continuation_id", config.max_attempts)
    done, n_done = done_keys(shards)
    todo = todo_units * config.rectify.n - n_done
    stats.update(
        continuations_resumed=n_done,
        continuations_todo=max(0, todo),
        samples_resumed=todo_units - -(-max(0, todo) // config.rectify.n),
        samples_todo=-(-max(0, todo) // config.rectify.n),
        retried=len(attempts),
    )
    if todo > 0:
        localized = ShardSet(run.path / "localized", kind="localized", clean=False)
        ds = read_stage(localized, kind="localized", key="sample_id").map_batches(
            _continuation_requests,
            fn_kwargs={"config_json": config.model_dump_json()},
            batch_format="pyarrow",
        )
        ds = graded_dataset(config, drop_done(ds, "continuation_id", done), to_continuation)
        with tqdm(total=todo, desc="rectify: continuations", unit="row", dynamic_ncols=True) as bar:
            for shard in write_shards(
                ds, shards, "continuation_id", config.sampling.shard_size, attempts=attempts
            ):
                bar.update(shard["rows"])
    return shards


def _candidates(group: pa.Table, config_json: str) -> pa.Table:
    """Ray Data ``map_groups``: one sample's continuations -> its candidate pairs, and its counts."""
    config = RunConfig.model_validate_json(config_json)
    conts = group.to_pylist()
    unit = json.loads(conts[0]["unit"])
    candidates, counts = build_candidates(unit, conts, config)
    rows = [_tagged("candidate", unit["sample_id"], c) for c in candidates]
    rows.append(_tagged("counts", unit["sample_id"], dict(counts), unit))
    return pa.Table.from_pylist(rows)


def _tagged(
    kind: str, sample_id: str, row: dict[str, Any], unit: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "kind": kind,
        "sample_id": sample_id,
        "row": json.dumps(row, ensure_ascii=False),
        "unit": json.dumps(unit, ensure_ascii=False) if unit is not None else None,
    }


def _rollout_requests(batch: pa.Table, config_json: str) -> pa.Table:
    """Ray Data: candidate pairs -> ``success_rollouts`` requests each, continuing after the chosen step."""
    config, tokenizer = config_and_tokenizer(config_json)
    rows = [r for r in batch.to_pylist() if r["kind"] == "candidate"]
    units = {r["sample_id"]: {"question": json.loads(r["row"])["prompt"]} for r in rows}
    candidates = [json.loads(r["row"]) for r in rows]
    return _table(rollout_requests(config, units, candidates, tokenizer), ROLLOUT_REQUEST_COLUMNS)


def _as_tagged_rollout(batch: pa.Table) -> pa.Table:
    rows = batch.to_pylist()
    return pa.table(
        {
            "kind": pa.array(["rollout"] * len(rows), pa.string()),
            "sample_id": pa.array([r["sample_id"] for r in rows], pa.string()),
            "row": pa.array(
                [json.dumps({"pair_id": r["pair_id"], "correct": r["correct"]}) for r in rows], pa.string()
            ),
            "unit": pa.array([None] * len(rows), pa.string()),
        }
    )


def _select(group: pa.Table, config_json: str) -> pa.Table:
    """Ray Data ``map_groups``: one sample's candidates (and their rollouts) -> its pairs, and counts."""
    config = RunConfig.model_validate_json(config_json)
    verify = load_chosen_verifier() if config.rectify.verify_chosen else None
    rows = group.to_pylist()
    candidates = sorted(
        (json.loads(r["row"]) for r in rows if r["kind"] == "candidate"),
        key=lambda c: int(c["pair_id"].rsplit("-c", 1)[1]),
    )
    rollouts = [json.loads(r["row"]) for r in rows if r["kind"] == "rollout"]
    counts: Counter[str] = Counter()
    for r in rows:
        if r["kind"] == "counts":
            counts.update(json.loads(r["row"]))
    kept, select_counts = (
        select_pairs(candidates, rollouts, config, verify) if candidates else ([], Counter())
    )
    counts.update(select_counts)
    sample_id = rows[0]["sample_id"]
    out = [{"pair": json.dumps(p, ensure_ascii=False), "sample_id": sample_id, "counts": None} for p in kept]
    out.append({"pair": None, "sample_id": sample_id, "counts": json.dumps(dict(counts))})
    return pa.Table.from_pylist(out)


def _pairs_only(batch: pa.Table) -> pa.Table:
    rows = [json.loads(p) for p in batch.column("pair").to_pylist() if p is not None]
    if not rows:
        return arrow_schema(PAIR_FIELDS).empty_table()
    return pa.Table.from_pylist(rows)


def _sum_counts(batch: pa.Table) -> pa.Table:
    total: Counter[str] = Counter()
    for c in batch.column("counts").to_pylist():
        if c is not None:
            total.update(json.loads(c))
    return pa.table({"counts": [json.dumps(dict(total))]})


def shuffle_partitions(samples: int) -> int:
    """Hash partitions of the pairs phase's ``groupby``: one per 2,000 samples, up to 64 (Ray's
    default of 200 makes a small run wait on 200 reduce tasks)."""
    return max(1, min(64, samples // 2000 + 1))


SHUFFLE_BLOCKS_PER_PARTITION = 4
"""Input blocks of the pairs phase's shuffle per partition: its map side makes a block per input block
and partition, each tracked by the driver, so the input is read in at most this many blocks per
partition (several shards a block) instead of one block a shard."""


def _phase_pairs(config: RunConfig, run: RunDir, rectified: ShardSet, stats: dict[str, Any]) -> ShardSet:
    """Pairs from the stored continuations (and success rollouts): recomputed whole on every run, since
    it costs no generation except the rollouts, which are resumable rows of their own (``rollouts/``)."""
    config_json = config.model_dump_json()
    pairs = ShardSet(run.stage("pairs"), schema=PAIR_FIELDS, kind="pair")
    for old in pairs.files():
        old.unlink()
    if not rectified.files():
        stats["this_run"] = {}
        return pairs
    partitions = shuffle_partitions(stats["units"])
    blocks = SHUFFLE_BLOCKS_PER_PARTITION * partitions
    by_sample = read_stage(rectified, blocks=blocks).groupby("sample_id", num_partitions=partitions)
    if config.rectify.success_rollouts == 0:  # nothing between candidates and selection: one shuffle
        selected = by_sample.map_groups(
            _candidates_then_select, fn_kwargs={"config_json": config_json}, batch_format="pyarrow"
        ).materialize()
    else:
        selected = _select_after_rollouts(config, run, by_sample, partitions)
    with tqdm(desc="rectify: pairs", unit="pair", dynamic_ncols=True) as bar:
        for shard in write_shards(
            selected.map_batches(_pairs_only, batch_format="pyarrow"),
            pairs,
            "pair_id",
            config.sampling.shard_size,
        ):
            bar.update(shard["rows"])
    counts: Counter[str] = Counter()
    for row in selected.map_batches(_sum_counts, batch_format="pyarrow", batch_size=4096).iter_rows():
        counts.update(json.loads(row["counts"]))  # one small row per batch of samples
    stats["this_run"] = dict(counts)
    return pairs


def _candidates_then_select(group: pa.Table, config_json: str) -> pa.Table:
    """Ray Data ``map_groups``: one sample's continuations -> its pairs and counts, in one pass."""
    return _select(_candidates(group, config_json), config_json)


def _select_after_rollouts(
    config: RunConfig, run: RunDir, by_sample: GroupedData, partitions: int
) -> MaterializedDataset:
    """Candidates, their success rollouts (resumable rows of ``rollouts/``), then the selection."""
    config_json = config.model_dump_json()
    tagged = by_sample.map_groups(
        _candidates, fn_kwargs={"config_json": config_json}, batch_format="pyarrow"
    ).materialize()  # in the object store: the candidates feed both the rollouts and the selection
    rollouts = ShardSet(run.stage("rollouts"))
    attempts = rollouts.reopen_failed("rollout_id", config.max_attempts)
    done, _ = done_keys(rollouts)
    requests = tagged.map_batches(
        _rollout_requests, fn_kwargs={"config_json": config_json}, batch_format="pyarrow"
    )
    ds = graded_dataset(config, drop_done(requests, "rollout_id", done), to_rollout)
    with tqdm(desc="rectify: success rollouts", unit="row", dynamic_ncols=True) as bar:
        for shard in write_shards(ds, rollouts, "rollout_id", config.sampling.shard_size, attempts=attempts):
            bar.update(shard["rows"])
    if rollouts.files():
        tagged = tagged.union(
            read_stage(rollouts, columns=["sample_id", "pair_id", "correct"]).map_batches(
                _as_tagged_rollout, batch_format="pyarrow"
            )
        )
    return (
        tagged.groupby("sample_id", num_partitions=partitions)
        .map_groups(_select, fn_kwargs={"config_json": config_json}, batch_format="pyarrow")
        .materialize()
    )


def export_jsonl(pairs: list[dict[str, Any]], path: Any) -> int:
    """``pairs/pairs.jsonl``: every pair in the public schema (its column order) plus provenance."""
    rows = sorted(pairs, key=lambda r: r["pair_id"])
    return write_jsonl(
        path, ({**to_public_pair(r), **{k: r.get(k) for k in PROVENANCE_FIELDS}} for r in rows)
    )


def _export(folder: str, path: str) -> int:
    """``pairs/pairs.jsonl`` from the pair shards, sorted by ``pair_id`` (run in a Ray task)."""
    return export_jsonl(ShardSet(folder, kind="pair", clean=False).rows(), path)


def count_continuations(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    c: Counter[str] = Counter()
    for r in rows:
        c["continuations"] += 1
        c["continuations_correct"] += bool(r.get("correct"))
        c["continuation_errors"] += bool(r.get("error"))
        c["continuation_tokens"] += int(r.get("num_tokens") or 0)
    keys = ("continuations", "continuations_correct", "continuation_errors", "continuation_tokens")
    return {k: c[k] for k in keys}


def count_pairs(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    samples: set[str] = set()
    n = 0
    for r in rows:
        n += 1
        samples.add(r["sample_id"])
    return {"pairs": n, "samples_with_pairs": len(samples)}


def run(config: RunConfig) -> dict[str, Any]:
    """Rectify every localized wrong sample not yet done; returns (and records) the stage stats.

    Streams (``raystep.stages.stream``): continuations are generated, graded and written by the
    workers, one row a unit; the pairs are then built per sample with Ray Data's ``groupby``."""
    import ray

    run_dir = RunDir.from_config(config)
    run_dir.record_config(config)
    start_stage(config)
    with timed_stage(run_dir, "rectify") as stats:
        if config.rectify.verify_chosen:
            load_chosen_verifier()  # an import error shows before any work
        folder = run_dir.path / "localized"
        localized = ShardSet(folder, kind="localized", clean=False)
        if not folder.is_dir() or not localized.files():
            raise FileNotFoundError(f"{folder}: no localized shards; run `raystep localize` first")
        stats.update(scan(localized, SKIP_COLUMNS, count_units))
        start = time.time()
        continuations = _phase_continuations(config, run_dir, stats["units"], stats)
        pairs = _phase_pairs(config, run_dir, continuations, stats)
        stats["generate_seconds"] = round(time.time() - start, 3)
        stats.update(scan(continuations, ["correct", "error", "num_tokens"], count_continuations))
        stats.update(scan(pairs, ["sample_id"], count_pairs))
        stats["pairs_jsonl"] = ray.get(
            ray.remote(num_cpus=0)(_export).remote(str(pairs.folder), str(pairs.folder / "pairs.jsonl"))
        )
        stats["public_fields"] = list(PUBLIC_PAIR_FIELDS)
        stats.update(failure_stats(continuations, config.max_attempts))
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    stats = run(config_from_args(args))
    print(json.dumps(stats, indent=2))
    return ROWS_FAILED if report_failures("rectify", stats, "samples") else 0
