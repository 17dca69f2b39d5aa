"""``raystep compare A B``: two evaluations of the same benchmark, item by item.

This is how "base model against Step-DPO model" is reported: the same problems answered by both, a
per-item paired table, the exact McNemar test on the discordant items (the right test for paired
binary outcomes: it ignores the items both got right or both got wrong), per-level and per-subject
deltas, a plot and ``compare.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from raystep.evaluate.report import group_by, item_results, pct
from raystep.evaluate.samples import read_log
from raystep.evaluate.stats import mcnemar_exact, wilson_interval


class CompareError(ValueError):
    """Two folders that cannot be compared (other benchmark, other golds, no common items)."""


def _load(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    log = folder / "samples.jsonl"
    if not log.exists():
        raise CompareError(f"{folder}: no samples.jsonl (expected an evaluation folder <eval>/<benchmark>/)")
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return summary, read_log(log)


def _labels(a: Path, b: Path, summary_a: dict[str, Any], summary_b: dict[str, Any]) -> tuple[str, str]:
    """Name each side by its eval folder (``--name``), else its model, else A / B."""
    for la, lb in ((a.parent.name, b.parent.name), (summary_a.get("model"), summary_b.get("model"))):
        if la and lb and la != lb:
            return str(la), str(lb)
    return "A", "B"


def _paired_stats(pairs: list[tuple[bool, bool]]) -> dict[str, Any]:
    n = len(pairs)
    both = sum(1 for a, b in pairs if a and b)
    only_a = sum(1 for a, b in pairs if a and not b)
    only_b = sum(1 for a, b in pairs if b and not a)
    acc_a = (both + only_a) / n if n else 0.0
    acc_b = (both + only_b) / n if n else 0.0
    return {
        "n": n,
        "both_correct": both,
        "only_a": only_a,
        "only_b": only_b,
        "neither": n - both - only_a - only_b,
        "accuracy_a": acc_a,
        "accuracy_b": acc_b,
        "ci95_a": list(wilson_interval(both + only_a, n)),
        "ci95_b": list(wilson_interval(both + only_b, n)),
        "delta": acc_b - acc_a,
        "mcnemar_p": mcnemar_exact(only_a, only_b),
    }


def compare_rows(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]) -> dict[str, Any]:
    """Pair the items of two evaluations by id; overall and per-level / per-subject paired statistics."""
    gold_a = {str(r["id"]): r.get("gold") for r in rows_a}
    gold_b = {str(r["id"]): r.get("gold") for r in rows_b}
    items_a = {i["id"]: i for i in item_results(rows_a)}
    items_b = {i["id"]: i for i in item_results(rows_b)}
    common = [pid for pid in items_a if pid in items_b]
    if not common:
        raise CompareError("the two evaluations share no item ids: are they the same benchmark?")
    mismatched = [pid for pid in common if gold_a[pid] != gold_b[pid]]
    if mismatched:
        raise CompareError(
            f"{len(mismatched)} items have different golds in A and B (first: {mismatched[0]}): not the same benchmark"
        )
    table = []
    for pid in common:
        a, b = items_a[pid], items_b[pid]
        table.append(
            {
                "id": pid,
                "subject": a.get("subject"),
                "level": a.get("level"),
                "gold": gold_a[pid],
                "a_correct": bool(a["correct"]),
                "b_correct": bool(b["correct"]),
            }
        )
    result: dict[str, Any] = {
        "overall": _paired_stats([(t["a_correct"], t["b_correct"]) for t in table]),
        "only_in_a": len(items_a) - len(common),
        "only_in_b": len(items_b) - len(common),
    }
    for field, key in (("level", "by_level"), ("subject", "by_subject")):
        result[key] = {
            name: _paired_stats([(t["a_correct"], t["b_correct"]) for t in group])
            for name, group in group_by(table, field).items()
        }
    result["items"] = table
    return result


def _delta_table(title: str, buckets: dict[str, Any]) -> list[str]:
    lines = [
        f"### {title}",
        "",
        "| group | n | A % | B % | delta (pts) | A only | B only | McNemar p |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in buckets.items():
        lines.append(
            f"| {name} | {s['n']} | {pct(s['accuracy_a'])} | {pct(s['accuracy_b'])} | {100 * s['delta']:+.1f} | "
            f"{s['only_a']} | {s['only_b']} | {s['mcnemar_p']:.4g} |"
        )
    return lines + [""]


def render_markdown(result: dict[str, Any], label_a: str, label_b: str, benchmark: str, plot: str) -> str:
    o = result["overall"]
    lines = [
        f"## {benchmark}: {label_b} (B) against {label_a} (A)",
        "",
        f"Paired on {o['n']} common items"
        + (
            f" ({result['only_in_a']} only in A, {result['only_in_b']} only in B, left out)"
            if result["only_in_a"] or result["only_in_b"]
            else ""
        )
        + ".",
        "",
        "| | B right | B wrong |",
        "| --- | ---: | ---: |",
        f"| **A right** | {o['both_correct']} | {o['only_a']} |",
        f"| **A wrong** | {o['only_b']} | {o['neither']} |",
        "",
        f"- A ({label_a}): {pct(o['accuracy_a'])}% (95% CI {pct(o['ci95_a'][0])}–{pct(o['ci95_a'][1])})",
        f"- B ({label_b}): {pct(o['accuracy_b'])}% (95% CI {pct(o['ci95_b'][0])}–{pct(o['ci95_b'][1])})",
        f"- delta B − A: {100 * o['delta']:+.1f} points; exact McNemar p = {o['mcnemar_p']:.4g} "
        f"({o['only_a'] + o['only_b']} discordant items)",
        "",
    ]
    if result["by_level"]:
        lines += _delta_table("By level", result["by_level"])
    if result["by_subject"]:
        lines += _delta_table("By subject", result["by_subject"])
    discordant = [t for t in result["items"] if t["a_correct"] != t["b_correct"]]
    if discordant:
        lines += ["### Discordant items", "", "| id | level | A | B |", "| --- | --- | --- | --- |"]
        for t in discordant[:50]:
            mark = lambda ok: "right" if ok else "wrong"  # noqa: E731
            lines.append(
                f"| {t['id']} | {t['level'] or ''} | {mark(t['a_correct'])} | {mark(t['b_correct'])} |"
            )
        if len(discordant) > 50:
            lines.append(f"| … {len(discordant) - 50} more in paired.csv | | | |")
        lines.append("")
    lines += [f"![comparison]({plot})", "", "The full per-item table is `paired.csv`."]
    return "\n".join(lines)


def _plot(path: Path, result: dict[str, Any], label_a: str, label_b: str, benchmark: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {"overall": result["overall"], **result["by_level"]}
    names = list(groups)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(names) + 2), 3.6))
    width = 0.38
    for offset, side, label, color in (
        (-width / 2, "a", label_a, "#8c8c8c"),
        (width / 2, "b", label_b, "#4c72b0"),
    ):
        acc = [100 * groups[n][f"accuracy_{side}"] for n in names]
        lo = [max(0.0, a - 100 * groups[n][f"ci95_{side}"][0]) for a, n in zip(acc, names, strict=True)]
        hi = [max(0.0, 100 * groups[n][f"ci95_{side}"][1] - a) for a, n in zip(acc, names, strict=True)]
        ax.bar(
            [i + offset for i in range(len(names))],
            acc,
            width,
            yerr=[lo, hi],
            capsize=3,
            label=label,
            color=color,
        )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n if n == "overall" else f"level {n}" for n in names])
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy % (95% Wilson CI)")
    ax.set_title(f"{benchmark}: p = {result['overall']['mcnemar_p']:.3g} (McNemar)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(folder_a: str | Path, folder_b: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Compare two ``<eval>/<benchmark>/`` folders; write compare.md/json, paired.csv and a plot."""
    a, b = Path(folder_a), Path(folder_b)
    summary_a, rows_a = _load(a)
    summary_b, rows_b = _load(b)
    bench_a = summary_a.get("benchmark") or a.name
    bench_b = summary_b.get("benchmark") or b.name
    if bench_a != bench_b:
        raise CompareError(f"{a} is benchmark {bench_a!r} but {b} is {bench_b!r}")
    label_a, label_b = _labels(a, b, summary_a, summary_b)
    result = compare_rows(rows_a, rows_b)
    out = Path(out_dir) if out_dir else b / f"compare_vs_{a.parent.name or 'A'}"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "paired.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "subject", "level", "gold", "a_correct", "b_correct"])
        writer.writeheader()
        writer.writerows(result["items"])
    _plot(out / "compare.png", result, label_a, label_b, bench_a)
    summary = {k: v for k, v in result.items() if k != "items"}
    summary.update(benchmark=bench_a, a=str(a), b=str(b), label_a=label_a, label_b=label_b)
    (out / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "compare.md").write_text(render_markdown(result, label_a, label_b, bench_a, "compare.png") + "\n")
    return {**summary, "out_dir": str(out)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="evaluation folder A (the baseline), e.g. runs/x/eval/base/math500")
    parser.add_argument("b", help="evaluation folder B (the candidate), e.g. runs/x/eval/stepdpo/math500")
    parser.add_argument("--out", help="where to write compare.md (default: B/compare_vs_<A's eval name>)")


def main(args: argparse.Namespace) -> int:
    try:
        result = compare(args.a, args.b, args.out)
    except CompareError as exc:
        print(f"raystep compare: {exc}", file=sys.stderr)
        return 2
    o = result["overall"]
    print(
        f"{result['benchmark']}: A {100 * o['accuracy_a']:.1f}% -> B {100 * o['accuracy_b']:.1f}% "
        f"({100 * o['delta']:+.1f} pts) on {o['n']} items; A only {o['only_a']}, B only {o['only_b']}, "
        f"McNemar exact p = {o['mcnemar_p']:.4g}"
    )
    print(f"outputs: {result['out_dir']}")
    return 0
