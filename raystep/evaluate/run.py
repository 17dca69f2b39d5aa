"""``raystep eval``: evaluate any OpenAI-compatible endpoint on GSM8K / MATH500 / MATH.

Stage entry ``run(config)`` writes into ``<run>/eval/<name>/<benchmark>/`` and records the stage in the
manifest; ``evaluate(config, out_dir)`` does the same into any folder (``--out``), for endpoints that
belong to no run (a hosted API, a baseline model).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from raystep.config import RunConfig
from raystep.config_args import add_config_arguments, config_from_args
from raystep.datasets import BENCHMARKS
from raystep.errors import ROWS_FAILED
from raystep.runs import RunDir, timed_stage

GRADER_WORKERS = max(1, min(4, (os.cpu_count() or 2) // 2))
GRADER_TIMEOUT_S = 5.0


def eval_name(config: RunConfig) -> str:
    """``eval.name``, else the model name made safe as a folder name."""
    name = config.eval.name or config.eval.model
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "eval"


def _data_dir(config: RunConfig) -> Path | None:
    from raystep.datasets import default_data_dir

    return Path(config.eval.data_dir) if config.eval.data_dir else default_data_dir()


def evaluate(config: RunConfig, out_dir: str | os.PathLike[str], progress: bool = True) -> dict[str, Any]:
    """Evaluate every benchmark of ``config.eval`` into ``out_dir/<benchmark>/``; return the summaries."""
    from raystep.datasets import load_benchmark
    from raystep.evaluate.benchmark import EvalError, evaluate_benchmark
    from raystep.grading import Grader

    cfg = config.eval
    unknown = [b for b in cfg.benchmarks if b not in BENCHMARKS]
    if unknown or not cfg.benchmarks:
        raise EvalError(f"eval.benchmarks must name some of {', '.join(BENCHMARKS)}; got {cfg.benchmarks}")
    out = Path(out_dir)
    data_dir = _data_dir(config)
    summaries: dict[str, Any] = {}
    with Grader(workers=GRADER_WORKERS, timeout_s=GRADER_TIMEOUT_S) as grader:
        for bench in cfg.benchmarks:
            # a folder named in eval.data_dir must hold the file: no silent wait on the hub
            problems = load_benchmark(bench, data_dir=data_dir, limit=cfg.limit, hub=not cfg.data_dir)
            summaries[bench] = evaluate_benchmark(
                cfg, bench, out / bench, problems, grader, progress=progress
            )
    overview = {
        "model": cfg.model,
        "base_url": cfg.base_url,
        "benchmarks": {
            b: {k: s[k] for k in ("accuracy", "ci95", "problems", "samples", "counts")}
            for b, s in summaries.items()
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(overview, indent=2) + "\n")
    return {"out_dir": str(out), "benchmarks": summaries}


def run(config: RunConfig) -> dict[str, Any]:
    """The stage: ``<run>/eval/<name>/``, timed and counted in the run manifest."""
    run_dir = RunDir.from_config(config)
    run_dir.require_local("raystep eval")
    name = eval_name(config)
    out = run_dir.stage("eval") / name
    with timed_stage(run_dir, f"eval/{name}") as stats:
        result = evaluate(config, out)
        for bench, s in result["benchmarks"].items():
            stats[bench] = {
                "accuracy": s["accuracy"],
                "problems": s["problems"],
                "request_errors": s["counts"]["request_errors"],
            }
    return {"name": name, **result}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--base-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (eval.base_url)"
    )
    parser.add_argument("--model", help="model name the endpoint serves (eval.model)")
    parser.add_argument(
        "--benchmarks", help="comma-separated: gsm8k, gsm8k-stepdpo, math500, math (eval.benchmarks)"
    )
    parser.add_argument("--api", choices=["completions", "chat"], help="which route to call (eval.api)")
    parser.add_argument("--template", help="prompt template from raystep.steps (eval.template)")
    parser.add_argument("--k", type=int, help="samples per problem; > 1 reports maj@k and pass@k (eval.k)")
    parser.add_argument(
        "--temperature", type=float, help="sampling temperature, 0 = greedy (eval.temperature)"
    )
    parser.add_argument("--max-tokens", type=int, help="new tokens per answer (eval.max_tokens)")
    parser.add_argument("--limit", type=int, help="first N problems of each benchmark (eval.limit)")
    parser.add_argument("--concurrency", type=int, help="requests in flight (eval.concurrency)")
    parser.add_argument("--name", help="folder name under <run>/eval/ (eval.name)")
    parser.add_argument(
        "--ray-data", action="store_true", help="send requests through Ray Data (eval.use_ray_data)"
    )
    parser.add_argument("--out", help="write into this folder instead of the run folder (no manifest)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


_FLAGS = (
    "base_url",
    "model",
    "api",
    "template",
    "k",
    "temperature",
    "max_tokens",
    "limit",
    "concurrency",
    "name",
)
"""Command-line flags that set the ``eval`` key of the same name."""


def config_with_flags(args: argparse.Namespace) -> RunConfig:
    """The run config with command-line flags applied as ``--set eval.<key>=...`` (validated alike)."""
    overrides = list(getattr(args, "overrides", []) or [])
    for flag in _FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"eval.{flag}={json.dumps(value)}")
    if getattr(args, "benchmarks", None):
        names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
        overrides.append(f"eval.benchmarks={json.dumps(names)}")
    if getattr(args, "ray_data", False):
        overrides.append("eval.use_ray_data=true")
    args.overrides = overrides
    return config_from_args(args)


def main(args: argparse.Namespace) -> int:
    config = config_with_flags(args)
    progress = not args.no_progress
    if config.eval.k > 1 and config.eval.temperature == 0:
        print(
            "raystep eval: note: k > 1 with temperature 0 repeats the greedy answer k times", file=sys.stderr
        )
    result = evaluate(config, args.out, progress) if args.out else run(config)  # EvalError: the CLI's exit 2
    for bench, s in result["benchmarks"].items():
        lo, hi = s["ci95"]
        c = s["counts"]
        print(
            f"{bench}: accuracy {100 * s['accuracy']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}) on "
            f"{s['problems']} problems; unparsable {c['unparsable']}, grader time-outs {c['grader_timeouts']}, "
            f"request errors {c['request_errors']}"
        )
    print(f"outputs: {result['out_dir']}")
    failed = sum(s["counts"]["request_errors"] for s in result["benchmarks"].values())
    if failed:
        print(
            f"raystep eval: {failed} requests failed and were kept with their error; a rerun retries them",
            file=sys.stderr,
        )
        return ROWS_FAILED
    return 0
