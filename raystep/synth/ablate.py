"""``raystep ablate``: no training vs plain DPO vs Step-DPO on the arithmetic world, over several seeds.

One warm-up policy is the common starting point. For each seed the data is built once (collect ->
localize with the exact verifier -> rectify, sampling seeded by the seed) and both methods train on
the same pairs, so the data budget is identical: Step-DPO on the step pairs (prefix + chosen/rejected
step k), plain DPO on the same pairs' whole responses (``full_chosen`` / ``full_rejected``,
``train.mode=dpo``). Every model is served on the CPU app and evaluated greedily on the same held-out
problems through the ``openai`` client. The report gives each arm's accuracy per seed, the mean with a
t-interval over seeds, and the paired difference Step-DPO - DPO per seed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from raystep.cli import add_config_arguments
from raystep.config import RunConfig, load_config
from raystep.runs import RunDir

ARMS = ("no training", "DPO", "Step-DPO")
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
"""Two-sided 95% Student-t quantiles by degrees of freedom (more seeds: 1.96 is close enough)."""


def mean_interval(values: list[float]) -> dict[str, float]:
    """Mean and 95% t-interval over seeds (a single seed has no interval: low = high = mean)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": m, "low": m, "high": m, "n": len(values)}
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": m, "low": m - half, "high": m + half, "n": len(values)}


def seed_config(base: RunConfig, root_name: str, seed: int) -> RunConfig:
    cfg = base.model_copy(deep=True)
    cfg.name = f"{root_name}-s{seed}"
    cfg.sampling.seed = seed
    cfg.train.seed = seed
    return cfg


def arm_config(data_cfg: RunConfig, mode: str) -> RunConfig:
    """The training run of one arm: its own folder, the seed's pairs, ``train.mode``."""
    cfg = data_cfg.model_copy(deep=True)
    cfg.name = f"{data_cfg.name}-{mode}"
    cfg.train.mode = mode
    cfg.train.pairs = str(RunDir.from_config(data_cfg).path / "pairs" / "pairs.jsonl")
    return cfg


def plot(path: Path, table: dict[str, list[float]], summary: dict[str, dict[str, float]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, arm in enumerate(ARMS):
        s = summary[arm]
        ax.bar(i, 100 * s["mean"], color=["#999", "#57a", "#2a7"][i], alpha=0.8)
        ax.errorbar(
            [i],
            [100 * s["mean"]],
            yerr=[[100 * (s["mean"] - s["low"])], [100 * (s["high"] - s["mean"])]],
            fmt="none",
            ecolor="k",
            capsize=5,
        )
        ax.scatter([i] * len(table[arm]), [100 * v for v in table[arm]], color="k", s=12, zorder=3)
    ax.set_xticks(range(len(ARMS)), ARMS)
    ax.set_ylabel("held-out accuracy % (mean, 95% t-CI)")
    ax.set_title(f"arithmetic world, {len(table[ARMS[0]])} seeds, same pairs per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(config: RunConfig, seeds: list[int], size: str = "full", progress: bool = True) -> dict[str, Any]:
    from raystep import demo
    from raystep.stages import collect, localize, rectify
    from raystep.synth.policy import ensure_policy
    from raystep.train import run as train_run

    root = RunDir.from_config(config)
    root.record_config(config)
    started = time.time()
    policy_dir, _ = ensure_policy(root.path / "policy", demo.policy_settings(config, size), progress)
    base = config.model_copy(deep=True)
    base.model.path = str(policy_dir)
    demo.ensure_ray()
    problems = demo.test_problems(base)
    baseline = demo.evaluate_model(base, str(policy_dir), "no-training", problems, progress)
    table: dict[str, list[float]] = {arm: [] for arm in ARMS}
    per_seed = []
    for seed in seeds:
        data_cfg = seed_config(base, config.name, seed)
        collect.run(data_cfg)
        localize.run(data_cfg)
        rectify.run(data_cfg)
        pairs_file = RunDir.from_config(data_cfg).path / "pairs" / "pairs.jsonl"
        n_pairs = (
            sum(1 for line in pairs_file.read_text().splitlines() if line.strip())
            if pairs_file.exists()
            else 0
        )
        row: dict[str, Any] = {"seed": seed, "pairs": n_pairs, "no training": baseline["accuracy"]}
        for arm, mode in (("DPO", "dpo"), ("Step-DPO", "stepdpo")):
            cfg = arm_config(data_cfg, mode)
            trained = train_run.run(cfg)
            row[arm] = demo.evaluate_model(cfg, trained["model_dir"], mode, problems, progress)["accuracy"]
        for arm in ARMS:
            table[arm].append(row[arm])
        per_seed.append(row)
        print(f"[ablate] seed {seed}: " + ", ".join(f"{a} {100 * row[a]:.1f}%" for a in ARMS), flush=True)
    summary = {arm: mean_interval(table[arm]) for arm in ARMS}
    diffs = [r["Step-DPO"] - r["DPO"] for r in per_seed]
    report = {
        "seeds": seeds,
        "test_problems": len(problems),
        "per_seed": per_seed,
        "summary": summary,
        "stepdpo_minus_dpo": mean_interval(diffs),
        "seconds": round(time.time() - started, 1),
    }
    out = root.stage("ablate")
    plot(out / "ablate.png", table, summary)
    (out / "ablate.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "ablate.md").write_text(render(report) + "\n")
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Held-out problems: {report['test_problems']}; seeds: {report['seeds']}; greedy decoding.",
        "",
        "| seed | pairs | " + " | ".join(ARMS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in ARMS) + " |",
    ]
    for r in report["per_seed"]:
        lines.append(
            f"| {r['seed']} | {r['pairs']} | " + " | ".join(f"{100 * r[a]:.1f}" for a in ARMS) + " |"
        )
    lines.append(
        "| mean (95% t-CI) | | "
        + " | ".join(
            f"{100 * s['mean']:.1f} ({100 * s['low']:.1f}-{100 * s['high']:.1f})"
            for s in (report["summary"][a] for a in ARMS)
        )
        + " |"
    )
    d = report["stepdpo_minus_dpo"]
    lines += [
        "",
        f"Step-DPO - DPO: {100 * d['mean']:+.1f} points (95% t-CI {100 * d['low']:+.1f} to {100 * d['high']:+.1f}).",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data and training seeds")
    parser.add_argument("--quick", action="store_true", help="CI-sized runs")
    parser.add_argument("--port", type=int, default=8321, help="port of the local Serve app (127.0.0.1)")
    parser.add_argument("--no-progress", action="store_true", help="no warm-up or evaluation progress bars")


def main(args: argparse.Namespace) -> int:
    from raystep import demo

    size = "quick" if args.quick else "full"
    overrides = demo.demo_overrides(size, args.port) + [f"name=ablate{'-quick' if args.quick else ''}"]
    config = load_config(args.config, overrides + list(args.overrides))
    report = run(config, list(args.seeds), size, progress=not args.no_progress)
    print(render(report))
    print(f"report: {RunDir.from_config(config).path}/ablate/ablate.md ({report['seconds']:.0f} s)")
    return 0
