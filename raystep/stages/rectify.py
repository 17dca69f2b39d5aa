"""``raystep rectify``: resample the first wrong step from the correct prefix and write Step-DPO pairs.

For each localized wrong sample with first wrong step k > 0, ``rectify.n`` continuations are sampled
from ``build_prompt(template, question, steps.prefix(k))`` (steps 1..k-1 then ``Step k:``) and graded
as prefix + continuation. The correct ones give the chosen step (``steps.first_step(continuation,
k)``); the rejected step is the original step k. Chosen steps that repeat (whitespace-normalised) or
equal the rejected step are dropped; optionally each chosen step's own continuations must reach the
answer at least ``min_success_rate`` of ``success_rollouts`` times; ``verify_chosen`` is a hook for
the localize area; at most ``max_pairs_per_sample`` pairs are kept per sample.

Two resumable phases, both with a localized sample as the unit:
  A. ``rectified/``: every continuation with its verdict (what the choice is made from);
  B. ``pairs/``: the pairs (``records.PAIR_FIELDS``: the public Math-Step-DPO-10K columns plus
     provenance), then ``pairs/pairs.jsonl`` rewritten from all shards (public schema + provenance).
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from raystep import steps
from raystep.cli import add_config_arguments, config_from_args
from raystep.config import RunConfig
from raystep.engines import prompt_tokenizer
from raystep.engines.base import derive_seed, make_sampling
from raystep.engines.graded import fold_errors, generate_and_grade
from raystep.errors import ROWS_FAILED
from raystep.records import PAIR_FIELDS, PUBLIC_PAIR_FIELDS, read_parquet, to_public_pair, write_jsonl
from raystep.runs import RunDir, report_failures, timed_stage
from raystep.stages.shards import ShardSet, UnitBuffer, failure_stats, require_unique

CHOSEN_VERIFIER = "raystep.stages.localizers.chosen:verify_pairs"
"""Import path of the ``rectify.verify_chosen`` filter (owned by the localize area):
``verify_pairs(pairs: list[dict], config: RunConfig) -> tuple[list[dict], int, int]`` returns the pairs
whose chosen step the localizer accepts, how many it removed, and how many it could not judge (kept)."""

ChosenVerifier = Callable[[list[dict[str, Any]], RunConfig], tuple[list[dict[str, Any]], int, int]]

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
        for j in range(config.rectify.n):
            seed = derive_seed(config.sampling.seed, unit["sample_id"], "rectify", j)
            rows.append(
                {
                    "sample_id": unit["sample_id"],
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
    """The ``rectify.verify_chosen`` hook: resolved from ``CHOSEN_VERIFIER`` with a clear error."""
    module_name, func = CHOSEN_VERIFIER.split(":")
    try:
        return getattr(importlib.import_module(module_name), func)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            f"rectify.verify_chosen is on but {CHOSEN_VERIFIER} is not available ({exc}); "
            "turn it off or install the localize area's chosen-step verifier"
        ) from exc


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
        for j in range(config.rectify.success_rollouts):
            seed = derive_seed(config.sampling.seed, c["pair_id"], "success", j)
            rows.append(
                {
                    "sample_id": c["sample_id"],
                    "pair_id": c["pair_id"],
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
        "answer": row["answer"],
        "response": row["prefix"] + row["generated_text"],
        "finish_reason": row["finish_reason"],
        "generation_error": row.get("generation_error"),
    }


# -- the stage ----------------------------------------------------------------------------------


def read_localized(run: RunDir) -> list[dict[str, Any]]:
    """The localize stage's rows (any ``part-*.parquet`` in ``localized/``), validated."""
    folder = run.path / "localized"
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        raise FileNotFoundError(f"{folder}: no localized shards; run `raystep localize` first")
    rows = read_parquet(folder, kind="localized")
    require_unique(rows, "sample_id", f"{folder}: sample_id must be unique (the unit of rectify)")
    return rows


def _phase_continuations(
    config: RunConfig, run: RunDir, units: list[dict[str, Any]], stats: dict[str, Any], tokenizer: Any
) -> ShardSet:
    shards = ShardSet(run.stage("rectified"))
    attempts = shards.reopen_failed("sample_id", config.max_attempts)
    if attempts:  # pairs built from those continuations are rebuilt from the new ones
        ShardSet(run.stage("pairs"), schema=PAIR_FIELDS).drop_units_everywhere(set(attempts), "sample_id")
    done = shards.done_units()
    todo = [u for u in units if u["sample_id"] not in done]
    stats.update(samples_resumed=len(units) - len(todo), samples_todo=len(todo), retried=len(attempts))
    if todo:
        bar = tqdm(total=len(todo), desc="rectify: continuations", unit="sample", dynamic_ncols=True)
        buffer = UnitBuffer(
            shards,
            expected={u["sample_id"]: config.rectify.n for u in todo},
            key="sample_id",
            units_per_shard=config.sampling.shard_size,
            finalize=lambda _u, rows: sorted(
                (fold_errors(r) for r in rows), key=lambda r: r["continuation_index"]
            ),
            on_unit=lambda _u, _rows: bar.update(1),
            attempts=attempts,
        )
        for row in generate_and_grade(
            config, continuation_requests(config, todo, tokenizer), to_continuation
        ):
            buffer.add(row)
        buffer.close()
        bar.close()
    return shards


