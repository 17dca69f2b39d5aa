"""From graded sample rows to ``summary.json``, ``report.md`` and PNG plots of one benchmark.

Accuracy is the mean per-problem correctness (pass@1; with k = 1 simply correct / n), with a 95%
Wilson interval over problems; MATH rows are also broken down by subject and level. Unparsable
answers, grader time-outs and request errors count as wrong and are reported, never hidden.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from raystep.evaluate.stats import majority_vote, pass_at_k, wilson_interval


def item_results(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per problem (first-seen order): its samples' mean correctness and its verdict.

    ``correct`` is the single sample's verdict when k = 1 and the majority vote (maj@k) otherwise:
    this is what paired comparisons use.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["id"]), []).append(row)
    items = []
    for pid, samples in groups.items():
        samples = sorted(samples, key=lambda r: int(r["sample"]))
        flags = [bool(r.get("correct")) for r in samples]
        preds = [r.get("pred") for r in samples]
        first = samples[0]
        items.append(
            {
                "id": pid,
                "n_samples": len(samples),
                "n_correct": sum(flags),
                "mean_correct": sum(flags) / len(flags),
                "correct": flags[0] if len(flags) == 1 else majority_vote(preds, flags),
                "any_correct": any(flags),
                "subject": first.get("subject"),
                "level": first.get("level"),
            }
        )
    return items


def _bucket(items: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(items)
    successes = sum(i["mean_correct"] for i in items)
    lo, hi = wilson_interval(successes, n)
    return {
        "n": n,
        "correct": int(successes) if float(successes).is_integer() else round(successes, 4),
        "accuracy": successes / n if n else 0.0,
        "ci95": [lo, hi],
    }


def group_by(items: list[dict[str, Any]], field: str) -> dict[str, list[dict[str, Any]]]:
    """Items grouped by ``field`` (``level`` / ``subject``), groups sorted; items without it are left out.

    Levels sort by length first, so "Level 10" comes after "Level 9".
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        if item.get(field) is not None and item.get(field) != "":
            groups[str(item[field])].append(item)
    key = (lambda s: (len(s), s)) if field == "level" else (lambda s: s)
    return {name: groups[name] for name in sorted(groups, key=key)}


