"""``raystep localize-bench``: score the configured localizer on ProcessBench-style labels.

A labelled row is ``problem, steps, label`` where ``label`` is the 0-based index of the first wrong
step, or -1 when every step is right (ProcessBench's form; an optional ``answer`` column gives the judge
a reference answer and lets rollouts grade). The scores are ProcessBench's: accuracy on the wrong
solutions (exact first-error index), accuracy on the correct ones (predicting -1), and their harmonic
mean, "F1". A row the localizer could not label counts as a miss and is counted separately.

Data: ``Qwen/ProcessBench`` from the hub (``--split gsm8k|math|olympiadbench|omnimath``) when the hub
is reachable, or local JSONL / JSON / Parquet files (``--data``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from raystep.config import RunConfig
from raystep.records import RowError, read_parquet, write_jsonl

HUB_NAME = "Qwen/ProcessBench"


def check_labelled(row: Any) -> dict[str, Any]:
    """A benchmark row in our shape; raises ``ValueError`` naming what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    problem = row.get("problem", row.get("question"))
    steps = row.get("steps")
    label = row.get("label")
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError("missing field 'problem'")
    if not isinstance(steps, (list, tuple)) or not steps or not all(isinstance(s, str) for s in steps):
        raise ValueError("field 'steps' must be a non-empty list of strings")
    if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
        raise ValueError(f"field 'label' must be an int in -1..{len(steps) - 1}, got {label!r}")
    answer = row.get("answer", row.get("reference_answer"))
    return {
        "id": str(row.get("id", "")),
        "question": problem,
        "steps": list(steps),
        "label": label,
        "answer": None if answer is None else str(answer),
    }


def load_labelled(
    path: str | None = None, split: str = "gsm8k", limit: int | None = None
) -> list[dict[str, Any]]:
    """Rows from a local file (``.jsonl``, ``.json``, ``.parquet`` or a folder of shards) or the hub."""
    raw: list[tuple[str, int, Any]] = []
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such benchmark file")
        if p.is_dir() or p.suffix == ".parquet":
            raw = [(str(p), i, r) for i, r in enumerate(read_parquet(p), start=1)]
        elif p.suffix == ".json":
            data = json.loads(p.read_text())
            data = data.get(split, data.get("data")) if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise RowError(f"{p}: expected a JSON list of rows (or {{split: [...]}})")
            raw = [(str(p), i, r) for i, r in enumerate(data, start=1)]
        else:
            with p.open(encoding="utf-8") as fh:
                for i, line in enumerate(fh, start=1):
                    if line.strip():
                        try:
                            raw.append((str(p), i, json.loads(line)))
                        except json.JSONDecodeError as exc:
                            raise RowError(f"{p}:{i}: invalid JSON: {exc}") from None
    else:
        try:
            import datasets
        except ImportError as exc:  # pragma: no cover - datasets is a dev/hub extra
            raise RuntimeError("loading ProcessBench from the hub needs `pip install raystep[hub]`") from exc
        try:
            ds = datasets.load_dataset(HUB_NAME, split=split)
        except Exception as exc:
            raise RuntimeError(
                f"cannot load {HUB_NAME} split {split!r} from the hub ({type(exc).__name__}: {exc}); "
                "pass a local file with --data"
            ) from exc
        raw = [(f"{HUB_NAME}:{split}", i, dict(r)) for i, r in enumerate(ds, start=1)]
    rows = []
    for source, line, item in raw[: limit or None]:
        try:
            rows.append(check_labelled(item))
        except ValueError as exc:
            raise RowError(f"{source}:{line}: {exc}") from None
    for i, row in enumerate(rows):
        row["id"] = row["id"] or f"{split}-{i}"
    return rows


def prediction(row: dict[str, Any]) -> int | None:
    """ProcessBench's index from a localized row: 0-based first wrong step, -1 for none, None on error."""
    if row.get("error"):
        return None
    return int(row["first_wrong_step"]) - 1 if int(row["first_wrong_step"]) >= 1 else -1


def score(labels: list[int], preds: list[int | None]) -> dict[str, Any]:
    """Accuracy on wrong solutions, on correct ones, and their harmonic mean (ProcessBench's F1)."""
    wrong = [(lab, p) for lab, p in zip(labels, preds, strict=True) if lab != -1]
    right = [(lab, p) for lab, p in zip(labels, preds, strict=True) if lab == -1]
    acc_wrong = sum(p == lab for lab, p in wrong) / len(wrong) if wrong else None
    acc_correct = sum(p == -1 for _, p in right) / len(right) if right else None
    f1 = None
    if acc_wrong is not None and acc_correct is not None:
        f1 = 2 * acc_wrong * acc_correct / (acc_wrong + acc_correct) if acc_wrong + acc_correct else 0.0
    return {
        "n": len(labels),
        "n_wrong": len(wrong),
        "n_correct": len(right),
        "acc_wrong": acc_wrong,
        "acc_correct": acc_correct,
        "f1": f1,
        "errors": sum(p is None for p in preds),
    }


def run_bench(
    config: RunConfig, rows: list[dict[str, Any]], out_dir: Path, localizer: Any = None
) -> dict[str, Any]:
    """Localize every row, write predictions and the report under ``out_dir``; returns the report."""
    from tqdm import tqdm

    from raystep.stages.localizers import build_localizer, close_localizer, locate_safely

    out_dir.mkdir(parents=True, exist_ok=True)
    own = localizer is None
    if localizer is None:
        localizer = build_localizer(config, cache_dir=out_dir / "judge-cache")
    located: list[dict[str, Any]] = []
    batch = config.localize.batch_size
    try:
        with tqdm(total=len(rows), desc="localize-bench", unit="solution") as bar:
            for start in range(0, len(rows), batch):
                chunk = rows[start : start + batch]
                located.extend(locate_safely(localizer, chunk))
                bar.update(len(chunk))
    finally:
        if own:
            close_localizer(localizer)
    preds = [prediction(r) for r in located]
    report = {
        "localizer": getattr(localizer, "name", "?"),
        "methods": list(config.localize.methods),
        "combine": config.localize.combine,
        **score([r["label"] for r in rows], preds),
    }
    write_jsonl(
        out_dir / "predictions.jsonl",
        (
            {
                "id": r["id"],
                "label": r["label"],
                "pred": p,
                "error": lr.get("error"),
                "evidence": lr.get("evidence"),
            }
            for r, lr, p in zip(rows, located, preds, strict=True)
        ),
    )
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}"

    return (
        f"localizer {report['localizer']}: n={report['n']} (wrong {report['n_wrong']}, correct "
        f"{report['n_correct']}, errors {report['errors']})\n"
        f"  acc on wrong   {pct(report['acc_wrong'])}\n"
        f"  acc on correct {pct(report['acc_correct'])}\n"
        f"  F1             {pct(report['f1'])}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from raystep.cli import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument(
        "--data", help="local JSONL/JSON/Parquet file in ProcessBench form (default: the hub)"
    )
    parser.add_argument(
        "--split", default="gsm8k", help="ProcessBench split: gsm8k, math, olympiadbench, omnimath"
    )
    parser.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    parser.add_argument("--out", help="report folder (default: <run>/localize_bench/<split>)")


def main(args: argparse.Namespace) -> int:
    from raystep.cli import config_from_args

    config = config_from_args(args)
    rows = load_labelled(args.data, args.split, args.limit)
    out = Path(args.out) if args.out else Path(config.run_dir) / "localize_bench" / args.split
    report = run_bench(config, rows, out)
    print(format_report(report))
    print(f"report: {out / 'report.json'}")
    return 0
