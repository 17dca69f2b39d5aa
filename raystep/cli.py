"""The ``raystep`` command: parse, load the run config, call one stage.

Each subcommand lives in its own module that defines ``add_arguments(parser)`` and ``main(args) -> int``.
Modules are imported only when their command runs, so ``raystep --help`` stays instant and a stage's
heavy imports (torch, ray) are paid only by that stage.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from raystep.config import ConfigError
from raystep.config_args import add_config_arguments, config_from_args
from raystep.errors import BAD_INPUT, BROKEN, INTERRUPTED, ROWS_FAILED, InputError, RowsFailedError

COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("raystep.stages.collect", "sample N solutions per problem, grade them, keep every verdict"),
    "localize": ("raystep.stages.localize", "find the first wrong step of each wrong sample"),
    "rectify": ("raystep.stages.rectify", "resample the wrong step from the correct prefix; write pairs"),
    "localize-bench": ("raystep.stages.localize_bench", "score a localizer on ProcessBench-style labels"),
    "train": ("raystep.train.run", "Step-DPO on Ray Train + DeepSpeed, export a Hugging Face model"),
    "serve": ("raystep.serve.run", "serve a model behind OpenAI-compatible routes on Ray Serve"),
    "eval": ("raystep.evaluate.run", "evaluate an OpenAI-compatible endpoint on GSM8K / MATH"),
    "compare": ("raystep.evaluate.compare", "paired comparison of two evaluations (McNemar)"),
    "report": ("raystep.report.run", "RUN/report/index.html: pairs, stages, curves and evals offline"),
    "pipeline": ("raystep.pipeline", "collect -> localize -> rectify -> train in one run"),
    "demo": ("raystep.experiments.demo", "the whole loop on a built-in arithmetic world, on a local CPU Ray"),
    "ablate": (
        "raystep.experiments.ablate",
        "no training, SFT, DPO, Step-DPO (gold / own steps) on an arithmetic world, over seeds",
    ),
    "sweep": (
        "raystep.experiments.sweep",
        "learning rate and beta per method on the arithmetic world's valid split",
    ),
    "config": ("raystep.cli", "print the resolved run config (defaults, file and --set applied)"),
}


# `raystep config` itself
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--reference",
        action="store_true",
        help="print every key with its type, default and meaning (Markdown)",
    )


def main_config(args: argparse.Namespace) -> int:
    if args.reference:
        from raystep.config_reference import render

        print(render(), end="")
        return 0
    from raystep.config import dump_config

    print(dump_config(config_from_args(args)), end="")
    return 0


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: raystep <command> [--config FILE] [--set KEY=VALUE ...] [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "raystep <command> --help shows a command's options."]
    return "\n".join(lines)


GUIDES: dict[str, str] = {
    "collect": """main choices:
  --set sampling.engine=vllm|hf     vLLM through ray.data.llm (default, CPU or GPU) or the small hf fallback
  --set sampling.n=8                solutions per problem (the paper: 8, temperature 0.8, top-p 0.95)
  --set data.source=gsm8k|math|math500|jsonl|parquet|synth|hub   and data.path / data.hub_name / data.limit

examples:
  raystep collect --config jobs/configs/tiny-cpu.yaml
  raystep collect --config jobs/configs/qwen2-7b-instruct.yaml --set data.limit=100""",
    "localize": """how to find the first wrong step (localize.methods, several may vote via localize.combine):
  judge      an OpenAI-compatible chat model labels each step (the paper: GPT-4); key from
             $<localize.judge.api_key_env>, endpoint localize.judge.base_url / localize.judge.model
  rollout    Monte Carlo continuations from each prefix with the policy itself (no key needed),
             bisected over the steps: localize.rollout.num_rollouts, localize.rollout.bisect
  verifier   an exact step checker where the domain has one (the built-in arithmetic world)

examples:
  raystep localize --config jobs/configs/tiny-cpu.yaml --set "localize.methods=[rollout]"
  OPENAI_API_KEY=... raystep localize --config RUN.yaml --set "localize.methods=[judge]" \\
      --set localize.judge.model=gpt-4o
  raystep localize --config RUN.yaml --set "localize.methods=[judge, rollout]" --set localize.combine=agree""",
    "rectify": """main choices:
  --set rectify.n=20                    continuations from the correct prefix (the paper: 20)
  --set rectify.max_pairs_per_sample=1  chosen steps kept per wrong sample
  --set rectify.verify_chosen=true      run the localizer over each rectified solution, drop bad chosen steps

