"""Experiment tracking for a training run: MLflow and W&B through Ray's integrations, rank 0 only.

``train.log_to`` picks the trackers; with none configured ``Trackers`` is empty and every call is free.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from raystep.config import RunConfig


class Trackers:
    """The open tracker clients of one worker (none on ranks other than 0)."""

    def __init__(self, clients: list[tuple[str, Any]]):
        self.clients = clients

    @classmethod
    def open(cls, config: RunConfig, run_dir: str | os.PathLike[str], rank: int) -> Trackers:
        """Start the configured trackers; ``train.tracking_uri`` is resolved by the driver before it ships."""
        t = config.train
        if rank != 0:
            return cls([])
        clients: list[tuple[str, Any]] = []
        if "mlflow" in t.log_to:
            from ray.air.integrations.mlflow import setup_mlflow

            mlflow = setup_mlflow(
                tracking_uri=t.tracking_uri,
                experiment_name=config.name,
                create_experiment_if_not_exists=True,
                run_name=config.name,
                rank_zero_only=False,
            )
            clients.append(("mlflow", mlflow))
        if "wandb" in t.log_to:
            from ray.air.integrations.wandb import setup_wandb

            if not os.environ.get("WANDB_API_KEY"):
                os.environ.setdefault("WANDB_MODE", "offline")  # no key: log locally, `wandb sync` later
            Path(run_dir, "wandb").mkdir(parents=True, exist_ok=True)
            run = setup_wandb(project="raystep", name=config.name, dir=str(run_dir), rank_zero_only=False)
            clients.append(("wandb", run))
        return cls(clients)

    def log(self, row: dict[str, Any]) -> None:
        numeric = {k.replace("/", "_"): v for k, v in row.items() if isinstance(v, (int, float))}
        for kind, client in self.clients:
            if kind == "mlflow":
                client.log_metrics(numeric, step=row["step"])
            else:
                client.log(numeric, step=row["step"])

    def close(self) -> None:
        for kind, client in self.clients:
            if kind == "mlflow":
                client.end_run()
            else:
                client.finish()
