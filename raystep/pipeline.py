"""collect -> localize -> rectify -> train in one run: each stage's ``run(config)`` in order.

Every stage resumes on its own, so rerunning the pipeline after a failure redoes only what is missing.
``--rounds N`` repeats the loop from each round's trained model (iterative Step-DPO).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Any

from raystep.config import RunConfig
from raystep.config_args import add_config_arguments, config_from_args
from raystep.errors import ROWS_FAILED
from raystep.runs import RunDir, report_failures

STAGE_MODULES: dict[str, str] = {
    "collect": "raystep.stages.collect",
    "localize": "raystep.stages.localize",
    "rectify": "raystep.stages.rectify",
    "train": "raystep.train.run",
}


def run(config: RunConfig, stages: list[str] | None = None, rounds: int = 1) -> dict[str, Any]:
    """Run the named stages (all by default) in order; returns each stage's stats.

    With ``rounds`` > 1 (iterative Step-DPO) round r runs in its own folder ``<name>-r<r>``, collects
    with round r-1's trained model and trains from it; the result holds each round's stats.
    """
    chosen = stages or list(STAGE_MODULES)
    unknown = [s for s in chosen if s not in STAGE_MODULES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known: {list(STAGE_MODULES)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if rounds > 1 and "train" not in chosen:
        raise ValueError("rounds > 1 need the train stage: each round starts from the last one's model")
    if rounds > 1 and config.sampling.engine == "endpoint":
        raise ValueError(
            "rounds > 1 need an engine that loads model.path (sampling.engine vllm or hf): the endpoint "
            "engine would sample every round from the one model already served"
        )
    per_round: list[dict[str, Any]] = []
    current = config
    for rnd in range(1, rounds + 1):
        if rnd > 1:
            current = config.model_copy(deep=True)
            current.name = f"{config.name}-r{rnd}"
            current.model.path = str(per_round[-1]["train"]["model_dir"])
            current.sampling.seed = config.sampling.seed + 1000 * (rnd - 1)
        per_round.append(_run_once(current, chosen, rnd if rounds > 1 else None))
        if per_round[-1].get("stopped_after"):  # the next round would start from a model never trained
            break
    return per_round[0] if rounds == 1 else {"rounds": per_round}


def _run_once(config: RunConfig, chosen: list[str], rnd: int | None) -> dict[str, Any]:
    run_dir = RunDir.from_config(config)
    run_dir.record_config(config)
    results: dict[str, Any] = {}
    tag = f" round {rnd}" if rnd else ""
    for name in STAGE_MODULES:
        if name not in chosen:
            continue
        start = time.time()
        print(f"[raystep pipeline]{tag} {name} ...", flush=True)
        results[name] = importlib.import_module(STAGE_MODULES[name]).run(config)
        print(f"[raystep pipeline]{tag} {name} done in {time.time() - start:.1f}s", flush=True)
        if results[name].get("failed_units"):  # later stages would build on the holes
            run_dir.update_manifest(
                "pipeline", stages=chosen, status=f"stopped after {name}: rows failed", round=rnd
            )
            results["stopped_after"] = name
            return results
    run_dir.update_manifest("pipeline", stages=chosen, status="done", round=rnd)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--stages", default=",".join(STAGE_MODULES), help="comma-separated subset, in pipeline order"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="iterative rounds: each collects with the last round's model"
    )


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    results = run(config, [s for s in args.stages.split(",") if s], rounds=args.rounds)
    print(json.dumps(results, indent=2, default=str))
    last = results["rounds"][-1] if "rounds" in results else results
    stopped = last.get("stopped_after")
    if stopped and report_failures(stopped, last[stopped], "units"):
        print("raystep pipeline: stopped; rerun it to retry the failed rows and go on", file=sys.stderr)
        return ROWS_FAILED
    return 0
