"""``raystep ablate``: the paper's comparisons on an arithmetic world, over seeds, for one policy size.

One warm-up policy is the common start. For each seed the pairs are built once (collect -> localize
with the exact verifier -> rectify, sampling seeded by the seed) and every method trains on those same
pairs with the same budget (epochs, batch) from the same start:

- ``no training``: the start itself;
- ``SFT``: rejection-sampling fine-tuning on the pairs' whole chosen solutions (``train.mode=sft``);
- ``DPO``: plain DPO on the pairs' whole responses (``train.mode=dpo``);
- ``Step-DPO (gold)``: Step-DPO with out-of-distribution chosen steps: the world's own correct step
  in a wording the policy never uses, standing for human or GPT-4 data (``raystep.synth.gold``);
- ``Step-DPO``: Step-DPO with in-distribution chosen steps (the policy's own rectified steps).

Every model answers the same held-out problems (the world's ``test`` split, ``eval.limit`` of them)
through the collect stage, greedily and sampled (temperature 0.8, ``--samples`` per problem), with the
same sampling seeds for every arm; the engine is the configured one (``sampling.engine``: ``vllm`` by
default, ``hf`` where vLLM cannot start quickly), so the ablation starts no server. The report gives each arm's mean
over seeds with a Student-t interval, the paired difference of Step-DPO against every other arm per
seed with its t-interval, the verifier's taxonomy of the greedy failures of every arm, and, with
``--rounds N``, iterative Step-DPO: round r collects with round r-1's Step-DPO model and trains from it.

Learning rate and beta per method come from ``--tuned`` (the ``raystep sweep`` output, chosen on the
world's ``valid`` split) or from the config. Stages resume; a trained arm whose model is exported is not
trained again, and evaluations resume by folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from raystep.cli import add_config_arguments
from raystep.config import RunConfig, apply_overrides, load_config
from raystep.evaluate.stats import mean_interval, paired_difference
from raystep.runs import RunDir

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


def with_overrides(config: RunConfig, items: list[str]) -> RunConfig:
    """A copy of ``config`` with ``--set`` items applied (validated like a loaded config)."""
    if not items:
        return config.model_copy(deep=True)
    return RunConfig.model_validate(apply_overrides(config.model_dump(mode="json"), list(items)))


WARMUP = ["data.synth.policy.steps=4000", "data.synth.policy.num_examples=20000"]
"""The ablation's warm-up: longer than the demo's (which must fit its time budget), so the policy has
learnt to copy and to compute, and what it still gets wrong is reading (see ``docs/demo.md``)."""


def ablate_overrides(quick: bool) -> list[str]:
    """The demo's settings, localized by the verifier alone (the rollouts are the demo's comparison),
    with the ablation's warm-up and 200 held-out problems."""
    from raystep import demo

    size = "quick" if quick else "full"
    return [
        *demo.demo_overrides(size, 8321),
        "localize.methods=[verifier]",
        *([] if quick else [*WARMUP, "eval.limit=200"]),
    ]


def round_config(base: RunConfig, root_name: str, seed: int, rnd: int, start: str) -> RunConfig:
    """The data run of one seed and round: its own folder, sampling seeded by the seed, from ``start``."""
    cfg = base.model_copy(deep=True)
    cfg.name = f"{root_name}-s{seed}" + (f"-r{rnd}" if rnd > 1 else "")
    cfg.model.path = start
    cfg.sampling.seed = seed + 1000 * (rnd - 1)
    cfg.train.seed = seed
    return cfg


