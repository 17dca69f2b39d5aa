"""The ablation's report: means over seeds with t-intervals, Step-DPO's paired differences, rounds,
the taxonomy of every arm's greedy failures; one markdown table (and two small ones) and one plot.

Kept apart from the orchestration (``raystep.experiments.ablate``) so it can be rendered, and tested, from a
finished ``ablate.json`` alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raystep.config import RunConfig
from raystep.evaluate.stats import mean_interval, paired_difference

ARMS: dict[str, tuple[str, str] | None] = {
    "no training": None,
    "SFT": ("sft", "own"),
    "DPO": ("dpo", "own"),
    "Step-DPO (gold)": ("stepdpo", "gold"),
    "Step-DPO": ("stepdpo", "own"),
}
"""Arm -> (``train.mode``, whose chosen steps), in report order; Step-DPO (own steps) is the method."""
METHOD = "Step-DPO"
METRICS = ("greedy", "sampled")
OPTIONAL = {"sft": "SFT", "dpo": "DPO", "gold": "Step-DPO (gold)"}
"""The arms a run may leave out (``raystep ablate --arms``); no training and Step-DPO always run."""


def arms_run(per_seed: list[dict[str, Any]]) -> list[str]:
    """The arms of a finished run, in report order (a run may leave optional arms out)."""
    first = [r for r in per_seed if r["round"] == 1]
    return [a for a in ARMS if first and a in first[0]["arms"]]


def summarize(
    per_seed: list[dict[str, Any]],
    seeds: list[int],
    rounds: int,
    samples: int,
    problems: int,
    config: RunConfig,
) -> dict[str, Any]:
    """Means with t-intervals per arm and metric, paired differences against Step-DPO, rounds, taxonomy."""
    first = [r for r in per_seed if r["round"] == 1]
    arms = arms_run(per_seed)
    summary = {
        metric: {arm: mean_interval([r["arms"][arm][metric] for r in first]) for arm in arms}
        for metric in METRICS
    }
    differences = {
        metric: {
            arm: paired_difference(
                [r["arms"][arm][metric] for r in first], [r["arms"][METHOD][metric] for r in first]
            )
            for arm in arms
            if arm != METHOD
        }
        for metric in METRICS
    }
    by_round = []
    for rnd in range(1, rounds + 1):
        rows = [r for r in per_seed if r["round"] == rnd]
        by_round.append(
            {
                "round": rnd,
                "pairs": mean_interval([r["pairs"] for r in rows]),
                **{metric: mean_interval([r["arms"][METHOD][metric] for r in rows]) for metric in METRICS},
                **{
                    f"{metric}_vs_warmup": paired_difference(
                        [r["arms"]["no training"][metric] for r in first],
                        [r["arms"][METHOD][metric] for r in rows],
                    )
                    for metric in METRICS
                },
            }
        )
    return {
        "world": config.data.synth.world,
        "policy": config.data.synth.policy.model_dump(mode="json"),
        "seeds": seeds,
        "rounds": rounds,
        "samples_per_problem": samples,
        "test_problems": problems,
        "per_seed": per_seed,
        "summary": summary,
        "differences": differences,
        "by_round": by_round,
        "data": {
            k: mean_interval([r[k] for r in first])
            for k in ("collect_accuracy", "rectify_right_rate", "pairs", "gold_pairs")
        },
        "baseline_taxonomy": first[0]["arms"]["no training"]["taxonomy"] if first else None,
    }


def _pct_ci(s: dict[str, Any]) -> str:
    if s["half"] is None:
        return f"{100 * s['mean']:.1f}"
    return f"{100 * s['mean']:.1f} ({100 * s['low']:.1f} to {100 * s['high']:.1f})"


def _diff_cell(d: dict[str, Any]) -> str:
    if d["half"] is None:
        return f"{100 * d['mean']:+.1f}"
    mark = " *" if d["excludes_zero"] else ""
    return f"{100 * d['mean']:+.1f} ({100 * d['low']:+.1f} to {100 * d['high']:+.1f}){mark}"


def render(report: dict[str, Any]) -> str:
    """The markdown table: per arm, mean accuracy (greedy and sampled) and Step-DPO's paired gain."""
    n = len(report["seeds"])
    lines = [
        f"World `{report['world']}`, policy {report['policy']['hidden_size']}x{report['policy']['num_layers']} "
        f"({report.get('warmup', {}).get('parameters', '?')} parameters); {report['test_problems']} held-out "
        f"problems; {n} seeds ({', '.join(map(str, report['seeds']))}); same pairs per seed for every arm; "
        f"sampled = temperature 0.8, {report['samples_per_problem']} samples per problem. "
        "Intervals: 95% Student-t over seeds; * = the interval excludes 0.",
        "",
        "| arm | greedy % | sampled % | Step-DPO - arm, greedy (points) | Step-DPO - arm, sampled (points) |",
        "| --- | --- | --- | --- | --- |",
    ]
    arms = arms_run(report["per_seed"])
    for arm in arms:
        cells = [_pct_ci(report["summary"][m][arm]) for m in METRICS]
        diffs = [_diff_cell(report["differences"][m][arm]) if arm != METHOD else "" for m in METRICS]
        lines.append(f"| {arm} | {' | '.join(cells)} | {' | '.join(diffs)} |")
    d = report["data"]
    lines += [
        "",
        f"Per seed: collect accuracy {_pct_ci(d['collect_accuracy'])}%, pairs {d['pairs']['mean']:.0f} "
        f"(gold copies {d['gold_pairs']['mean']:.0f}), resampled steps right in rectify "
        f"{_pct_ci(d['rectify_right_rate'])}%.",
    ]
    if report["rounds"] > 1:
        lines += [
            "",
            "| Step-DPO round | pairs | greedy % | sampled % | greedy vs warm-up (points) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in report["by_round"]:
            lines.append(
                f"| {r['round']} | {r['pairs']['mean']:.0f} | {_pct_ci(r['greedy'])} | {_pct_ci(r['sampled'])} "
                f"| {_diff_cell(r['greedy_vs_warmup'])} |"
            )
    lines += [
        "",
        "Greedy failures by the verifier's category of their first wrong step (mean over seeds):",
        "",
    ]
    lines += [
        "| arm | wrong | arithmetic | reasoning | format | other |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    first = [r for r in report["per_seed"] if r["round"] == 1]
    for arm in arms:
        taxes = [r["arms"][arm]["taxonomy"] for r in first]
        wrong = sum(t["wrong"] for t in taxes) / len(taxes)
        cats = [
            sum(t["categories"][c] for t in taxes) / len(taxes)
            for c in ("arithmetic", "reasoning", "format", "other")
        ]
        lines.append(f"| {arm} | {wrong:.0f} | " + " | ".join(f"{c:.0f}" for c in cats) + " |")
    lines += ["", f"Total time: {report.get('seconds', 0):.0f} s."]
    return "\n".join(lines)


def plot(path: Path, report: dict[str, Any]) -> Path:
    """Greedy and sampled accuracy per arm (mean, 95% t-interval, one dot per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = arms_run(report["per_seed"])
    first = [r for r in report["per_seed"] if r["round"] == 1]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.38
    for j, (metric, color) in enumerate(zip(METRICS, ("#57a", "#2a7"), strict=True)):
        xs = [i + (j - 0.5) * width for i in range(len(arms))]
        stats = [report["summary"][metric][a] for a in arms]
        ax.bar(xs, [100 * s["mean"] for s in stats], width, color=color, alpha=0.8, label=metric)
        ax.errorbar(
            xs,
            [100 * s["mean"] for s in stats],
            yerr=[
                [100 * (s["mean"] - s["low"]) for s in stats],
                [100 * (s["high"] - s["mean"]) for s in stats],
            ],
            fmt="none",
            ecolor="k",
            capsize=3,
        )
        for x, a in zip(xs, arms, strict=True):
            ax.scatter(
                [x] * len(first), [100 * r["arms"][a][metric] for r in first], color="k", s=8, zorder=3
            )
    ax.set_xticks(range(len(arms)), arms, fontsize=8)
    ax.set_ylabel("held-out accuracy % (mean, 95% t-CI)")
    ax.set_title(f"world {report['world']}, {len(report['seeds'])} seeds, same pairs per seed", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
