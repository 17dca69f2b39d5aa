"""The train stage: pairs -> Ray Train ``TorchTrainer`` + DeepSpeed -> ``<run>/model/``.

Reads ``train.pairs`` (or the run's ``pairs/``), launches ``train.num_workers`` workers running
``raystep.train.loop.train_loop``, checkpoints into ``<run>/train/`` (or ``train.checkpoint_storage``, which
may be ``s3://``), and exports the final model as a Hugging Face folder. Rerunning the stage with the same
config resumes from the latest checkpoint; a worker failure is retried up to ``train.max_failures``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from raystep.config import ConfigError, RunConfig
from raystep.records import Rejects, read_rows
from raystep.runs import RunDir, timed_stage
from raystep.train.loop import WorkerJob, load_tokenizer, tokenize_run_pairs, train_loop
from raystep.train.plan import TrainPlan

FAULT_ENV = "RAYSTEP_TRAIN_FAULT"
"""Test hook: ``STEP:RANK:MARKER`` makes worker RANK exit once at STEP (0-based), marked by MARKER."""


def find_pairs(config: RunConfig, run_dir: RunDir) -> Path:
    """``train.pairs`` when set, else ``<run>/pairs/`` (Parquet shards, or ``pairs.jsonl``)."""
    if config.train.pairs:
        path = Path(config.train.pairs)
        if not path.exists():
            raise FileNotFoundError(f"train.pairs: {path} does not exist")
        return path
    folder = run_dir.path / "pairs"
    if any(folder.glob("*.parquet")):
        return folder
    if (folder / "pairs.jsonl").exists():
        return folder / "pairs.jsonl"
    raise FileNotFoundError(f"no pairs in {folder} (run rectify first) and train.pairs is not set")


def load_pairs(config: RunConfig, run_dir: RunDir) -> tuple[list[dict[str, Any]], Path, Rejects | None]:
    """Pair rows in file order (the order is part of the deterministic data plan)."""
    path = find_pairs(config, run_dir)
    rejects = Rejects(run_dir.path / "train" / "rejects.jsonl") if config.data.rejects else None
    rows = read_rows(path, kind="pair", rejects=rejects)
    if rejects is not None:
        rejects.save()
    if config.train.mode in ("dpo", "sft"):
        bad = [
            i
            for i, r in enumerate(rows)
            if not (r.get("full_chosen") or "").strip() or not (r.get("full_rejected") or "").strip()
        ]
        if bad:
            raise ValueError(
                f"{path}: train.mode={config.train.mode} needs full_chosen/full_rejected; "
                f"rows {bad[:5]} lack them"
            )
    if not rows:
        raise ValueError(f"{path}: no pairs to train on")
    return rows, path, rejects


def worker_job(config: RunConfig, rows: list[dict[str, Any]], run_dir: RunDir) -> WorkerJob:
    """The config as pydantic JSON (tracking URI resolved here, on the driver), the rows and the run folder."""
    uri = (
        config.train.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{run_dir.path / 'mlflow.db'}"
    )
    shipped = config.model_copy(update={"train": config.train.model_copy(update={"tracking_uri": uri})})
    fault = None
    if os.environ.get(FAULT_ENV):
        step, rank, marker = os.environ[FAULT_ENV].split(":", 2)
        fault = {"step": int(step), "rank": int(rank), "marker": marker}
    run_dir.stage("train")
    return WorkerJob(config=shipped.model_dump_json(), rows=rows, run_dir=str(run_dir.path), fault=fault)


def token_stats(config: RunConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Truncation counts and the tokens each layout processes, from the driver's own tokenization."""
    pairs = tokenize_run_pairs(config, rows, load_tokenizer(config.model))
    shared = sum(p.shared_tokens for p in pairs)
    two = sum(p.two_sequence_tokens for p in pairs)
    return {
        "pairs_prompt_truncated": sum(1 for p in pairs if p.prompt_cut),
        "prompt_tokens_cut": sum(p.prompt_cut for p in pairs),
        "pairs_step_truncated": sum(1 for p in pairs if p.response_cut),
        "step_tokens_cut": sum(p.response_cut for p in pairs),
        "tokens_per_epoch_shared": shared,
        "tokens_per_epoch_two_sequence": two,
    }


def fit(config: RunConfig, job: WorkerJob) -> Any:
    """Build and run the ``TorchTrainer``; returns Ray's ``Result``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = config.train
    if not ray.is_initialized():
        ray.init()
    if t.use_gpu and ray.cluster_resources().get("GPU", 0) < 1:
        raise ConfigError(
            "train.use_gpu is true but the Ray cluster has no GPU; set train.use_gpu=false for CPU"
        )
    storage = t.checkpoint_storage or str(job.train_dir)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=job.as_dict(),
        scaling_config=ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker=dict(t.resources_per_worker) or None,
        ),
        run_config=RayRunConfig(
            name="ray",
            storage_path=storage,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.num_checkpoints_to_keep),
        ),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
    )
    return trainer.fit()


def training_digest(config: RunConfig) -> str:
    """What decides the trained weights: the train and model sections and the pairs' bytes."""
    import hashlib

    run_dir = RunDir.from_config(config)
    digest = hashlib.sha256(config.train.model_dump_json().encode() + config.model.model_dump_json().encode())
    source = find_pairs(config, run_dir)
    for path in sorted(source.rglob("*")) if source.is_dir() else [source]:
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def run(config: RunConfig) -> dict[str, Any]:
    """Train on the run's pairs and export ``<run>/model/``; returns the stage stats (with ``model_dir``)."""
    run_dir = RunDir.from_config(config)
    run_dir.require_local("raystep train")
    run_dir.record_config(config)
    with timed_stage(run_dir, "train") as stats:
        rows, source, rejects = load_pairs(config, run_dir)
        job = worker_job(config, rows, run_dir)
        plan = TrainPlan.for_run(config.train, len(rows), config.train.num_workers)
        stats.update(
            pairs=len(rows),
            pairs_source=str(source),
            rejected_rows=rejects.count if rejects else 0,
            total_steps=plan.total_steps,
            effective_batch_size=plan.effective_batch_size,
            grad_accum=plan.grad_accum,
        )
        stats.update(token_stats(config, rows))
        result = fit(config, job)
        from raystep.train.metrics import StepLog, summarize

        log_rows = StepLog(job.train_dir).rows()
        stats.update(summarize(log_rows))
        stats["checkpoint"] = result.checkpoint.path if result.checkpoint else None
        stats["model_dir"] = str(job.model_dir)
        stats["training_digest"] = training_digest(config)
        stats["error"] = None  # clears the error an earlier, failed attempt left in the manifest
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from raystep.config_args import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--pairs", help="pair file or folder (overrides train.pairs)")


def main(args: argparse.Namespace) -> int:
    from raystep.config_args import config_from_args

    config = config_from_args(args)
    if args.pairs:
        config.train.pairs = args.pairs
    try:
        stats = run(config)
    except (FileNotFoundError, ValueError) as exc:  # missing pairs, malformed rows (file:line), bad sizes
        print(f"raystep train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2, default=str))
    return 0
