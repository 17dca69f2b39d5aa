"""``raystep sweep``: learning rate and beta per training method, chosen on the world's ``valid`` split.

The ablation's settings must not be tuned on its test problems. This command builds one set of pairs
(collect -> localize -> rectify from the warm-up policy, on the ``train`` split, with its own sampling
seed), trains every method on them for each point of a small grid, and scores each model greedily on
the world's ``valid`` split (disjoint from ``test`` by question hash). It writes ``<run>/sweep/sweep.json``
whose ``best`` entry (the ``--set`` items of the best point per method) ``raystep ablate --tuned``
reads, and ``sweep.md``. The warm-up policy is the ablation's own (same run folder), so both use one.
One ``ray.serve.llm`` engine serves every model, as in the ablation: each trained model is loaded into it.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from raystep.config import RunConfig
from raystep.experiments import ablate
from raystep.runs import RunDir
from raystep.serve.run import Server

MODES = ("sft", "dpo", "stepdpo")


def grid(modes: list[str], lrs: list[float], betas: list[float]) -> list[dict[str, Any]]:
    """The points to train: every (lr, beta) per preference method; SFT has no beta, so lr alone."""
    points = []
    for mode in modes:
        for lr in lrs:
            for beta in betas if mode != "sft" else betas[:1]:
                items = [f"train.learning_rate={lr}"] + ([f"train.beta={beta}"] if mode != "sft" else [])
                points.append(
                    {"mode": mode, "learning_rate": lr, "beta": beta if mode != "sft" else None, "set": items}
                )
    return points


def best_per_mode(results: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The ``--set`` items of each mode's highest validation accuracy (ties: the earlier grid point)."""
    best: dict[str, dict[str, Any]] = {}
    for r in results:
        if r["mode"] not in best or r["valid_greedy"] > best[r["mode"]]["valid_greedy"]:
            best[r["mode"]] = r
    return {mode: r["set"] for mode, r in best.items()}


def run(
    config: RunConfig,
    seed: int,
    modes: list[str],
    lrs: list[float],
    betas: list[float],
    progress: bool = True,
) -> dict[str, Any]:
    from raystep.experiments import demo
    from raystep.local_ray import ensure_ray
    from raystep.synth.policy import ensure_policy, settings_from_config

    started = time.time()
    root = RunDir.from_config(config)
    policy_dir, _ = ensure_policy(root.path / "policy", settings_from_config(config), progress)
    base = config.model_copy(deep=True)
    base.model.path = str(policy_dir)
    ensure_ray()
    data_cfg = ablate.round_config(base, f"{config.name}-sweep", seed, 1, str(policy_dir))
    start_name = f"{config.name}-valid-no-training"
    needed = not ablate.pairs_built(data_cfg) or not _scored(base, str(policy_dir), start_name)
    with Server(base) as server:  # one engine start; each trained model is loaded into it
        url = ablate.serve(server, str(policy_dir), needed)  # the start policy
        data = ablate.build_pairs(ablate.through(data_cfg, url))
        before = ablate.evaluate(
            ablate.through(base, url), str(policy_dir), start_name, 1, ("greedy",), "valid"
        )
        pairs = data.pop("files")["own"]
        results = []
        for point in grid(modes, lrs, betas):
            cfg = ablate.with_overrides(data_cfg, point["set"])
            tag = f"lr{point['learning_rate']:g}" + (
                f"-b{point['beta']:g}" if point["beta"] is not None else ""
            )
            cfg.name = f"{data_cfg.name}-{point['mode']}-{tag}"
            cfg.train.mode = point["mode"]
            cfg.train.pairs = str(pairs)
            model_dir = str(demo.train_once(cfg)["model_dir"])
            name = f"{cfg.name}-valid"
            url = ablate.serve(server, model_dir, not _scored(cfg, model_dir, name))
            score = ablate.evaluate(ablate.through(cfg, url), model_dir, name, 1, ("greedy",), "valid")
            results.append({**point, "valid_greedy": score["greedy"]})
            print(f"[sweep] {point['mode']} {tag}: valid greedy {100 * score['greedy']:.1f}%", flush=True)
    report = {
        "seed": seed,
        "valid_problems": int(config.eval.limit or 0),
        "no_training": before["greedy"],
        "pairs": data["pairs"],
        "results": results,
        "best": best_per_mode(results),
        "seconds": round(time.time() - started, 1),
    }
    out = root.stage("sweep")
    (out / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "sweep.md").write_text(render(report) + "\n")
    return report


def _scored(config: RunConfig, model_dir: str, name: str) -> bool:
    """Whether the greedy validation answers of ``model_dir`` are all in their folder already."""
    return ablate.finished(ablate.eval_config(config, model_dir, name, "greedy", 1, "valid"), ("collect",))


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Validation split: {report['valid_problems']} problems (world split `valid`), greedy; pairs: "
        f"{report['pairs']} (sampling seed {report['seed']}); no training: {100 * report['no_training']:.1f}%.",
        "",
        "| method | learning rate | beta | valid greedy % |",
        "| --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        beta = "" if r["beta"] is None else f"{r['beta']:g}"
        lines.append(f"| {r['mode']} | {r['learning_rate']:g} | {beta} | {100 * r['valid_greedy']:.1f} |")
    lines += ["", "Best: " + "; ".join(f"{m}: {' '.join(items)}" for m, items in report["best"].items())]
    lines += ["", f"Total time: {report['seconds']:.0f} s."]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from raystep.config_args import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--seed", type=int, default=100, help="sampling seed of the sweep's pairs")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="methods to tune")
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-5, 1e-4, 2e-4], help="learning rates")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.5], help="DPO betas")
    parser.add_argument("--policy", default="small", help="policy size preset: small | large")
    parser.add_argument("--quick", action="store_true", help="CI-sized runs")
    parser.add_argument("--no-progress", action="store_true", help="no warm-up progress bar")


def main(args: argparse.Namespace) -> int:
    config = ablate.base_config(args, "ablate")
    report = run(config, args.seed, list(args.modes), list(args.lrs), list(args.betas), not args.no_progress)
    print(render(report))
    print(f"settings: {RunDir.from_config(config).path}/sweep/sweep.json (raystep ablate --tuned ...)")
    return 0
