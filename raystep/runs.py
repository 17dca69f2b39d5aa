"""The run folder and its manifest.

``<storage>/<run>/`` holds one sub-folder per stage plus ``manifest.json``: the config, library versions,
and per stage its counts and timings. Stages update only their own entry; the update is atomic, so a
killed stage never leaves a torn manifest. On a local or mounted folder it is also locked, so
concurrent stages never lose each other's entries. On object storage (``s3://…``, see ``raystep.fs``)
there is no lock: one driver at a time writes a run's manifest (run its stages one after another).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from typing import Any

from raystep.config import RunConfig
from raystep.fs import StoragePath, atomic_text, is_local, location


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers, for the manifest."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("raystep", "ray", "torch", "transformers", "deepspeed", "vllm", "openai", "math-verify"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


class RunDir:
    """Paths of one run, and its manifest: a local ``Path`` or, for a URI such as ``s3://bucket/runs/x``,
    an ``ObjectPath`` (``raystep.fs``; a URI pyarrow cannot open is a one-line ``ValueError``)."""

    def __init__(self, path: str | os.PathLike[str] | StoragePath):
        self.path = location(path)

    @classmethod
    def from_config(cls, config: RunConfig) -> RunDir:
        return cls(config.run_dir)

    def stage(self, name: str) -> StoragePath:
        """The folder of a stage (created on first use)."""
        p = self.path / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def require_local(self, stage: str) -> None:
        """Fail in one line when a stage that writes plain local files (train, eval, serve, demo) is
        pointed at object storage: only the data stages (collect, localize, rectify) run there."""
        if not is_local(self.path):
            raise ValueError(
                f"{self.path}: {stage} needs a local or mounted run folder; object storage holds the data "
                "stages (collect, localize, rectify) only. Copy pairs/ to a mount and set train.pairs, or "
                "use a mounted storage.root"
            )

    @property
    def manifest_path(self) -> StoragePath:
        return self.path / "manifest.json"

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {}
        return json.loads(self.manifest_path.read_text())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        if not is_local(self.path):  # object storage: a single writer, no lock files
            yield
            return
        with open(self.path / ".manifest.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def update_manifest(self, stage: str | None = None, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the manifest (under ``stages.<stage>`` when a stage is given)."""
        with self._locked():
            data = self.read_manifest()
            data.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
            data["run_dir"] = str(self.path)  # absolute: the config resolved it at load
            data["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            target = data.setdefault("stages", {}).setdefault(stage, {}) if stage else data
            target.update(fields)
            with atomic_text(self.manifest_path) as fh:
                fh.write(json.dumps(data, indent=2, sort_keys=False, default=str))
            return data

    def record_config(self, config: RunConfig) -> None:
        """Write the resolved config and library versions into the manifest."""
        self.update_manifest(config=config.model_dump(mode="json"), versions=library_versions())


@contextlib.contextmanager
def timed_stage(run: RunDir, stage: str) -> Iterator[dict[str, Any]]:
    """Time a stage and record its counts: ``with timed_stage(run, "collect") as stats: stats["rows"] = n``."""
    stats: dict[str, Any] = {}
    start = time.time()
    run.update_manifest(stage, status="running", started_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    try:
        yield stats
    except BaseException as exc:
        run.update_manifest(stage, status="failed", error=f"{type(exc).__name__}: {exc}", **stats)
        raise
    status = "failed_rows" if stats.get("failed_units") else "done"  # a rerun retries them
    run.update_manifest(stage, status=status, seconds=round(time.time() - start, 3), **stats)


def report_failures(stage: str, stats: dict[str, Any], units: str) -> bool:
    """Print the stage's last line when rows failed and were kept (exit code 3); whether any did."""
    failed = int(stats.get("failed_units") or 0)
    if not failed:
        return False
    final = int(stats.get("failed_units_final") or 0)
    retry = f"a rerun retries {failed - final} of them" if failed > final else "none is retried any more"
    print(
        f"raystep {stage}: {failed} {units} failed and were kept with their error "
        f"({final} after {stats.get('max_attempts')} attempts); {retry}",
        file=sys.stderr,
    )
    return True
