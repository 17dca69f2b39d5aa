"""Build ``<run>/report/``: read the run folder, compute the sections, write the page and its data.

``build_report`` does the work; ``refresh_report`` is what a stage calls when it finishes: the same
build under a lock, and never an exception (a report that cannot be written must not fail the stage
that just finished its real work).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raystep.report import load, sections
from raystep.report.page import write_page
from raystep.report.pairs import build_pair_tables, verdicts_of

REPORT_DIR = "report"


@dataclass
class ReportResult:
    """Where the page is and what went into it."""

    index: Path
    pairs: int
    files: int
    bytes: int
    seconds: float
    warnings: list[str]


def _problems(run: Path, warn: load.Warnings) -> dict[str, dict[str, Any]]:
    rows = load.read_columns(run / "problems", ("id", "dataset", "level", "subject"), warn)
    return {str(r["id"]): r for r in rows if r.get("id") is not None}


def _model(run: Path) -> dict[str, Any]:
    folder = run / "model"
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return {"exported": "config.json" in files, "files": files[:40]}


def collect_data(run: Path, preview_chunk: int = 250, detail_chunk: int = 200) -> tuple[dict, Any]:
    """Everything the page shows: (payload for the sections, pair tables)."""
    warn = load.Warnings()
    manifest = load.read_manifest(run, warn)
    problems = _problems(run, warn)
    samples = load.read_columns(
        run / "samples",
        (
            "id",
            "sample_id",
            "correct",
            "error",
            "grade_status",
            "finish_reason",
            "dataset",
            "level",
            "subject",
        ),
        warn,
    )
    localized = load.read_columns(
        run / "localized", ("id", "sample_id", "first_wrong_step", "localizer", "evidence", "error"), warn
    )
    verdicts = {str(r["sample_id"]): verdicts_of(r) for r in localized if r.get("sample_id") is not None}
    pairs, pairs_source = load.read_pairs(run, warn)
    reference = load.read_reference(run, warn)
    metrics = load.read_jsonl_rows(run / "train" / "metrics.jsonl", warn)
    events = load.read_jsonl_rows(run / "train" / "events.jsonl", warn)
    evals = load.read_evaluations(run, warn)
    compares = load.read_comparisons(run, warn)

    if (run / "problems").is_dir():
        sections.check_count(warn, manifest, "problems", "problems", len(problems), "problems/")
    if (run / "samples").is_dir():
        sections.check_count(warn, manifest, "collect", "samples", len(samples), "samples/")
    if (run / "localized").is_dir():
        sections.check_count(warn, manifest, "localize", "localized", len(localized), "localized/")
    if pairs_source:
        sections.check_count(warn, manifest, "rectify", "pairs", len(pairs), pairs_source)
    tables = build_pair_tables(pairs, problems, verdicts, reference, preview_chunk, detail_chunk)
    matched = sum(m is not None for m in tables.index["cols"]["margin"])
    if reference and matched < len(pairs):
        warn.add(f"train/reference.parquet scores {matched} of the {len(pairs)} pairs shown")
    collected = sections.collection(samples, problems, localized, verdicts, manifest)
    evaluation = sections.evaluation(evals, compares, run, warn)
    payload = {
        "run": {
            "name": (manifest.get("config") or {}).get("name") or run.name,
            "path": str(run),
            "created_at": manifest.get("created_at"),
            "updated_at": manifest.get("updated_at"),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        "lineage": {
            "problems": len(problems),
            "samples": len(samples),
            "wrong": sum(1 for s in samples if s.get("correct") is False),
            "localized": len(localized),
            "labelled": sum(
                1 for r in localized if not r.get("error") and (r.get("first_wrong_step") or 0) > 0
            ),
            "pairs": len(pairs),
            "pair_samples": len({p.get("sample_id") for p in pairs if p.get("sample_id")}),
            "pairs_source": pairs_source,
            "reference": matched,
            "train_steps": max(
                (r.get("step", 0) for r in metrics if isinstance(r.get("step"), int)), default=0
            ),
            "model": _model(run),
            "evals": [
                {"name": e["name"], "benchmark": e["benchmark"], "accuracy": e.get("accuracy")}
                for e in evaluation["evals"]
            ],
        },
        "stages": sections.stage_table(manifest),
        "config": manifest.get("config"),
        "versions": manifest.get("versions"),
        "collection": collected,
        "training": sections.training(metrics, events, manifest),
        "evaluation": evaluation,
        "warnings": warn.items,
    }
    return payload, tables


def build_report(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    inline_max_bytes: int = 4_000_000,
    preview_chunk: int = 250,
    detail_chunk: int = 200,
) -> ReportResult:
    """Write the report of ``run_dir`` into ``out_dir`` (default ``<run>/report``); return what it wrote.

    The page is built in a sibling folder and swapped in, so an open page never sees half a report.
    Data up to ``inline_max_bytes`` goes into ``index.html`` itself (one file to mail or attach);
    beyond that, pair texts are chunk files in ``data/`` beside the page, loaded when needed.
    """
    start = time.time()
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    out = Path(out_dir) if out_dir else run / REPORT_DIR
    payload, tables = collect_data(run, preview_chunk, detail_chunk)
    staging = out.with_name(f".{out.name}.new-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    files = write_page(staging, payload, tables, inline_max_bytes)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    if old.exists():
        shutil.rmtree(old)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return ReportResult(
        out / "index.html",
        tables.index["n"],
        len(files),
        size,
        round(time.time() - start, 3),
        payload["warnings"],
    )


@contextlib.contextmanager
def _lock(run: Path) -> Iterator[None]:
    with open(run / ".report.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def refresh_report(run_dir: Any) -> Path | None:
    """Rebuild ``<run>/report/index.html`` after a stage; returns its path, or None (with a message on
    stderr) when it could not be built. Accepts a path or a ``raystep.runs.RunDir``."""
    run = Path(getattr(run_dir, "path", run_dir))
    try:
        with _lock(run):
            return build_report(run).index
    except Exception as exc:  # the stage's own work is done and recorded: never fail it here
        print(
            f"raystep report: could not refresh {run / REPORT_DIR}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return None
