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
same sampling seeds for every arm. Like the demo, one ``ray.serve.llm`` engine (vLLM, CPU or GPU) serves
every model in turn, each trained model loaded into it in place (``raystep.serve.swap``: one engine start
for the whole ablation), and every stage samples from it (``sampling.engine: endpoint``): the start
policy answers its own evaluation and every seed's round-1 data stages, each trained arm its evaluation,
and a round's Step-DPO model its evaluation and the next round's data stages. A model whose work is all
in its folders already (a rerun) is not served again. The report gives each arm's mean
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

from raystep.config import RunConfig, apply_overrides, load_config
from raystep.config_args import add_config_arguments
from raystep.errors import RowsFailedError
from raystep.experiments.ablate_report import ARMS, METHOD, METRICS, OPTIONAL, plot, render, summarize
from raystep.runs import RunDir
from raystep.serve.run import Server


def with_overrides(config: RunConfig, items: list[str]) -> RunConfig:
    """A copy of ``config`` with ``--set`` items applied (validated like a loaded config)."""
    if not items:
        return config.model_copy(deep=True)
    return RunConfig.model_validate(apply_overrides(config.model_dump(mode="json"), list(items)))


WARMUP = ["data.synth.policy.steps=4000", "data.synth.policy.num_examples=20000"]
"""The ablation's warm-up: longer than the demo's (which must fit its time budget), so the policy has
learnt to copy and to compute, and what it still gets wrong is reading (see ``docs/demo.md``)."""


STORY_LENGTHS = [
    "sampling.max_new_tokens=160",
    "localize.rollout.max_new_tokens=160",
    "rectify.max_new_tokens=160",
    "eval.max_tokens=160",
]
"""Room for story-length solutions (one step per sentence, each copying it): the chain world's 80 tokens
would cut them off."""


PORT = 8331
"""The Serve port of ``raystep ablate`` and ``raystep sweep`` (``--set serve.port=...``): not the demo's 8321,
so a demo can run beside an ablation."""


