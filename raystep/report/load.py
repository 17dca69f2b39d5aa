"""Read a run folder for the report: only reading, and never failing on one bad file.

Each reader returns plain rows (dicts) and reports a file it cannot read as a one-line warning naming
the file, so a report of a half-finished or damaged run still shows everything that is readable and
says what is not. Parquet shards are read column by column (only the columns a section needs), which
keeps a run with 100,000 pairs cheap to read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from raystep.evaluate.samples import read_log
from raystep.records import RowError, iter_jsonl


@dataclass
class Warnings:
    """What could not be read or does not add up, shown at the top of the page and printed by the CLI."""

    items: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.items.append(message)


def read_manifest(run: Path, warn: Warnings) -> dict[str, Any]:
    path = run / "manifest.json"
    if not path.exists():
        warn.add(f"{path}: no manifest (stages record config, counts and timings there)")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        warn.add(f"{path}: unreadable manifest: {exc}")
        return {}
    if not isinstance(data, dict):
        warn.add(f"{path}: the manifest is not a JSON object")
        return {}
    return data


def shard_files(folder: Path) -> list[Path]:
    """The ``*.parquet`` files of a stage folder, in name order (``part-00000.parquet`` first)."""
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def read_columns(folder: Path, columns: Iterable[str], warn: Warnings) -> list[dict[str, Any]]:
    """Rows of every shard in ``folder`` with only ``columns`` (absent ones are None)."""
    wanted = list(columns)
    rows: list[dict[str, Any]] = []
    for path in shard_files(folder):
        try:
            present = set(pq.ParquetFile(path).schema_arrow.names)
            table = pq.read_table(path, columns=[c for c in wanted if c in present])
        except Exception as exc:  # a torn or foreign file: say which, keep the others
            warn.add(f"{path}: unreadable shard ({type(exc).__name__}: {exc})")
            continue
        data = {name: table.column(name).to_pylist() for name in table.column_names}
        for i in range(table.num_rows):
            rows.append({c: (data[c][i] if c in data else None) for c in wanted})
    return rows


def read_jsonl_rows(path: Path, warn: Warnings) -> list[dict[str, Any]]:
    """Rows of a JSONL file; the first malformed line ends the read with a file:line warning."""
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    try:
        rows.extend(iter_jsonl(path))
    except (RowError, OSError) as exc:
        warn.add(f"{exc} (rows after it are not shown)")
    return rows


PAIR_COLUMNS: tuple[str, ...] = (
    "dataset",
    "prompt",
    "initial_reason_steps",
    "chosen",
    "rejected",
    "full_chosen",
    "full_rejected",
    "answer",
    "pair_id",
    "problem_id",
    "sample_id",
    "step_index",
    "localizer",
    "chosen_success_rate",
    "rectify_success_rate",
    "policy_model",
    "sampling",
    "ref_chosen_logp",
    "ref_rejected_logp",
)


def read_pairs(run: Path, warn: Warnings) -> tuple[list[dict[str, Any]], str]:
    """The run's pairs: ``pairs/`` shards, else ``pairs/pairs.jsonl``; returns (rows, source)."""
    folder = run / "pairs"
    if shard_files(folder):
        return read_columns(folder, PAIR_COLUMNS, warn), str(folder)
    jsonl = folder / "pairs.jsonl"
    rows = read_jsonl_rows(jsonl, warn)
    return [{c: r.get(c) for c in PAIR_COLUMNS} for r in rows], str(jsonl) if rows else ""


def pair_key(row: dict[str, Any]) -> str:
    """How a pair is matched across files: its id, else its four texts (public data has no ids)."""
    if row.get("pair_id"):
        return str(row["pair_id"])
    texts = (row.get(k) or "" for k in ("prompt", "initial_reason_steps", "chosen", "rejected"))
    return "\x1f".join(texts)


def read_reference(run: Path, warn: Warnings) -> dict[str, tuple[float, float]]:
    """Reference log-probs the training stage stored (``train/reference.parquet``), by pair key."""
    path = run / "train" / "reference.parquet"
    if not path.exists():
        return {}
    values = ["ref_chosen_logp", "ref_rejected_logp"]
    try:
        present = set(pq.ParquetFile(path).schema_arrow.names)
        table = pq.read_table(path, columns=[c for c in ["pair_id", *values] if c in present])
        if "pair_id" not in present or table.column("pair_id").null_count:  # match by texts instead
            texts = ["prompt", "initial_reason_steps", "chosen", "rejected"]
            table = pq.read_table(path, columns=[c for c in [*texts, "pair_id", *values] if c in present])
    except Exception as exc:
        warn.add(f"{path}: unreadable ({type(exc).__name__}: {exc})")
        return {}
    out: dict[str, tuple[float, float]] = {}
    for row in table.to_pylist():
        c, r = row.get("ref_chosen_logp"), row.get("ref_rejected_logp")
        if c is not None and r is not None:
            out[pair_key(row)] = (float(c), float(r))
    return out


@dataclass
class Evaluation:
    """One ``eval/<name>/<benchmark>/`` folder."""

    name: str
    benchmark: str
    folder: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]


def read_evaluations(run: Path, warn: Warnings) -> list[Evaluation]:
    """Every ``eval/<name>/<benchmark>/`` with a ``summary.json`` or a ``samples.jsonl``, oldest first."""
    root = run / "eval"
    found: list[Evaluation] = []
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        summary_path, log = folder / "summary.json", folder / "samples.jsonl"
        if not summary_path.exists() and not log.exists():
            continue
        summary: dict[str, Any] = {}
        if summary_path.exists():
            try:
                summary = json.loads(summary_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                warn.add(f"{summary_path}: unreadable ({exc})")
        try:
            rows = read_log(log)
        except (RowError, OSError) as exc:
            warn.add(f"{exc}")
            rows = []
        found.append(
            Evaluation(
                folder.parent.name, str(summary.get("benchmark") or folder.name), folder, summary, rows
            )
        )
    found.sort(key=lambda e: (_mtime(e.folder / "summary.json"), e.name, e.benchmark))
    return found


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


DATA_FOLDERS = frozenset(
    {"problems", "samples", "localized", "rectified", "pairs", "train", "model", "policy", "report"}
)
"""Top-level folders that hold a stage's data or checkpoints, never a comparison: not searched."""


def read_comparisons(run: Path, warn: Warnings) -> list[dict[str, Any]]:
    """``compare.json`` files ``raystep compare`` wrote in the run folder (``eval/``, ``demo/``, ...)."""
    out = []
    tops = [
        p for p in run.iterdir() if p.is_dir() and p.name not in DATA_FOLDERS and not p.name.startswith(".")
    ]
    for path in sorted(f for top in tops for f in top.rglob("compare.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            warn.add(f"{path}: unreadable ({exc})")
            continue
        if isinstance(data, dict) and data.get("a") and data.get("b"):
            out.append({**data, "path": str(path)})
    return out
