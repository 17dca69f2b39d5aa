"""Quiet, useful console output for the ``raystep`` command.

A stage shows one progress bar of its own; the libraries underneath (Ray, Ray Data, Serve, vLLM,
DeepSpeed, transformers) log at INFO by default, which buries that bar under hundreds of lines. Their
loggers are turned down to warnings here, their own progress displays are off, and Ray's workers keep
their output in the session's log files instead of the terminal. A failure is reported in one line
with the path of the log that holds the whole traceback.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ENV_DEFAULTS = {
    "RAY_LOGGER_LEVEL": "warning",  # the level every ray.init() (Ray Data calls it again) gives Ray's logger
    "VLLM_LOGGING_LEVEL": "ERROR",  # this process imports vLLM through ray.data.llm / ray.serve.llm
    "TOKENIZERS_PARALLELISM": "false",
    "DS_ACCELERATOR": "",  # filled below: DeepSpeed warns when it has to guess
}
"""Environment the libraries read at import; a value the user already set wins."""

QUIET_LOGGERS = {
    "ray": logging.WARNING,
    "ray.data": logging.WARNING,
    "ray.train": logging.WARNING,
    "ray.serve": logging.WARNING,
    "ray.data._internal.progress": logging.ERROR,  # "Progress bars disabled": we disabled them
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
    "vllm": logging.ERROR,
    "DeepSpeed": logging.ERROR,
    "deepspeed": logging.ERROR,
    "transformers": logging.ERROR,
    "httpx": logging.WARNING,
}


def quiet_libraries() -> None:
    """Turn the libraries' INFO output down; call before they are imported and again after ``ray.init``."""
    for name, value in ENV_DEFAULTS.items():
        if name == "DS_ACCELERATOR":
            value = os.environ.get(name) or _ds_accelerator()
        if value:
            os.environ.setdefault(name, value)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # Something in a long run (Ray's JSON logging config reaches the driver) turns the root logger to INFO;
    # raystep owns its process, so every library's INFO line is the log files' business, not the terminal's.
    logging.getLogger().setLevel(logging.WARNING)
    # Ray LLM gives each of its module loggers (under ray.llm, and under ray.serve for its Serve builders)
    # an INFO handler of their own unless the parent already has one: give the parents one at WARNING.
    for parent in ("ray.llm", "ray.serve"):
        logger = logging.getLogger(parent)
        if not logger.handlers:
            logger.addHandler(logging.StreamHandler())
            logger.propagate = False
        logger.setLevel(logging.WARNING)
    # Ray Data warns when a stage's input has fewer blocks than its actor pool (a small evaluation is one
    # block; the pool stays fixed so that runs repeat): nothing a user can act on
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
    try:
        from ray.data import DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
    except ImportError:  # pragma: no cover - ray is a dependency
        pass


def _ds_accelerator() -> str:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return ""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def log_dir() -> Path:
    """Where full tracebacks go: ``$RAYSTEP_LOG_DIR``, else a ``raystep-logs`` folder in the temp dir."""
    path = Path(os.environ.get("RAYSTEP_LOG_DIR") or Path(tempfile.gettempdir()) / "raystep-logs")
    path.mkdir(parents=True, exist_ok=True)
    return path


def report_failure(command: str, exc: BaseException) -> Path:
    """Write the traceback to a log file and return its path (the caller prints the one line)."""
    path = log_dir() / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text("".join(traceback.format_exception(exc)))
    return path