def ablate_overrides(quick: bool) -> list[str]:
    """The demo's settings on the story world, localized by the verifier alone (the rollouts are the
    demo's comparison), with the ablation's warm-up and 200 held-out problems."""
    from raystep.experiments import demo

    size = "quick" if quick else "full"
    return [
        *demo.demo_overrides(size, PORT),
        "data.synth.world=story",
        *STORY_LENGTHS,
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


def checked(step: str, stats: dict[str, Any]) -> dict[str, Any]:
    """A stage's stats, or :class:`RowsFailedError` when rows failed: what follows would build on holes."""
    if stats.get("failed_units"):
        raise RowsFailedError(
            f"{step}: {stats['failed_units']} units failed and were kept with their error (see the run's "
            "manifest); rerun the ablation to retry them"
        )
    return stats


def finished(cfg: RunConfig, stages: tuple[str, ...]) -> bool:
    """Whether ``cfg``'s folder holds these stages done, for this model, data and settings (whatever
    engine sampled them): then a rerun needs no served model for them."""
    prior = RunDir.from_config(cfg).read_manifest()
    if any((prior.get("stages", {}).get(s) or {}).get("status") != "done" for s in stages):
        return False
    recorded, now = prior.get("config") or {}, cfg.model_dump(mode="json")
    engine_free = ("engine", "endpoint", "concurrency", "batch_size")

    def same(section: str, drop: tuple[str, ...] = ()) -> bool:
        a, b = recorded.get(section) or {}, now[section]
        return {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}

    return (
        same("data")
        and same("sampling", engine_free)
        and (not {"localize", "rectify"} & set(stages) or (same("localize") and same("rectify")))
        and (recorded.get("model") or {}).get("path") == now["model"]["path"]
    )


def pairs_built(data_cfg: RunConfig) -> bool:
    folder = RunDir.from_config(data_cfg).path / "pairs"
    return finished(data_cfg, ("collect", "localize", "rectify")) and (folder / "gold.jsonl").exists()


def evaluated(config: RunConfig, model_dir: str, name: str, samples: int, split: str = "test") -> bool:
    return all(
        finished(eval_config(config, model_dir, name, metric, samples, split), ("collect",))
        for metric in METRICS
    )


def serve(server: Server, model_dir: str, needed: bool = True) -> str | None:
    """The URL of ``model_dir`` served by the ablation's one engine (started for the first model, every later
    one loaded into it), or None when ``needed`` is false (its work is all done: nothing served)."""
    return server.serve(model_dir) if needed else None


def through(cfg: RunConfig, url: str | None) -> RunConfig:
    """``cfg`` sampling from the model served at ``url`` (unchanged without one: nothing left to sample)."""
    from raystep.experiments.demo import served_config

    return served_config(cfg, url) if url else cfg


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def build_pairs(data_cfg: RunConfig) -> dict[str, Any]:
    """collect -> localize -> rectify for one seed and round, then the gold-step copy of its pairs."""
    from raystep.records import read_rows, write_jsonl
    from raystep.stages import collect, localize, rectify
    from raystep.synth.gold import ood_pairs

    collected = checked("collect", collect.run(data_cfg))
    checked("localize", localize.run(data_cfg))
    rectified = checked("rectify", rectify.run(data_cfg))
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
        stats = checked(f"evaluation ({metric}) of {name}", collect.run(cfg))
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
    optional: list[str] | None = None,
) -> dict[str, Any]:
    """The whole ablation; returns the report (also ``<run>/ablate/ablate.{json,md,png}``).

    ``optional`` picks the arms beside no training and Step-DPO (keys of ``OPTIONAL``; all by default).
    """
    if not config.eval.limit:
        raise ValueError("eval.limit must say how many held-out problems to evaluate on")
    unknown = sorted(set(optional or ()) - set(OPTIONAL))
    if unknown:
        raise ValueError(f"unknown arms {unknown}: choose from {sorted(OPTIONAL)}")
    chosen = {OPTIONAL[k] for k in (OPTIONAL if optional is None else optional)} | {METHOD}
    from raystep.experiments import demo
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
    start_name = config.name + "-no-training"
    first = {seed: round_config(base, config.name, seed, 1, str(policy_dir)) for seed in seeds}
    needed = not evaluated(base, str(policy_dir), start_name, samples) or not all(
        pairs_built(c) for c in first.values()
    )
    with Server(base) as server:  # one engine start; each trained model is loaded into it
        # the start policy: its evaluation and every seed's round-1 pairs
        url = serve(server, str(policy_dir), needed)
        baseline = evaluate(through(base, url), str(policy_dir), start_name, samples)
        data = {seed: build_pairs(through(cfg, url)) for seed, cfg in first.items()}
        per_seed: list[dict[str, Any]] = []
        for seed in seeds:
            data_cfg, built = first[seed], data[seed]
            seed_rows: list[dict[str, Any]] = []
            for rnd in range(1, rounds + 1):
                files = built.pop("files")
                row: dict[str, Any] = {"seed": seed, "round": rnd, **built, "arms": {}}
                row["arms"]["no training"] = baseline if rnd == 1 else seed_rows[-1]["arms"][METHOD]
                arms = [a for a, spec in ARMS.items() if spec and a in chosen] if rnd == 1 else [METHOD]
                for arm in arms:  # Step-DPO last: its served model also builds the next round's pairs
                    _, whose = ARMS[arm]  # type: ignore[misc]
                    pairs_file = files[whose]
                    if count_lines(pairs_file) == 0:
                        raise RuntimeError(
                            f"{pairs_file}: no pairs for arm {arm!r} (seed {seed}, round {rnd})"
                        )
                    cfg = arm_config(data_cfg, arm, pairs_file, tuned)
                    model_dir = str(demo.train_once(cfg)["model_dir"])
                    nxt = (
                        round_config(base, config.name, seed, rnd + 1, model_dir)
                        if arm == METHOD and rnd < rounds
                        else None
                    )
                    needed = not evaluated(cfg, model_dir, cfg.name, samples) or (
                        nxt is not None and not pairs_built(nxt)
                    )
                    url = serve(server, model_dir, needed)
                    row["arms"][arm] = evaluate(through(cfg, url), model_dir, cfg.name, samples)
                    if nxt is not None:
                        data_cfg, built = nxt, build_pairs(through(nxt, url))
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="data and training seeds"
    )
    parser.add_argument("--rounds", type=int, default=1, help="iterative Step-DPO rounds (round 1: all arms)")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem for sampled accuracy")
    parser.add_argument(
        "--arms",
        nargs="*",
        choices=sorted(OPTIONAL),
        help="arms beside no training and Step-DPO (default: all of sft dpo gold)",
    )
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
        optional=args.arms,
    )
    print(render(report))
    print(f"report: {RunDir.from_config(config).path}/ablate/ablate.md ({report['seconds']:.0f} s)")
    return 0
