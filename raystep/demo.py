"""``raystep demo``: the whole Step-DPO loop on the built-in arithmetic world, on a local CPU Ray.

warm-up (a tiny policy trained here, cached in ``<run>/policy``) -> collect -> localize (the exact
verifier labels; Monte Carlo rollouts run beside it for comparison) -> rectify -> Step-DPO training
(Ray Train + DeepSpeed on CPU) -> serve the policy before and after on the CPU app -> evaluate both on
held-out problems through the ``openai`` client -> ``<run>/demo/report.md`` with the accuracy change, the
pairs made, how often the localizers agree, and plots.

Every step is the project's real stage function on its real config section; the demo only chooses
sizes that fit a laptop. A rerun resumes: each stage skips the work already in the run folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from raystep.cli import add_config_arguments
from raystep.config import DataConfig, RunConfig, load_config
from raystep.runs import RunDir, timed_stage

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "train_problems": 200,
        "test_problems": 300,
        "samples": 4,
        "rectify_n": 8,
        "rollouts": 4,
        "warmup_steps": 1500,
        "epochs": 2,
    },
    "quick": {
        "train_problems": 24,
        "test_problems": 60,
        "samples": 4,
        "rectify_n": 4,
        "rollouts": 2,
        "warmup_steps": 800,
        "epochs": 1,
    },
}
"""``quick`` is for CI: every stage runs for real, too briefly to move accuracy much."""


def demo_overrides(size: str, port: int) -> list[str]:
    """The demo's settings as ``--set`` items: the user's own ``--set`` items are applied after these."""
    s = SIZES[size]
    return [
        f"name=demo-{size}" if size != "full" else "name=demo",
        "model.template=plain",
        "model.dtype=float32",
        "data.source=synth",
        "data.split=train",
        f"data.limit={s['train_problems']}",
        f"data.synth.policy.steps={s['warmup_steps']}",
        "sampling.engine=hf",
        f"sampling.n={s['samples']}",
        "sampling.temperature=0.8",
        "sampling.top_p=0.95",
        "sampling.max_new_tokens=160",
        "sampling.batch_size=64",
        "sampling.shard_size=64",
        "localize.methods=[verifier, rollout]",
        "localize.combine=first",
        "localize.verifier=arithmetic",
        f"localize.rollout.num_rollouts={s['rollouts']}",
        "localize.rollout.max_new_tokens=160",
        f"rectify.n={s['rectify_n']}",
        "rectify.max_new_tokens=160",
        "rectify.max_pairs_per_sample=1",
        "train.mode=stepdpo",
        "train.beta=0.5",
        "train.learning_rate=0.0001",
        "train.warmup_ratio=0.1",
        f"train.epochs={s['epochs']}",
        "train.global_batch_size=16",
        "train.micro_batch_size=8",
        "train.num_workers=1",
        "train.use_gpu=false",
        "train.zero_stage=2",
        "train.precision=fp32",
        "train.gradient_checkpointing=false",
        "train.max_length=256",
        "train.max_prompt_length=192",
        "train.pack_tokens=1024",
        "train.checkpoint_every_steps=1000",
        "serve.engine=hf",
        "serve.host=127.0.0.1",
        f"serve.port={port}",
        "serve.max_batch_size=32",
        "eval.api=completions",
        "eval.template=plain",
        "eval.temperature=0.0",
        "eval.max_tokens=160",
        "eval.concurrency=16",
        f"eval.limit={s['test_problems']}",
    ]


def policy_settings(config: RunConfig, size: str):
    """The warm-up of ``data.synth.policy`` (the demo's size sets its steps; ``--set`` wins)."""
    from raystep.synth.policy import settings_from_config

    return settings_from_config(config)


def test_problems(config: RunConfig) -> list[dict[str, Any]]:
    """Held-out problems: the world's ``test`` split, never seen by the warm-up or by collect."""
    from raystep.synth.world import load_problems

    data = DataConfig(source="synth", split="test", limit=config.eval.limit, synth=config.data.synth)
    return load_problems(data)


def ensure_ray() -> None:
    """A local Ray of our own (``address="local"``): never attach to a cluster someone else started here."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=max(4, os.cpu_count() or 2),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}},
        )


def weights_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """A short hash of a model folder's weights: which model answered is part of an evaluation's identity."""
    digest = hashlib.sha1()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def evaluate_model(
    config: RunConfig, model_dir: str, label: str, problems: list[dict[str, Any]], progress: bool = True
) -> dict:
    """Serve ``model_dir`` on the CPU app, evaluate it through the openai client, stop serving.

    The folder is named by ``label`` and the weights' fingerprint, so a rerun with the same weights
    resumes and a retrained model (say, another ``--set train.beta``) is evaluated afresh.
    """
    from raystep.evaluate.benchmark import evaluate_benchmark
    from raystep.grading import Grader
    from raystep.serve import run as serve_run

    cfg = config.model_copy(deep=True)
    cfg.serve.model = str(model_dir)
    cfg.eval.name = f"{label}-{weights_fingerprint(model_dir)}"
    out = RunDir.from_config(cfg).stage("eval") / cfg.eval.name / "synth"
    url = serve_run.start(cfg)
    try:
        serve_run.wait_healthy(url, timeout_s=120)
        cfg.eval.base_url = url
        cfg.eval.model = cfg.serve.model_id
        with Grader(workers=1, timeout_s=5.0) as grader:
            summary = evaluate_benchmark(cfg.eval, "synth", out, problems, grader, progress)
    finally:
        serve_run.shutdown()
    return {"folder": str(out), **{k: summary[k] for k in ("accuracy", "ci95", "problems")}}


def plot_overview(path: Path, before: dict, after: dict, loc: dict) -> Path:
    """Accuracy before and after (with 95% intervals) beside the localizers' first-wrong-step counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    accs = [before["accuracy"], after["accuracy"]]
    errs = [
        [a - ci[0] for a, ci in zip(accs, (before["ci95"], after["ci95"]), strict=True)],
        [ci[1] - a for a, ci in zip(accs, (before["ci95"], after["ci95"]), strict=True)],
    ]
    ax1.bar(["warm-up policy", "after Step-DPO"], [100 * a for a in accs], color=["#999", "#2a7"])
    ax1.errorbar(
        [0, 1],
        [100 * a for a in accs],
        yerr=[[100 * e for e in errs[0]], [100 * e for e in errs[1]]],
        fmt="none",
        ecolor="k",
        capsize=4,
    )
    ax1.set_ylabel("held-out accuracy % (95% CI)")
    ax1.set_ylim(0, 100)
    hist = loc.get("first_wrong_step_hist", {})
    ax2.bar([str(k) for k in hist], list(hist.values()), color="#57a")
    ax2.set_xlabel("first wrong step (verifier; 0 = none)")
    ax2.set_ylabel("wrong samples")
    agreement = loc.get("agreement", {})
    if agreement:
        ax2.set_title(f"verifier and rollouts agree on {100 * agreement['rate']:.0f}%")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_report(report: dict[str, Any]) -> str:
    b, a, c = report["before"], report["after"], report["compare"]
    loc, pairs = report["localize"], report["pairs"]
    agreement = loc.get("agreement") or {}
    lines = [
        "# raystep demo: Step-DPO on the arithmetic world",
        "",
        f"- held-out problems: {b['problems']} (world split `test`)",
        f"- accuracy before: **{100 * b['accuracy']:.1f}%** (95% CI {100 * b['ci95'][0]:.1f}-{100 * b['ci95'][1]:.1f})",
        f"- accuracy after Step-DPO: **{100 * a['accuracy']:.1f}%** (95% CI {100 * a['ci95'][0]:.1f}-{100 * a['ci95'][1]:.1f})",
        f"- change: {100 * (a['accuracy'] - b['accuracy']):+.1f} points; McNemar p = {c['mcnemar_p']:.3g} "
        f"({c['only_b']} problems fixed, {c['only_a']} broken)",
        f"- samples collected: {report['collect']['samples']} ({report['collect']['wrong']} wrong), "
        f"collect accuracy {100 * report['collect']['accuracy']:.1f}%",
        f"- wrong samples localized: {loc.get('localized', 0)}; verifier found a wrong step in {loc.get('labelled', 0)}",
        "- localizers agree (verifier vs rollouts): "
        + (
            f"{agreement['all_agree']}/{agreement['rows_all_answered']} ({100 * agreement['rate']:.0f}%)"
            if agreement
            else "n/a"
        ),
        f"- Step-DPO pairs made: {pairs}",
        "- timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()),
        "",
        "![overview](overview.png)",
        "",
    ]
    return "\n".join(lines)


def _paired(before_folder: str, after_folder: str, out: Path) -> dict[str, Any]:
    from raystep.evaluate.compare import compare

    result = compare(before_folder, after_folder, out_dir=out)
    overall = result["overall"]
    return {
        "mcnemar_p": overall["mcnemar_p"],
        "only_a": overall.get("only_a", 0),
        "only_b": overall.get("only_b", 0),
        "delta": overall["delta"],
        "folder": result["out_dir"],
    }


def run(config: RunConfig, size: str = "full", progress: bool = True) -> dict[str, Any]:
    """The whole loop; returns the report (also written to ``<run>/demo/report.{json,md}``)."""
    from raystep.evaluate.run import BENCHMARKS  # noqa: F401  (fail early if evaluation is missing)
    from raystep.stages import collect, localize, rectify
    from raystep.synth.policy import ensure_policy
    from raystep.train import run as train_run

    run_dir = RunDir.from_config(config)
    run_dir.record_config(config)
    seconds: dict[str, float] = {}

    def timed(name: str, fn, *args):
        start = time.time()
        print(f"[demo] {name} ...", flush=True)
        result = fn(*args)
        seconds[name] = round(time.time() - start, 1)
        print(f"[demo] {name} done in {seconds[name]:.0f} s", flush=True)
        return result

    settings = policy_settings(config, size)
    with timed_stage(run_dir, "warmup") as wstats:
        policy_dir, warm = timed("warm-up", ensure_policy, run_dir.path / "policy", settings, progress)
        wstats.update({k: warm[k] for k in ("parameters", "final_loss", "train_seconds", "cached")})
    config = config.model_copy(deep=True)
    config.model.path = str(policy_dir)
    ensure_ray()
    collected = timed("collect", collect.run, config)
    localized = timed("localize", localize.run, config)
    rectified = timed("rectify", rectify.run, config)
    pairs_file = run_dir.path / "pairs" / "pairs.jsonl"
    n_pairs = (
        sum(1 for line in pairs_file.read_text().splitlines() if line.strip()) if pairs_file.exists() else 0
    )
    if n_pairs == 0:
        raise RuntimeError(f"rectify made no pairs (stats: {rectified}); nothing to train on")
    trained = timed("train", train_run.run, config)
    problems = test_problems(config)
    before = timed("eval before", evaluate_model, config, str(policy_dir), "before", problems, progress)
    after = timed("eval after", evaluate_model, config, trained["model_dir"], "after", problems, progress)
    out = run_dir.stage("demo")
    report = {
        "size": size,
        "run_dir": str(run_dir.path),
        "warmup": {k: warm[k] for k in ("parameters", "final_loss", "train_seconds", "cached")},
        "collect": {k: collected[k] for k in ("problems", "samples", "wrong", "accuracy")},
        "localize": {
            k: localized.get(k)
            for k in (
                "localized",
                "labelled",
                "no_wrong_step",
                "first_wrong_step_hist",
                "agreement",
                "per_method",
            )
        },
        "pairs": n_pairs,
        "train": {k: trained.get(k) for k in ("pairs", "total_steps", "model_dir")},
        "before": before,
        "after": after,
        "compare": _paired(before["folder"], after["folder"], out / "compare"),
        "seconds": seconds,
    }
    plot_overview(out / "overview.png", before, after, report["localize"])
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(render_report(report))
    run_dir.update_manifest(
        "demo",
        accuracy_before=before["accuracy"],
        accuracy_after=after["accuracy"],
        pairs=n_pairs,
        seconds=seconds,
    )
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="a CI-sized run (a couple of minutes)")
    parser.add_argument("--port", type=int, default=8321, help="port of the local Serve app (127.0.0.1)")
    parser.add_argument("--no-progress", action="store_true", help="no warm-up or evaluation progress bars")


def main(args: argparse.Namespace) -> int:
    size = "quick" if args.quick else "full"
    config = load_config(args.config, demo_overrides(size, args.port) + list(args.overrides))
    started = time.time()
    report = run(config, size, progress=not args.no_progress)
    print(render_report(report))
    print(f"report: {report['run_dir']}/demo/report.md ({time.time() - started:.0f} s in all)")
    return 0