def arm_config(data_cfg: RunConfig, arm: str, pairs: Path, tuned: dict[str, list[str]]) -> RunConfig:
    """The training run of one arm: its folder, its pair file, ``train.mode`` and its tuned settings."""
    mode, _ = ARMS[arm]  # type: ignore[misc]
    cfg = with_overrides(data_cfg, tuned.get(mode, []))
    cfg.name = f"{data_cfg.name}-{mode}" + ("-gold" if ARMS[arm][1] == "gold" else "")  # type: ignore[index]
    cfg.train.mode = mode  # type: ignore[assignment]
    cfg.train.pairs = str(pairs)
    return cfg


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def build_pairs(data_cfg: RunConfig) -> dict[str, Any]:
    """collect -> localize -> rectify for one seed and round, then the gold-step copy of its pairs."""
    from raystep.records import read_rows, write_jsonl
    from raystep.stages import collect, localize, rectify
    from raystep.synth.gold import ood_pairs

    collected = collect.run(data_cfg)
    localize.run(data_cfg)
    rectified = rectify.run(data_cfg)
    folder = RunDir.from_config(data_cfg).path / "pairs"
    own = folder / "pairs.jsonl"
    gold = folder / "gold.jsonl"
    rows = read_rows(own, kind="pair") if own.exists() else []
    write_jsonl(gold, ood_pairs(rows))
    return {
        "collect_accuracy": collected["accuracy"],
        "wrong_samples": collected["wrong"],
        "rectified_samples": int(rectified.get("units") or 0),
        "samples_with_pairs": int(rectified.get("samples_with_pairs") or 0),
        "rectify_right_rate": (
            rectified["continuations_correct"] / rectified["continuations"]
            if rectified.get("continuations")
            else 0.0
        ),
        "pairs": count_lines(own),
        "gold_pairs": count_lines(gold),
        "files": {"own": own, "gold": gold},
    }


def eval_settings(samples: int) -> dict[str, dict[str, Any]]:
    """Greedy (one answer) and sampled (temperature 0.8, top-p 0.95, ``samples`` answers) evaluation."""
    return {
        "greedy": {"temperature": 0.0, "top_p": 1.0, "n": 1},
        "sampled": {"temperature": 0.8, "top_p": 0.95, "n": samples},
    }


def eval_config(
    config: RunConfig, model_dir: str, name: str, metric: str, samples: int, split: str
) -> RunConfig:
    """The collect run that evaluates ``model_dir`` on held-out problems (``eval.limit`` of ``split``).

    Every model is evaluated with the same sampling seed, so arms differ by their weights alone.
    """
    cfg = config.model_copy(deep=True)
    cfg.name = f"{name}-eval-{metric}"
    cfg.model.path = str(model_dir)
    cfg.data.split = split
    cfg.data.limit = config.eval.limit
    cfg.sampling = cfg.sampling.model_copy(update={**eval_settings(samples)[metric], "seed": 0})
    return cfg


def evaluate(
    config: RunConfig,
    model_dir: str,
    name: str,
    samples: int,
    metrics: tuple[str, ...] = METRICS,
    split: str = "test",
) -> dict[str, Any]:
    """Greedy and sampled accuracy of ``model_dir`` on held-out problems, and the taxonomy of its greedy
    failures.

    The answers come from the collect stage on the held-out split (its folder ``<name>-eval-<metric>``),
    so they are sampled by the configured engine exactly like the pairs' data, graded by the project's
    grader, and resumed like any stage. Accuracy is the mean per-problem accuracy (pass@1).
    """
    from raystep.records import read_parquet
    from raystep.stages import collect
    from raystep.synth.diagnose import taxonomy

    out: dict[str, Any] = {}
    for metric in metrics:
        cfg = eval_config(config, model_dir, name, metric, samples, split)
        stats = collect.run(cfg)
        out[metric] = stats["accuracy"]
        out[f"{metric}_samples"] = stats["samples"]
        out[f"{metric}_folder"] = str(RunDir.from_config(cfg).path)
        if metric == "greedy":
            rows = read_parquet(RunDir.from_config(cfg).path / "samples", kind="sample")
            tax = taxonomy(rows, [r["response"] for r in rows], [bool(r["correct"]) for r in rows])
            out["taxonomy"] = {k: v for k, v in tax.items() if k != "diagnoses"}
    return out


