"""``--config`` and ``--set``: the two arguments of every command that reads a run config.

Below the CLI so that each stage's own ``add_arguments`` / ``main`` (what ``raystep <stage>`` and the
Ray job entrypoints call) can use them without importing ``raystep.cli``.
"""

from __future__ import annotations

import argparse

from raystep.config import RunConfig, load_config


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
