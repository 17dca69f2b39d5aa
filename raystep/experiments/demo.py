"""``raystep demo``: the whole Step-DPO loop on the built-in arithmetic world, on a local CPU Ray.

warm-up (a tiny policy trained here, cached in ``<run>/policy``) -> the policy served with
``ray.serve.llm`` (vLLM's CPU build), which answers collect, localize (the exact verifier labels; Monte
Carlo rollouts run beside it for comparison), rectify and the "before" evaluation -> Step-DPO training
(Ray Train + DeepSpeed on CPU) -> the trained model served and evaluated -> ``<run>/demo/report.md``
with the accuracy change, the pairs made, how often the localizers agree, and plots. Serving the policy
once costs one vLLM start instead of one per stage (tens of seconds each on a small CPU).

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

from raystep.config import DataConfig, RunConfig, load_config
from raystep.config_args import add_config_arguments
from raystep.console import quiet_libraries
from raystep.errors import RowsFailedError
from raystep.local_ray import ensure_ray
from raystep.runs import RunDir, timed_stage
from raystep.serve.run import Server

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
        "sampling.engine=vllm",
        "engine.device=auto",
        "engine.max_model_len=512",
        "engine.cpu_kv_cache_gib=1",
        f"sampling.n={s['samples']}",
        "sampling.temperature=0.8",
        "sampling.top_p=0.95",
        "sampling.max_new_tokens=80",
        # two light request actors, each with 256 rows (32 requests of 8 choices in rectify) in flight:
        # fewer, fuller requests keep the served policy busy (benchmarks/bench_endpoint_batching.py)
        "sampling.batch_size=256",
        "sampling.concurrency=2",
        "sampling.shard_size=64",
        "localize.methods=[verifier, rollout]",
        "localize.combine=first",
        "localize.verifier=arithmetic",
        "localize.batch_size=64",
        f"localize.rollout.num_rollouts={s['rollouts']}",
        "localize.rollout.max_new_tokens=80",
        f"rectify.n={s['rectify_n']}",
        "rectify.max_new_tokens=80",
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
        "serve.host=127.0.0.1",
        f"serve.port={port}",
        "eval.api=completions",
        "eval.template=plain",
        "eval.temperature=0.0",
        "eval.max_tokens=96",
        "eval.concurrency=16",
        f"eval.limit={s['test_problems']}",
    ]


def test_problems(config: RunConfig) -> list[dict[str, Any]]:
    """Held-out problems: the world's ``test`` split, never seen by the warm-up or by collect."""
    from raystep.synth.world import load_problems

    data = DataConfig(source="synth", split="test", limit=config.eval.limit, synth=config.data.synth)
    return load_problems(data)


def weights_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """A short hash of a model folder's weights: which model answered is part of an evaluation's identity."""
    digest = hashlib.sha1()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def eval_config(config: RunConfig, model_dir: str, label: str) -> RunConfig:
    """The config of one held-out evaluation: its folder is named by ``label`` and the weights."""
    cfg = config.model_copy(deep=True)
    cfg.serve.model = str(model_dir)
    cfg.eval.name = f"{label}-{weights_fingerprint(model_dir)}"
    cfg.eval.model = cfg.serve.model_id
    return cfg


def eval_folder(cfg: RunConfig) -> Path:
    return RunDir.from_config(cfg).stage("eval") / str(cfg.eval.name) / "synth"


def pending_evaluation(config: RunConfig, model_dir: str, label: str, problems: list[dict[str, Any]]) -> int:
    from raystep.evaluate.benchmark import pending_requests

    cfg = eval_config(config, model_dir, label)
    return pending_requests(cfg.eval, "synth", eval_folder(cfg), problems)


def data_stages_done(prior: dict[str, Any], config: RunConfig) -> bool:
    """Whether an earlier run of this folder finished collect, localize and rectify with these settings."""
    stages = prior.get("stages", {})
    if any((stages.get(s) or {}).get("status") != "done" for s in ("collect", "localize", "rectify")):
        return False
    recorded = prior.get("config") or {}
    now = config.model_dump(mode="json")
    return all(recorded.get(k) == now.get(k) for k in ("data", "localize", "rectify")) and (
        recorded.get("model", {}).get("path") == now["model"]["path"]
    )


def served_config(config: RunConfig, url: str | None) -> RunConfig:
    """The data stages' config: sampling (and rollouts) through the served policy."""
    cfg = config.model_copy(deep=True)
    cfg.sampling.engine = "endpoint"
    cfg.sampling.endpoint.base_url = url or cfg.sampling.endpoint.base_url
    cfg.sampling.endpoint.model = cfg.serve.model_id
    cfg.sampling.endpoint.api_key_env = cfg.serve.api_key_env
    return cfg


