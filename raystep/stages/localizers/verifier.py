"""Exact verifiers: domains that can check a step by computation need neither a judge nor rollouts.

A verifier is a plain function ``first_wrong_step(question: str, steps: list[str]) -> int`` (1-based, 0
when every step checks out). They are registered by name as import paths, so registering one costs no
import and a Ray worker imports only the one it uses. ``localize.verifier`` may also be an import path
``module:function`` directly, which plugs in a checker without touching this file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from raystep.stages.localizers.base import check_step, labelled

VerifierFn = Callable[[str, list[str]], int]

VERIFIERS: dict[str, str] = {
    "arithmetic": "raystep.synth.verify:first_wrong_step",
}
"""Verifier name -> ``"module:function"``."""


def register_verifier(name: str, import_path: str) -> None:
    """Add (or replace) a named verifier; ``import_path`` is ``module:function``."""
    if ":" not in import_path:
        raise ValueError(
            f"verifier {name!r}: import path must look like 'module:function', got {import_path!r}"
        )
    VERIFIERS[name] = import_path


def load_verifier(name: str) -> VerifierFn:
    """The function behind a registered name or a ``module:function`` path."""
    path = VERIFIERS.get(name, name)
    if ":" not in path:
        raise ValueError(
            f"unknown verifier {name!r}; registered: {', '.join(sorted(VERIFIERS))} (or 'module:function')"
        )
    module_name, func_name = path.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"verifier {name!r}: cannot import {module_name!r}: {exc}") from exc
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ValueError(f"verifier {name!r}: {module_name!r} has no function {func_name!r}")
    return fn


class VerifierLocalizer:
    """Runs an exact checker on each row; a checker that raises leaves the row with that error."""

    def __init__(self, verifier: str = "arithmetic", fn: VerifierFn | None = None):
        self.verifier = verifier
        self.fn = fn or load_verifier(verifier)
        self.name = "verifier"

    def locate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            steps = [str(s) for s in row["steps"]]
            evidence: dict[str, Any] = {"verifier": self.verifier, "num_steps": len(steps)}
            try:
                step = check_step(self.fn(str(row["question"]), steps), len(steps))
            except Exception as exc:  # a checker's bug must not take the other rows down
                out.append(
                    labelled(row, self.name, 0, evidence, f"verifier failed: {type(exc).__name__}: {exc}")
                )
                continue
            out.append(labelled(row, self.name, step, evidence))
        return out
