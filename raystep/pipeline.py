"""collect -> localize -> rectify -> train in one run: each stage's ``run(config)`` in order.

Every stage resumes on its own, so rerunning the pipeline after a failure redoes only what is missing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Any

from raystep.cli import add_config_arguments, config_from_args
from raystep.config import RunConfig
from raystep.errors import ROWS_FAILED
from raystep.runs import RunDir, report_failures

STAGE_MODULES: dict[str, str] = {
    "collect": "raystep.stages.collect",
    "localize": "raystep.stages.localize",
    "rectify": "raystep.stages.rectify",
    "train": "raystep.train.run",
}


def run(config: RunConfig, stages: list[str] | None = None) -> dict[str, Any]:
    """Run the named stages (all by default) in order; returns each stage's stats."""
    chosen = stages or list(STAGE_MODULES)
    unknown = [s for s in chosen if s not in STAGE_MODULES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known: {list(STAGE_MODULES)}")
    run_dir = RunDir.from_config(config)
    run_dir.record_config(config)
    results: dict[str, Any] = {}
    for name in STAGE_MODULES:
        if name not in chosen:
            continue
        start = time.time()
        print(f"[raystep pipeline] {name} ...", flush=True)
        results[name] = importlib.import_module(STAGE_MODULES[name]).run(config)
        print(f"[raystep pipeline] {name} done in {time.time() - start:.1f}s", flush=True)
        if results[name].get("failed_units"):  # later stages would build on the holes
            run_dir.update_manifest("pipeline", stages=chosen, status=f"stopped after {name}: rows failed")
            results["stopped_after"] = name
            return results
    run_dir.update_manifest("pipeline", stages=chosen, status="done")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--stages", default=",".join(STAGE_MODULES), help="comma-separated subset, in pipeline order"
    )


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    results = run(config, [s for s in args.stages.split(",") if s])
    print(json.dumps(results, indent=2, default=str))
    stopped = results.get("stopped_after")
    if stopped and report_failures(stopped, results[stopped], "units"):
        print("raystep pipeline: stopped; rerun it to retry the failed rows and go on", file=sys.stderr)
        return ROWS_FAILED
    return 0