def _phase_pairs(
    config: RunConfig,
    run: RunDir,
    units: list[dict[str, Any]],
    continuations: list[dict[str, Any]],
    stats: dict[str, Any],
    tokenizer: Any,
) -> ShardSet:
    shards = ShardSet(run.stage("pairs"), schema=PAIR_FIELDS, kind="pair")
    verify = load_chosen_verifier() if config.rectify.verify_chosen else None
    done = shards.done_units()
    by_id = {u["sample_id"]: u for u in units}
    conts: dict[str, list[dict[str, Any]]] = {}
    for row in continuations:
        if row["sample_id"] in by_id and row["sample_id"] not in done:
            conts.setdefault(row["sample_id"], []).append(row)
    counts: Counter[str] = Counter()
    candidates: dict[str, list[dict[str, Any]]] = {}
    for sid in (u["sample_id"] for u in units if u["sample_id"] not in done):
        candidates[sid], unit_counts = build_candidates(by_id[sid], conts.get(sid, []), config)
        counts.update(unit_counts)

    def finalize(sid: str, rollouts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept, unit_counts = select_pairs(candidates[sid], rollouts, config, verify)
        counts.update(unit_counts)
        return kept

    bar = tqdm(total=len(candidates), desc="rectify: pairs", unit="sample", dynamic_ncols=True)
    rollouts = config.rectify.success_rollouts
    buffer = UnitBuffer(
        shards,
        expected={sid: len(c) * rollouts for sid, c in candidates.items()},
        key="sample_id",
        units_per_shard=config.sampling.shard_size,
        finalize=finalize,
        on_unit=lambda _u, _rows: bar.update(1),
    )
    pending = [c for sid, cs in candidates.items() if sid in buffer.expected for c in cs]
    if rollouts > 0 and pending:
        requests = rollout_requests(config, by_id, pending, tokenizer)
        for row in generate_and_grade(config, requests, to_rollout):
            buffer.add(row)
    buffer.close()
    bar.close()
    stats["this_run"] = dict(counts)
    return shards


def export_jsonl(pairs: list[dict[str, Any]], path: Any) -> int:
    """``pairs/pairs.jsonl``: every pair in the public schema (its column order) plus provenance."""
    rows = sorted(pairs, key=lambda r: r["pair_id"])
    return write_jsonl(
        path, ({**to_public_pair(r), **{k: r.get(k) for k in PROVENANCE_FIELDS}} for r in rows)
    )


def run(config: RunConfig) -> dict[str, Any]:
    """Rectify every localized wrong sample not yet done; returns (and records) the stage stats."""
    run_dir = RunDir.from_config(config)
    run_dir.record_config(config)
    with timed_stage(run_dir, "rectify") as stats:
        if config.rectify.verify_chosen:
            load_chosen_verifier()  # fail before any work when the hook is missing
        localized = read_localized(run_dir)
        why = [skip_reason(r) for r in localized]
        reasons = Counter(w or "rectified" for w in why)
        units = [r for r, w in zip(localized, why, strict=True) if w is None]
        stats.update(
            localized=len(localized),
            units=len(units),
            skipped={k: v for k, v in reasons.items() if k != "rectified"},
        )
        start = time.time()
        tokenizer = prompt_tokenizer(config)
        continuations = _phase_continuations(config, run_dir, units, stats, tokenizer)
        cont_rows = continuations.rows()
        pairs = _phase_pairs(config, run_dir, units, cont_rows, stats, tokenizer)
        stats["generate_seconds"] = round(time.time() - start, 3)
        pair_rows = pairs.rows()
        stats.update(
            continuations=len(cont_rows),
            continuations_correct=sum(bool(r["correct"]) for r in cont_rows),
            continuation_errors=sum(bool(r.get("error")) for r in cont_rows),
            pairs=len(pair_rows),
            samples_with_pairs=len({r["sample_id"] for r in pair_rows}),
            pairs_jsonl=export_jsonl(pair_rows, pairs.folder / "pairs.jsonl"),
            public_fields=list(PUBLIC_PAIR_FIELDS),
        )
        stats.update(failure_stats(continuations, config.max_attempts))
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    stats = run(config_from_args(args))
    print(json.dumps(stats, indent=2))
    return ROWS_FAILED if report_failures("rectify", stats, "samples") else 0