example:
  raystep rectify --config jobs/configs/tiny-cpu.yaml""",
    "localize-bench": """examples:
  raystep localize-bench --config RUN.yaml --set 'localize.methods=[rollout, verifier]'""",
    "train": """main choices:
  --set train.mode=stepdpo|dpo|sft    step pairs, whole responses, or SFT on the chosen solutions
  --set train.beta=0.5 --set train.learning_rate=5e-7 --set train.epochs=8   (the paper's 7B recipe)
  --set train.num_workers=8 --set train.zero_stage=3   Ray Train workers, DeepSpeed ZeRO stage
  --pairs FILE                         train on a pairs file (public Math-Step-DPO-10K schema)

examples:
  raystep train --config jobs/configs/tiny-cpu.yaml
  raystep train --config jobs/configs/qwen2-7b-instruct.yaml --pairs math_step_dpo_10k.jsonl""",
    "serve": """Serves the model with ray.serve.llm (vLLM, CPU or GPU) behind OpenAI routes on serve.host:serve.port.
Binds 127.0.0.1 unless told otherwise; any other address requires the key in $<serve.api_key_env>.

examples:
  raystep serve --model runs/demo/model --port 8000
  RAYSTEP_API_KEY=... raystep serve --config RUN.yaml --host 0.0.0.0
  raystep serve --config RUN.yaml --emit-config serve.yaml     # for `serve deploy` or a RayService""",
    "eval": """examples:
  raystep eval --set eval.base_url=http://127.0.0.1:8000/v1 --set eval.model=raystep \\
      --set "eval.benchmarks=[gsm8k, math500]"
  raystep eval --config RUN.yaml --set eval.k=8 --set eval.temperature=0.8     # maj@8, pass@8""",
    "compare": """example:
  raystep compare runs/demo/eval/before-*/synth runs/demo/eval/after-*/synth""",
    "pipeline": """examples:
  raystep pipeline --config jobs/configs/tiny-cpu.yaml --set data.limit=4
  raystep pipeline --config RUN.yaml --rounds 2   # iterative: round 2 collects with round 1's model""",
    "demo": """The whole Step-DPO loop on the built-in arithmetic world, on a local Ray on this machine:
warm-up policy -> collect -> localize -> rectify -> train -> serve before/after -> evaluate.

examples:
  raystep demo                 # about 10 minutes on a 2-core CPU machine
  raystep demo --quick         # the CI size: every stage, too small to move accuracy
  raystep demo --set train.beta=0.2
  raystep demo --rounds 2      # iterative Step-DPO: round 2 collects with round 1's model""",
    "ablate": """The paper's comparisons on the story world: no training, SFT, DPO, Step-DPO with gold steps and
with the policy's own steps, all trained on the same pairs per seed; greedy and sampled accuracy.

examples:
  raystep ablate --quick --seeds 0 1                       # a CI-sized run
  raystep ablate --policy small --tuned runs/ablate-small/sweep/sweep.json --seeds 0 1 2 3 4 --rounds 2""",
    "sweep": """Learning rate and beta per method, scored on the story world's valid split (never test).

example:
  raystep sweep --policy small     # writes runs/ablate-small/sweep/sweep.json for raystep ablate --tuned""",
    "config": """examples:
  raystep config --config jobs/configs/tiny-cpu.yaml --set train.beta=0.4
  raystep config --reference > docs/config.md""",
}
"""Each command's ``--help`` epilog: its main choices and an example."""

REPORTED = frozenset({"collect", "localize", "rectify", "train", "eval", "pipeline"})
"""Commands after which the run's HTML report (``<run>/report/index.html``) is rebuilt."""

RAY_COMMANDS = frozenset(
    {"collect", "localize", "rectify", "localize-bench", "train", "pipeline", "demo", "ablate", "sweep"}
)
"""Commands that run on Ray: they connect to ``$RAY_ADDRESS`` or start a local Ray before they begin."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"raystep: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    if name != "config":
        from raystep.console import quiet_libraries

        quiet_libraries()
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"raystep {name}",
        description=help_,
        epilog=GUIDES.get(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        if name == "config":
            return main_config(args)
        if name in RAY_COMMANDS:
            from raystep.local_ray import ensure_ray

            ensure_ray()
        code = int(module.main(args) or 0)
        if name in REPORTED and not getattr(args, "out", None):  # `--out DIR` writes outside the run folder
            from raystep.report import refresh_report

            refresh_report(config_from_args(args).run_dir)
        return code
    except ConfigError as exc:
        print(f"raystep {name}: config error:\n{exc}", file=sys.stderr)
        return BAD_INPUT
    except (InputError, FileNotFoundError) as exc:  # the user fixes a file: one line names it
        print(f"raystep {name}: {exc}", file=sys.stderr)
        return BAD_INPUT
    except RowsFailedError as exc:
        print(f"raystep {name}: {exc}", file=sys.stderr)
        return ROWS_FAILED
    except KeyboardInterrupt:
        print(f"raystep {name}: interrupted (a rerun resumes where it stopped)", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:  # one line on the terminal, the whole traceback in a file
        from raystep.console import report_failure

        path = report_failure(name, exc)
        print(
            f"raystep {name}: failed: {type(exc).__name__}: {exc} (full traceback: {path})", file=sys.stderr
        )
        return BROKEN


if __name__ == "__main__":
    sys.exit(main())
