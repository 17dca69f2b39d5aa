"""The page's sections as plain data: overview, collection and localization, training, evaluation.

Each function takes what ``load`` read and returns JSON-ready dicts the page script draws; numbers are
computed here once (accuracies, histograms, agreement, paired statistics), so the script only lays
them out. Counts are taken from the files, and where the manifest records a different count the
difference becomes a warning on the page.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

from raystep.evaluate.compare import CompareError, compare_rows
from raystep.evaluate.report import summarize
from raystep.report.load import Evaluation, Warnings

MAX_LISTED_ERRORS = 2000
"""Rows kept with errors listed on the page (all are counted)."""
MAX_DICT_ENTRIES = 12
"""A manifest value with more entries (per-problem accuracy of a big run) is summarised, not listed."""


def _brief(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) > MAX_DICT_ENTRIES:
            return f"({len(value)} entries, see manifest.json)"
        return {str(k): _brief(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) > MAX_DICT_ENTRIES:
        return f"({len(value)} items, see manifest.json)"
    return value


def brief_fields(stats: Any) -> Any:
    """A stage record with each of its values briefed (the record itself is never cut)."""
    return {str(k): _brief(v) for k, v in stats.items()} if isinstance(stats, dict) else stats


def stage_table(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per manifest stage, in the order stages were first recorded."""
    out = []
    for name, stats in (manifest.get("stages") or {}).items():
        if not isinstance(stats, dict):
            continue
        fields = {
            k: _brief(v)
            for k, v in stats.items()
            if k not in ("status", "started_at", "seconds", "error", "plot")
        }
        out.append(
            {
                "name": name,
                "status": stats.get("status", ""),
                "started_at": stats.get("started_at", ""),
                "seconds": stats.get("seconds"),
                "error": stats.get("error"),
                "fields": fields,
            }
        )
    return out


def check_count(
    warn: Warnings, manifest: dict[str, Any], stage: str, key: str, found: int, what: str
) -> None:
    """Warn when the manifest's count differs from what the folder holds."""
    recorded = ((manifest.get("stages") or {}).get(stage) or {}).get(key)
    if isinstance(recorded, int) and recorded != found:
        warn.add(f"manifest {stage}.{key} = {recorded}, but {what} holds {found}")


# -- collection and localization -------------------------------------------------------------


def _group_accuracy(samples: list[dict[str, Any]], problems: dict[str, dict[str, Any]], field: str) -> dict:
    groups: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        value = s.get(field)
        if value is None:
            value = problems.get(str(s.get("id")), {}).get(field)
        if value is None or value == "":
            continue
        groups[str(value)].append(bool(s.get("correct")))
    return {
        name: {"samples": len(v), "correct": sum(v), "accuracy": sum(v) / len(v)}
        for name, v in sorted(groups.items(), key=lambda kv: (len(kv[0]), kv[0]))
    }


def collection(
    samples: list[dict[str, Any]],
    problems: dict[str, dict[str, Any]],
    localized: list[dict[str, Any]],
    verdicts: dict[str, list[dict[str, Any]]],
    manifest: dict[str, Any],
) -> dict[str, Any]:
    """Per-problem accuracy, where first errors fall per method, agreement, and rows kept with errors."""
    per_problem: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        per_problem[str(s.get("id"))].append(bool(s.get("correct")))
    accuracy_hist = Counter(round(sum(v) / len(v), 4) for v in per_problem.values())

    first_wrong: dict[str, Counter[int]] = defaultdict(Counter)
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    pairwise: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for sample_verdicts in verdicts.values():
        answered = {}
        for v in sample_verdicts:
            name = v["method"]
            if v.get("error"):
                outcomes[name]["errors"] += 1
                continue
            k = int(v.get("k") or 0)
            answered[name] = k
            first_wrong[name][k] += 1
            outcomes[name]["labelled" if k else "no_wrong_step"] += 1
        for a, b in combinations(sorted(answered), 2):
            pairwise[(a, b)][0] += 1
            pairwise[(a, b)][1] += answered[a] == answered[b]

    errors: list[dict[str, Any]] = []
    total_errors = 0
    for s in samples:
        if s.get("error"):
            total_errors += 1
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append({"stage": "collect", "id": s.get("sample_id"), "error": str(s["error"])})
    for r in localized:
        if r.get("error"):
            total_errors += 1
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append(
                    {
                        "stage": "localize",
                        "id": r.get("sample_id"),
                        "error": str(r["error"]),
                        "localizer": r.get("localizer"),
                    }
                )
    stages = manifest.get("stages") or {}
    return {
        "problems": len(per_problem),
        "samples": len(samples),
        "correct": sum(bool(s.get("correct")) for s in samples),
        "grade_status": dict(Counter(str(s.get("grade_status") or "unknown") for s in samples)),
        "finish_reason": dict(Counter(str(s.get("finish_reason") or "unknown") for s in samples)),
        "accuracy_hist": {str(k): v for k, v in sorted(accuracy_hist.items())},
        "by_dataset": _group_accuracy(samples, problems, "dataset"),
        "by_level": _group_accuracy(samples, problems, "level"),
        "by_subject": _group_accuracy(samples, problems, "subject"),
        "localized": len(localized),
        "first_wrong": {m: {str(k): c[k] for k in sorted(c)} for m, c in sorted(first_wrong.items())},
        "outcomes": {m: dict(c) for m, c in sorted(outcomes.items())},
        "agreement": [
            {"a": a, "b": b, "n": n, "agree": same, "rate": same / n if n else None}
            for (a, b), (n, same) in sorted(pairwise.items())
        ],
        "all_agree": (stages.get("localize") or {}).get("agreement"),
        "errors": errors,
        "errors_total": total_errors,
        "rejects": {
            name: {"count": st.get("rejects"), "reasons": st.get("reject_reasons")}
            for name, st in stages.items()
            if isinstance(st, dict) and st.get("rejects")
        },
        "rectify": brief_fields(stages.get("rectify")) if stages.get("rectify") else None,
    }