def _breakdown(items: list[dict[str, Any]], field: str) -> dict[str, Any]:
    return {name: _bucket(group) for name, group in group_by(items, field).items()}


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0 <= q <= 1) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarize(rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The summary of one benchmark: overall, maj@k / pass@k when k > 1, breakdowns and counts."""
    items = item_results(rows)
    k = int(meta.get("k", 1))
    summary: dict[str, Any] = dict(meta)
    overall = _bucket(items)
    summary.update(
        problems=len(items),
        samples=len(rows),
        accuracy=overall["accuracy"],
        correct=overall["correct"],
        ci95=overall["ci95"],
    )
    if k > 1:
        full = [i for i in items if i["n_samples"] >= k]
        maj = sum(i["correct"] for i in full)
        pk = sum(pass_at_k(i["n_samples"], i["n_correct"], k) for i in full)
        summary["maj_at_k"] = {
            "k": k,
            "n": len(full),
            "accuracy": maj / len(full) if full else 0.0,
            "ci95": list(wilson_interval(maj, len(full))),
        }
        summary["pass_at_k"] = {
            "k": k,
            "n": len(full),
            "accuracy": pk / len(full) if full else 0.0,
            "ci95": list(wilson_interval(pk, len(full))),
        }
    statuses = [r.get("grade_status") for r in rows]
    summary["counts"] = {
        "unparsable": statuses.count("unparsable"),
        "grader_timeouts": statuses.count("timeout"),
        "grader_errors": statuses.count("error"),
        "request_errors": sum(1 for r in rows if r.get("error")),
        "truncated": sum(1 for r in rows if r.get("finish_reason") == "length"),
    }
    summary["by_subject"] = _breakdown(items, "subject")
    summary["by_level"] = _breakdown(items, "level")
    tokens = [r["completion_tokens"] for r in rows if isinstance(r.get("completion_tokens"), int)]
    latencies = [float(r["latency_s"]) for r in rows if isinstance(r.get("latency_s"), (int, float))]
    summary["mean_completion_tokens"] = statistics.fmean(tokens) if tokens else None
    summary["latency_s"] = {
        "mean": statistics.fmean(latencies) if latencies else None,
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
    }
    return summary


def pct(x: float) -> str:
    """A fraction as a percentage with one decimal, without the sign: 0.4567 -> "45.7"."""
    return f"{100 * x:.1f}"


def _table(title: str, buckets: dict[str, Any]) -> list[str]:
    lines = [
        f"### {title}",
        "",
        f"| {title.split()[-1]} | n | accuracy % | 95% CI |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, b in buckets.items():
        lines.append(
            f"| {name} | {b['n']} | {pct(b['accuracy'])} | {pct(b['ci95'][0])}–{pct(b['ci95'][1])} |"
        )
    return lines + [""]


def render_markdown(summary: dict[str, Any], plots: list[str]) -> str:
    """``report.md``: what a person reads first."""
    lo, hi = summary["ci95"]
    lines = [
        f"## {summary.get('benchmark', 'benchmark')} — {summary.get('model', '')}",
        "",
        f"Endpoint `{summary.get('base_url', '')}` ({summary.get('api', '')} API, template "
        f"`{summary.get('template', '')}`), temperature {summary.get('temperature')}, "
        f"max tokens {summary.get('max_tokens')}, k = {summary.get('k', 1)}.",
        "",
        "| metric | value | 95% Wilson CI | n |",
        "| --- | ---: | --- | ---: |",
        f"| accuracy (pass@1) | {pct(summary['accuracy'])}% | {pct(lo)}–{pct(hi)}% | {summary['problems']} |",
    ]
    for name in ("maj_at_k", "pass_at_k"):
        if name in summary:
            m = summary[name]
            label = f"{name.split('_')[0]}@{m['k']}"
            lines.append(
                f"| {label} | {pct(m['accuracy'])}% | {pct(m['ci95'][0])}–{pct(m['ci95'][1])}% | {m['n']} |"
            )
    c = summary["counts"]
    lines += [
        "",
        "Counted as wrong: "
        f"{c['unparsable']} unparsable answers, {c['grader_timeouts']} grader time-outs, "
        f"{c['grader_errors']} grader errors, {c['request_errors']} request errors "
        f"(out of {summary['samples']} samples); {c['truncated']} responses hit the token limit.",
        "",
    ]
    if summary["by_subject"]:
        lines += _table("Accuracy by subject", summary["by_subject"])
    if summary["by_level"]:
        lines += _table("Accuracy by level", summary["by_level"])
    for plot in plots:
        lines += [f"![{Path(plot).stem}]({plot})", ""]
    return "\n".join(lines)


def _bar_plot(path: Path, buckets: dict[str, Any], title: str, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(buckets)
    acc = [100 * buckets[n]["accuracy"] for n in names]
    lower = [max(0.0, a - 100 * buckets[n]["ci95"][0]) for a, n in zip(acc, names, strict=True)]
    upper = [max(0.0, 100 * buckets[n]["ci95"][1] - a) for a, n in zip(acc, names, strict=True)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), acc, yerr=[lower, upper], capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(
        names, rotation=30 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center"
    )
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy % (95% Wilson CI)")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: Path, summary: dict[str, Any]) -> list[str]:
    """Write ``summary.json``, the plots and ``report.md`` into ``out_dir``; return the file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = summary.get("benchmark", "")
    overall = {
        "overall": {"accuracy": summary["accuracy"], "ci95": summary["ci95"], "n": summary["problems"]}
    }
    for name in ("maj_at_k", "pass_at_k"):
        if name in summary:
            overall[f"{name.split('_')[0]}@{summary[name]['k']}"] = summary[name]
    plots = ["accuracy.png"]
    _bar_plot(out_dir / "accuracy.png", overall, f"{bench}: {summary.get('model', '')}", "")
    if summary["by_level"]:
        plots.append("accuracy_by_level.png")
        _bar_plot(out_dir / "accuracy_by_level.png", summary["by_level"], f"{bench} by level", "level")
    if summary["by_subject"]:
        plots.append("accuracy_by_subject.png")
        _bar_plot(
            out_dir / "accuracy_by_subject.png", summary["by_subject"], f"{bench} by subject", "subject"
        )
    summary = {**summary, "plots": plots}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "report.md").write_text(render_markdown(summary, plots) + "\n")
    return ["summary.json", "report.md", *plots]
