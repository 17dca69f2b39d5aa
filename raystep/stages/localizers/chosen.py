"""Chosen-step verification: a right final answer does not prove the chosen step right.

Rectify resamples step k from the correct prefix and keeps continuations that reach the gold answer;
the chosen step can still be wrong and the continuation lucky. Running the localizer over the
rectified solution (prefix + chosen step + continuation) and dropping candidates whose first wrong step
is at or before k removes those, as the paper asks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from raystep.config import RunConfig
from raystep.stages.localizers.base import Localizer
from raystep.steps import split_steps


@dataclass
class ChosenCheck:
    """What the check kept, how many it removed, and the candidates it could not judge (kept)."""

    kept: list[dict[str, Any]]
    removed: int = 0
    errors: int = 0
    removed_rows: list[dict[str, Any]] = field(default_factory=list)


def candidate_steps(candidate: dict[str, Any]) -> list[str]:
    """The rectified solution's steps: ``steps`` when given, else split ``initial_reason_steps + full_chosen``."""
    if candidate.get("steps") is not None:
        return [str(s) for s in candidate["steps"]]
    text = str(candidate.get("initial_reason_steps") or "") + str(candidate.get("full_chosen") or "")
    if not text:
        raise ValueError("a chosen candidate needs 'steps' or 'initial_reason_steps' + 'full_chosen'")
    return list(split_steps(text).steps)


def verify_chosen_detailed(candidates: list[dict[str, Any]], localizer: Localizer) -> ChosenCheck:
    """Localize each rectified solution; drop it when its first wrong step is <= its ``step_index``.

    Candidates need ``question``, ``answer``, ``step_index`` (k, 1-based) and the solution (see
    ``candidate_steps``); ``solution`` (the problem's reference solution) for the ``stepdpo`` judge prompt;
    ``policy_prompt`` (the text the policy continued) helps rollouts, which
    otherwise rebuild it from the template. A candidate the localizer could not judge (its row has an error) is kept and
    counted in ``errors``: an outage of the judge must not silently empty the pair set.
    """
    if not candidates:
        return ChosenCheck(kept=[])
    rows = [
        {
            "question": c["question"],
            "answer": c.get("answer"),
            "steps": candidate_steps(c),
            "prompt": c.get("policy_prompt") or "",
            "solution": c.get("solution"),  # the reference solution, for the paper's judge prompt
        }
        for c in candidates
    ]
    located = localizer.locate(rows)
    check = ChosenCheck(kept=[])
    for cand, res in zip(candidates, located, strict=True):
        k = int(cand["step_index"])
        if res.get("error"):
            check.errors += 1
            check.kept.append(cand)
        elif 1 <= int(res["first_wrong_step"]) <= k:
            check.removed += 1
            check.removed_rows.append({**cand, "chosen_first_wrong_step": int(res["first_wrong_step"])})
        else:
            check.kept.append(cand)
    return check


def verify_chosen(candidates: list[dict[str, Any]], localizer: Localizer) -> tuple[list[dict[str, Any]], int]:
    """``(kept, removed_count)``; see ``verify_chosen_detailed``."""
    check = verify_chosen_detailed(candidates, localizer)
    return check.kept, check.removed


_LOCALIZERS: dict[str, Localizer] = {}
_LOCK = threading.Lock()


def localizer_for(config: RunConfig) -> Localizer:
    """The configured localizer, built once per process and config: rectify checks one sample at a
    time, and a rollout localizer holds a model."""
    from raystep.runs import RunDir
    from raystep.stages.localizers import build_localizer

    key = config.model_dump_json()
    with _LOCK:
        if key not in _LOCALIZERS:
            # the default cache; build_localizer prefers localize.judge.cache_dir when set
            cache_dir = RunDir.from_config(config).path / "localized" / "judge-cache"
            _LOCALIZERS[key] = build_localizer(config, cache_dir=cache_dir)
        return _LOCALIZERS[key]


def verify_pairs(pairs: list[dict[str, Any]], config: RunConfig) -> tuple[list[dict[str, Any]], int, int]:
    """Rectify's ``verify_chosen`` hook: pairs (public schema + ``step_index``) whose chosen step the
    configured localizer accepts, how many it removed, and how many it could not judge (kept; see
    ``verify_chosen_detailed``).

    The rectified solution is ``initial_reason_steps + full_chosen`` (the prefix up to ``Step k:``, then
    the chosen step and the continuation that reached the answer); the pair's ``prompt`` is the question.
    """
    from raystep.steps import build_prompt

    solutions = reference_solutions(config) if "judge" in config.localize.methods else {}
    candidates = []
    for i, p in enumerate(pairs):
        split = split_steps(p["initial_reason_steps"] + (p.get("full_chosen") or p["chosen"]))
        candidate = {
            "question": p["prompt"],
            "answer": p.get("answer"),
            "step_index": int(p["step_index"]),
            "steps": list(split.steps),
            "solution": p.get("solution") or solutions.get(str(p.get("problem_id"))),
            "_index": i,
        }
        if config.model.template != "chat":  # what the policy saw before step 1 (rollouts continue it)
            candidate["policy_prompt"] = build_prompt(config.model.template, p["prompt"], split.preamble)
        candidates.append(candidate)
    check = verify_chosen_detailed(candidates, localizer_for(config))
    return [pairs[c["_index"]] for c in check.kept], check.removed, check.errors


def reference_solutions(config: RunConfig) -> dict[str, str]:
    """Problem id -> reference solution, from the run's ``problems/`` (pairs do not carry it; the
    ``stepdpo`` judge prompt needs it). Empty when the run has no problems folder."""
    from pathlib import Path

    from raystep.records import read_parquet

    folder = Path(config.run_dir) / "problems"
    if not folder.is_dir():
        return {}
    return {str(r["id"]): r["solution"] for r in read_parquet(folder) if r.get("solution")}