# -- training --------------------------------------------------------------------------------

TRAIN_KEYS: tuple[str, ...] = (
    "step",
    "epoch",
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margin",
    "rewards/accuracy",
    "lr",
    "tokens_per_s",
    "seconds",
    "tokens",
    "mfu",
)


def training(metrics: list[dict[str, Any]], events: list[dict[str, Any]], manifest: dict[str, Any]) -> dict:
    """The step log as columns (one list per metric), the start/resume events and the stage stats."""
    rows = sorted((r for r in metrics if isinstance(r.get("step"), int)), key=lambda r: r["step"])
    return {
        "columns": {k: [r.get(k) for r in rows] for k in TRAIN_KEYS if any(k in r for r in rows)},
        "events": events,
        "stats": brief_fields((manifest.get("stages") or {}).get("train")),
    }


# -- evaluation ------------------------------------------------------------------------------

SUMMARY_KEYS: tuple[str, ...] = (
    "model",
    "benchmark",
    "accuracy",
    "ci95",
    "problems",
    "samples",
    "correct",
    "k",
    "temperature",
    "max_tokens",
    "api",
    "template",
    "counts",
    "maj_at_k",
    "pass_at_k",
    "by_level",
    "by_subject",
    "mean_completion_tokens",
    "latency_s",
)


def _answer(rows: list[dict[str, Any]]) -> dict[str, Any]:
    first = sorted(rows, key=lambda r: int(r.get("sample") or 0))[0]
    return {
        "response": first.get("response") or "",
        "pred": first.get("pred"),
        "correct": bool(first.get("correct")),
        "error": first.get("error"),
        "samples": len(rows),
    }


def _by_id(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[str(r["id"])].append(r)
    return out


def comparison(a: Evaluation, b: Evaluation, source: str) -> dict[str, Any]:
    """Paired statistics of B against A (McNemar) and, for each fixed or broken problem, both answers."""
    result = compare_rows(a.rows, b.rows)
    rows_a, rows_b = _by_id(a.rows), _by_id(b.rows)
    changed: dict[str, list[dict[str, Any]]] = {"fixed": [], "broken": []}
    for item in result["items"]:
        if item["a_correct"] == item["b_correct"]:
            continue
        first = rows_a[item["id"]][0]
        changed["fixed" if item["b_correct"] else "broken"].append(
            {
                "id": item["id"],
                "level": item.get("level"),
                "subject": item.get("subject"),
                "gold": item.get("gold"),
                "question": first.get("question") or "",
                "a": _answer(rows_a[item["id"]]),
                "b": _answer(rows_b[item["id"]]),
            }
        )
    return {
        "benchmark": a.benchmark,
        "a": a.name,
        "b": b.name,
        "source": source,
        "overall": result["overall"],
        "by_level": result["by_level"],
        "by_subject": result["by_subject"],
        "only_in_a": result["only_in_a"],
        "only_in_b": result["only_in_b"],
        **changed,
    }


def _summary(e: Evaluation) -> dict[str, Any]:
    """The folder's ``summary.json``, or one computed from its answers while it is still running."""
    if e.summary or not e.rows:
        return e.summary
    return summarize(e.rows, {"benchmark": e.benchmark})


def evaluation(
    evals: list[Evaluation], compares: list[dict[str, Any]], run: Path, warn: Warnings
) -> dict[str, Any]:
    """Each benchmark's accuracy with intervals, and before-vs-after comparisons.

    Comparisons are the ones ``raystep compare`` (or the demo) wrote; when a benchmark was evaluated
    more than once and none was written, its first and last evaluations are compared.
    """
    by_place = {(e.name, e.folder.name): e for e in evals}
    done: set[tuple[str, str, str]] = set()
    out_compares = []
    for c in compares:
        a = by_place.get((Path(c["a"]).parent.name, Path(c["a"]).name))
        b = by_place.get((Path(c["b"]).parent.name, Path(c["b"]).name))
        if a is None or b is None:
            warn.add(f"{c['path']}: compares {c['a']} with {c['b']}, not both in {run / 'eval'}")
            continue
        key = (a.name, b.name, a.benchmark)
        if key in done:
            continue
        done.add(key)
        try:
            out_compares.append(comparison(a, b, str(Path(c["path"]).relative_to(run))))
        except CompareError as exc:
            warn.add(f"{c['path']}: {exc}")
    benches: dict[str, list[Evaluation]] = defaultdict(list)
    for e in evals:
        benches[e.benchmark].append(e)
    for bench, group in benches.items():
        if len(group) >= 2 and not any(k[2] == bench for k in done):
            try:
                out_compares.append(comparison(group[0], group[-1], "first and last evaluation"))
            except CompareError as exc:
                warn.add(f"{group[0].folder} vs {group[-1].folder}: {exc}")
    return {
        "evals": [
            {
                "name": e.name,
                "benchmark": e.benchmark,
                "folder": str(e.folder.relative_to(run)),
                "rows": len(e.rows),
                "partial": not e.summary,
                **{k: v for k, v in _summary(e).items() if k in SUMMARY_KEYS},
            }
            for e in evals
        ],
        "compares": out_compares,
    }
