"""Localizers: find the first wrong step of a wrong solution (judge, rollout, verifier) and combine them.

``build_localizer(config)`` turns ``config.localize`` into one ``Localizer``; the stage, the benchmark
and rectify's chosen-step check all build theirs here, so they label steps the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from raystep.config import JudgeConfig, RunConfig
from raystep.engines import sampling_defaults
from raystep.stages.localizers.base import (
    CombinedLocalizer,
    Localizer,
    combine_localizers,
    labelled,
    locate_safely,
)
from raystep.stages.localizers.chosen import verify_chosen, verify_chosen_detailed
from raystep.stages.localizers.judge_prompts import MissingReference, require_reference
from raystep.stages.localizers.verifier import VERIFIERS, load_verifier, register_verifier

__all__ = [
    "VERIFIERS",
    "CombinedLocalizer",
    "Localizer",
    "MissingReference",
    "build_localizer",
    "build_localizers",
    "close_localizer",
    "combine_localizers",
    "labelled",
    "locate_safely",
    "load_verifier",
    "register_verifier",
    "require_reference",
    "verify_chosen",
    "verify_chosen_detailed",
]


def build_localizer(
    config: RunConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    requests_per_second: float | None = None,
    sampler: Any = None,
    grade: Any = None,
) -> Localizer:
    """The configured localizer(s) behind the ``localize.combine`` rule.

    ``cache_dir``: the judge's reply cache when ``localize.judge.cache_dir`` is empty.
    ``requests_per_second``: this replica's share of the judge's rate.
    ``sampler`` / ``grade``: the rollout policy and grader (default: ``model.path`` through
    ``HFGenerator`` and ``raystep.grading.Grader``).
    """
    built = build_localizers(
        config, cache_dir=cache_dir, requests_per_second=requests_per_second, sampler=sampler, grade=grade
    )
    return combine_localizers(built, config.localize.combine)


def build_localizers(
    config: RunConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    requests_per_second: float | None = None,
    sampler: Any = None,
    grade: Any = None,
    judges: Sequence[tuple[str, JudgeConfig]] | None = None,
) -> list[Localizer]:
    """One localizer per ``localize.methods`` entry, in order, not combined (what localize-bench compares).

    ``judges``: ``(name, JudgeConfig)`` variants that take the place of ``judge`` (several prompts or
    modes side by side); default: ``[("judge", localize.judge)]``.
    """
    loc = config.localize
    built: list[Localizer] = []
    for method in loc.methods:
        if method == "judge":
            from raystep.stages.localizers.judge import JudgeLocalizer

            for name, judge in judges or [("judge", loc.judge)]:
                built.append(
                    JudgeLocalizer(
                        judge,
                        cache_dir=judge.cache_dir or cache_dir,
                        requests_per_second=requests_per_second,
                        name=name,
                    )
                )
        elif method == "verifier":
            from raystep.stages.localizers.verifier import VerifierLocalizer

            built.append(VerifierLocalizer(loc.verifier))
        elif method == "rollout":
            built.append(_build_rollout(config, sampler, grade))
        else:  # pragma: no cover - the config's Literal rejects it first
            raise ValueError(f"unknown localize method {method!r}")
    return built


def _build_rollout(config: RunConfig, sampler: Any, grade: Any) -> Localizer:
    from raystep.stages.localizers.rollout import HFSampler, RolloutLocalizer, VLLMSampler, grading_fn

    roll = config.localize.rollout
    if sampler is None and config.sampling.engine == "vllm":
        from raystep.engine_args import engine_env, resolve_device, vllm_engine_kwargs

        device = resolve_device(config)
        sampler = VLLMSampler(
            config.model.path, vllm_engine_kwargs(config, device), env=engine_env(config, device)
        )
    elif sampler is None and config.sampling.engine == "endpoint":
        from raystep.engines.endpoint import EndpointSampler

        sampler = EndpointSampler(config.sampling.endpoint)
    elif sampler is None:
        sampler = HFSampler.from_path(
            config.model.path,
            tokenizer=config.model.tokenizer,
            dtype=config.model.dtype,
            trust_remote_code=config.model.trust_remote_code,
            batch_size=config.sampling.batch_size,
        )
    close = None
    if grade is None:
        grade, close = grading_fn()
    sampling = sampling_defaults(
        config, {"temperature": roll.temperature, "max_new_tokens": roll.max_new_tokens}
    )
    return RolloutLocalizer(
        sampler,
        grade,
        num_rollouts=roll.num_rollouts,
        threshold=roll.threshold,
        bisect=roll.bisect,
        sampling=sampling,
        close=close,
        template=config.model.template,
    )


def close_localizer(localizer: Any) -> None:
    """Release what a localizer holds (grader processes); safe on any localizer."""
    for part in getattr(localizer, "localizers", [localizer]):
        close = getattr(part, "close", None)
        if callable(close):
            close()