def run(
    config: RunConfig,
    seeds: list[int],
    rounds: int = 1,
    samples: int = 4,
    tuned: dict[str, list[str]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole ablation; returns the report (also ``<run>/ablate/ablate.{json,md,png}``)."""
    if not config.eval.limit:
        raise ValueError("eval.limit must say how many held-out problems to evaluate on")
    from raystep import demo
    from raystep.local_ray import ensure_ray
    from raystep.synth.policy import ensure_policy, settings_from_config

    tuned = tuned or {}
    root = RunDir.from_config(config)
    root.record_config(config)
    started = time.time()
    policy_dir, warm = ensure_policy(root.path / "policy", settings_from_config(config), progress)
    base = config.model_copy(deep=True)
    base.model.path = str(policy_dir)
    ensure_ray()
    baseline = evaluate(base, str(policy_dir), config.name + "-no-training", samples)
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        start = str(policy_dir)
        seed_rows: list[dict[str, Any]] = []
        for rnd in range(1, rounds + 1):
            data_cfg = round_config(base, config.name, seed, rnd, start)
            data = build_pairs(data_cfg)
            files = data.pop("files")
            row: dict[str, Any] = {"seed": seed, "round": rnd, **data, "arms": {}}
            row["arms"]["no training"] = baseline if rnd == 1 else seed_rows[-1]["arms"][METHOD]
            arms = [a for a, spec in ARMS.items() if spec is not None] if rnd == 1 else [METHOD]
            for arm in arms:
                _, whose = ARMS[arm]  # type: ignore[misc]
                pairs_file = files[whose]
                if count_lines(pairs_file) == 0:
                    raise RuntimeError(f"{pairs_file}: no pairs for arm {arm!r} (seed {seed}, round {rnd})")
                cfg = arm_config(data_cfg, arm, pairs_file, tuned)
                model_dir = str(demo.train_once(cfg)["model_dir"])
                row["arms"][arm] = evaluate(cfg, model_dir, cfg.name, samples)
                if arm == METHOD:
                    start = model_dir
            seed_rows.append(row)
            print(
                f"[ablate] seed {seed} round {rnd}: "
                + ", ".join(f"{a} {100 * r['greedy']:.1f}%" for a, r in row["arms"].items()),
                flush=True,
            )
        per_seed.extend(seed_rows)
    report = summarize(per_seed, seeds, rounds, samples, int(config.eval.limit or 0), config)
    report["warmup"] = {k: warm.get(k) for k in ("parameters", "final_loss", "train_seconds", "cached")}
    report["seconds"] = round(time.time() - started, 1)
    out = root.stage("ablate")
    plot(out / "ablate.png", report)
    (out / "ablate.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "ablate.md").write_text(render(report) + "\n")
    return report


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
    arms = list(ARMS)
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
    for arm in ARMS:
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
    for arm in ARMS:
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

    arms = list(ARMS)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="data and training seeds"
    )
    parser.add_argument("--rounds", type=int, default=1, help="iterative Step-DPO rounds (round 1: all arms)")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem for sampled accuracy")
    parser.add_argument("--policy", default="small", help="policy size preset: small | large")
    parser.add_argument("--tuned", type=Path, help="settings per method from `raystep sweep` (sweep.json)")
    parser.add_argument("--quick", action="store_true", help="CI-sized runs")
    parser.add_argument("--no-progress", action="store_true", help="no warm-up progress bar")


def base_config(args: argparse.Namespace, command: str) -> RunConfig:
    """The config of ``raystep ablate`` / ``raystep sweep``: defaults, the policy preset, then the user's."""
    from raystep.synth.policy import preset_overrides

    name = f"{command}-{args.policy}" + ("-quick" if args.quick else "")
    overrides = [*ablate_overrides(args.quick), *preset_overrides(args.policy), f"name={name}"]
    return load_config(args.config, overrides + list(args.overrides))


def load_tuned(path: Path | None) -> dict[str, list[str]]:
    """``{train.mode: [--set items]}`` from a sweep's ``sweep.json`` (its ``best`` entry)."""
    if path is None:
        return {}
    data = json.loads(Path(path).read_text())
    return {mode: list(items) for mode, items in data["best"].items()}


def main(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        raise SystemExit("raystep ablate: --rounds must be >= 1")
    config = base_config(args, "ablate")
    report = run(
        config,
        list(args.seeds),
        rounds=args.rounds,
        samples=args.samples,
        tuned=load_tuned(args.tuned),
        progress=not args.no_progress,
    )
    print(render(report))
    print(f"report: {RunDir.from_config(config).path}/ablate/ablate.md ({report['seconds']:.0f} s)")
    return 0