def evaluate_model(
    config: RunConfig,
    model_dir: str,
    label: str,
    problems: list[dict[str, Any]],
    progress: bool,
    server: Server,
) -> dict:
    """Evaluate ``model_dir`` through the openai client, served by ``server`` (its engine started for it,
    or the weights loaded into the running engine); a rerun whose answers are all there serves nothing.

    The folder is named by ``label`` and the weights' fingerprint, so a rerun with the same weights
    resumes and a retrained model (say, another ``--set train.beta``) is evaluated afresh.
    """
    from raystep.evaluate.benchmark import evaluate_benchmark, pending_requests
    from raystep.grading import Grader

    cfg = eval_config(config, model_dir, label)
    out = eval_folder(cfg)
    todo = pending_requests(cfg.eval, "synth", out, problems)
    if todo:
        cfg.eval.base_url = server.serve(model_dir)
    with Grader(workers=1, timeout_s=5.0) as grader:
        summary = evaluate_benchmark(cfg.eval, "synth", out, problems, grader, progress)
    return {
        "folder": str(out),
        "resumed_all": todo == 0,
        **{k: summary[k] for k in ("accuracy", "ci95", "problems")},
    }


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
        "- timings (s): "
        + ", ".join(
            f"{k} {v:.0f}" + (" (resumed)" if k in report.get("resumed", ()) else "")
            for k, v in report["seconds"].items()
        ),
        "",
        "![overview](overview.png)",
        "",
    ]
    if report.get("rounds"):
        lines += [
            "Iterative Step-DPO: round r collected with round r-1's model and trained from it.",
            "",
            "| round | pairs | held-out accuracy % (95% CI) |",
            "| --- | --- | --- |",
        ]
        for r in report["rounds"]:
            pairs = "" if r["round"] == 0 else str(r["pairs"])
            lines.append(
                f"| {r['round']}{' (warm-up)' if r['round'] == 0 else ''} | {pairs} | {100 * r['accuracy']:.1f} "
                f"({100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}) |"
            )
        lines.append("")
    return "\n".join(lines)


def train_once(config: RunConfig) -> dict[str, Any]:
    """``raystep train``, unless this run folder already holds the model these pairs and settings make."""
    from raystep.train import run as train_run

    entry = RunDir.from_config(config).read_manifest().get("stages", {}).get("train") or {}
    model = Path(entry.get("model_dir") or "") / "model.safetensors"
    if (
        entry.get("status") == "done"
        and model.is_file()
        and entry.get("training_digest") == train_run.training_digest(config)
    ):
        return {**entry, "already_trained": True}
    return train_run.run(config)


def did_nothing(step: str, result: Any) -> bool:
    """Whether a demo step found all its work already in the run folder (a rerun resumes)."""
    step = step.split(" (round ")[0]  # a later round's steps are named "collect (round 2)" and so on
    if step == "warm-up":
        return bool(result[1].get("cached"))
    counters = {"collect": "problems_todo", "localize": "todo", "rectify": "samples_todo"}
    if step in counters:
        return result.get(counters[step], 1) == 0
    if step == "train":
        return bool(result.get("already_trained"))
    if step.startswith("eval"):
        return bool(result.get("resumed_all"))
    return False


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


def round_config(config: RunConfig, rnd: int, start: str) -> RunConfig:
    """Round ``rnd`` (>= 2) of iterative Step-DPO: its own folder ``<name>-r<rnd>``, sampling seeded
    apart, starting (and taking its reference) from the last round's trained model ``start``."""
    cfg = config.model_copy(deep=True)
    cfg.name = f"{config.name}-r{rnd}"
    cfg.model.path = str(start)
    cfg.sampling.seed = config.sampling.seed + 1000 * (rnd - 1)
    return cfg


def count_pairs(cfg: RunConfig, stats: dict[str, Any]) -> int:
    """The pairs rectify wrote in ``cfg``'s folder; none is an error (nothing to train on)."""
    pairs_file = RunDir.from_config(cfg).path / "pairs" / "pairs.jsonl"
    n = sum(1 for line in pairs_file.read_text().splitlines() if line.strip()) if pairs_file.exists() else 0
    if n == 0:
        raise RuntimeError(f"rectify made no pairs (stats: {stats}); nothing to train on")
    return n


