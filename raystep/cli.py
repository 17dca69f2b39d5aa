"""The ``raystep`` command: parse, load the run config, call one stage.

Each subcommand lives in its own module that defines ``add_arguments(parser)`` and ``main(args) -> int``.
Modules are imported only when their command runs, so ``raystep --help`` stays instant and a stage's
heavy imports (torch, ray) are paid only by that stage.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from raystep.config import ConfigError, RunConfig, load_config

COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("raystep.stages.collect", "sample N solutions per problem, grade them, keep every verdict"),
    "localize": ("raystep.stages.localize", "find the first wrong step of each wrong sample"),
    "rectify": ("raystep.stages.rectify", "resample the wrong step from the correct prefix; write pairs"),
    "localize-bench": ("raystep.stages.localize_bench", "score a localizer on ProcessBench-style labels"),
    "train": ("raystep.train.run", "Step-DPO on Ray Train + DeepSpeed, export a Hugging Face model"),
    "serve": ("raystep.serve.run", "serve a model behind OpenAI-compatible routes on Ray Serve"),
    "eval": ("raystep.evaluate.run", "evaluate an OpenAI-compatible endpoint on GSM8K / MATH"),
    "compare": ("raystep.evaluate.compare", "paired comparison of two evaluations (McNemar)"),
    "pipeline": ("raystep.pipeline", "collect -> localize -> rectify -> train in one run"),
    "demo": ("raystep.demo", "the whole loop on a built-in arithmetic world, on a local CPU Ray"),
    "ablate": (
        "raystep.synth.ablate",
        "no training, SFT, DPO, Step-DPO (gold / own steps) on an arithmetic world, over seeds",
    ),
    "sweep": (
        "raystep.synth.sweep",
        "learning rate and beta per method on the arithmetic world's valid split",
    ),
    "config": ("raystep.cli", "print the resolved run config (defaults, file and --set applied)"),
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set``: every command that reads a run config takes these."""
    parser.add_argument("--config", "-c", help="run config YAML (see jobs/configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.beta=0.4 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return load_config(getattr(args, "config", None), getattr(args, "overrides", []))


# `raystep config` itself
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def main_config(args: argparse.Namespace) -> int:
    from raystep.config import dump_config

    print(dump_config(config_from_args(args)), end="")
    return 0


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: raystep <command> [--config FILE] [--set KEY=VALUE ...] [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "raystep <command> --help shows a command's options."]
    return "\n".join(lines)


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
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"raystep {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        if name == "config":
            return main_config(args)
        return int(module.main(args) or 0)
    except ConfigError as exc:
        print(f"raystep {name}: config error:\n{exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