def run(config: RunConfig, size: str = "full", progress: bool = True, rounds: int = 1) -> dict[str, Any]:
    """The whole loop; returns the report (also written to ``<run>/demo/report.{json,md}``).

    With ``rounds`` > 1 (iterative Step-DPO) round r collects, localizes and rectifies with round r-1's
    trained model, served once for that and for its own evaluation, and trains from it; "after" is the
    last round's model and the report gives the accuracy of every round's model.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    from raystep.evaluate.run import BENCHMARKS  # noqa: F401  (fail early if evaluation is missing)
    from raystep.stages import collect, localize, rectify
    from raystep.synth.policy import ensure_policy, settings_from_config

    run_dir = RunDir.from_config(config)
    prior = run_dir.read_manifest()  # what an earlier run of this folder did, before this one records
    run_dir.record_config(config)
    first_run = (prior.get("stages", {}).get("demo") or {}).get("seconds") or {}
    seconds: dict[str, float] = {}
    resumed: list[str] = []

    def timed(name: str, fn, *args):
        """Run one step; a step that found its work already done reports the time of the run that did it."""
        start = time.time()
        quiet_libraries()  # the step before may have turned a library's logger back up
        print(f"[demo] {name} ...", flush=True)
        result = fn(*args)
        if isinstance(result, dict) and result.get("failed_units"):
            raise RowsFailedError(
                f"{name}: {result['failed_units']} units failed and were kept with their error (see the run's "
                f"manifest); rerun the demo to retry them"
            )
        elapsed = round(time.time() - start, 1)
        if did_nothing(name, result) and name in first_run:
            seconds[name] = first_run[name]
            resumed.append(name)
            print(f"[demo] {name}: already done (resumed; it took {seconds[name]:.0f} s)", flush=True)
        else:
            seconds[name] = elapsed
            print(f"[demo] {name} done in {elapsed:.0f} s", flush=True)
        return result

    settings = settings_from_config(config)  # the demo's size set data.synth.policy; --set wins
    with timed_stage(run_dir, "warmup") as wstats:
        policy_dir, warm = timed("warm-up", ensure_policy, run_dir.path / "policy", settings, progress)
        wstats.update({k: warm[k] for k in ("parameters", "final_loss", "train_seconds", "cached")})
    config = config.model_copy(deep=True)
    config.model.path = str(policy_dir)
    ensure_ray()
    problems = test_problems(config)
    # One engine for the whole run: the policy answers collect, rollouts, rectify and the "before"
    # evaluation, then each trained model is loaded into the same engine (raystep.serve.swap).
    needed = not data_stages_done(prior, config) or bool(
        pending_evaluation(config, str(policy_dir), "before", problems)
    )
    with Server(config) as server:
        url = timed("serve policy", server.serve, str(policy_dir)) if needed else None
        sampled = served_config(config, url)
        collected = timed("collect", collect.run, sampled)
        localized = timed("localize", localize.run, sampled)
        rectified = timed("rectify", rectify.run, sampled)
        before = timed(
            "eval before", evaluate_model, config, str(policy_dir), "before", problems, progress, server
        )
        n_pairs = count_pairs(config, rectified)
        trained = timed("train", train_once, config)
        by_round = [{"round": 0, "model": str(policy_dir), **before}]
        current = config  # the round whose trained model is evaluated next
        for rnd in range(2, rounds + 1):  # iterative Step-DPO: the last round's model collects and trains
            model_dir = str(trained["model_dir"])
            nxt = round_config(config, rnd, model_dir)
            tag = f" (round {rnd})"
            done = timed(
                f"eval after (round {rnd - 1})",
                evaluate_model,
                current,
                model_dir,
                "after",
                problems,
                progress,
                server,
            )
            url = None  # a rerun whose stages are done samples nothing
            if not data_stages_done(RunDir.from_config(nxt).read_manifest(), nxt):
                url = timed(f"serve round {rnd - 1}'s model", server.serve, model_dir)
            sampled = served_config(nxt, url)
            timed(f"collect{tag}", collect.run, sampled)
            timed(f"localize{tag}", localize.run, sampled)
            stats = timed(f"rectify{tag}", rectify.run, sampled)
            by_round.append({"round": rnd - 1, "model": model_dir, "pairs": n_pairs, **done})
            n_pairs = count_pairs(nxt, stats)
            trained = timed(f"train{tag}", train_once, nxt)
            current = nxt
        after = timed(
            "eval after" + (f" (round {rounds})" if rounds > 1 else ""),
            evaluate_model,
            current,
            trained["model_dir"],
            "after",
            problems,
            progress,
            server,
        )
    by_round.append({"round": rounds, "model": str(trained["model_dir"]), "pairs": n_pairs, **after})
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
        "resumed": resumed,
    }
    if rounds > 1:
        report["rounds"] = [
            {k: r.get(k) for k in ("round", "model", "pairs", "accuracy", "ci95", "folder")} for r in by_round
        ]
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
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="iterative Step-DPO: round r collects with round r-1's trained model and trains from it",
    )


def main(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        raise SystemExit("raystep demo: --rounds must be >= 1")
    size = "quick" if args.quick else "full"
    config = load_config(args.config, demo_overrides(size, args.port) + list(args.overrides))
    started = time.time()
    report = run(config, size, progress=not args.no_progress, rounds=args.rounds)
    print(render_report(report))
    from raystep.report import refresh_report

    page = refresh_report(report["run_dir"])
    print(f"report: {report['run_dir']}/demo/report.md ({time.time() - started:.0f} s in all)")
    if page:
        print(f"open the run in a browser: {page}")
    return 0
