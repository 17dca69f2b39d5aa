"""Monte Carlo localization (Math-Shepherd) with a binary search over steps (OmegaPRM).

The prefix that ends at step j is *alive* when continuations sampled from it reach the gold answer
more often than ``threshold``, *dead* otherwise. The first wrong step is the first j whose prefix is
dead. Assuming success is monotone (once a prefix is dead, longer ones stay dead), bisection finds it
with at most ``ceil(log2(S))`` probes of R rollouts each, instead of one probe per step:

- the empty prefix (j = 0) is taken as alive (the policy can solve the problem; not probed),
- the full solution (j = S) is dead: it is a wrong sample,
- keep ``lo`` alive and ``hi`` dead; probe the middle until ``hi = lo + 1``; the answer is ``hi``.

Every probe (step, success rate, rollouts) is recorded in the row's evidence. Rows of a batch are
bisected together, so each round is one batched call to the sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from raystep.stages.localizers.base import labelled

GradeFn = Callable[[list[str], list[str]], list[bool]]


@runtime_checkable
class Sampler(Protocol):
    """Draws ``n`` continuations of each prompt."""

    def sample(self, prompts: list[str], n: int, sampling: dict[str, Any]) -> list[list[str]]: ...


class HFSampler:
    """``raystep.engines.hf.HFGenerator`` as a ``Sampler``: prompts fanned out n times, one seed each.

    A continuation's seed is derived from the base seed, the prompt text and its index, so rerunning a
    localization draws the same rollouts whatever the batching.
    """

    def __init__(self, generator: Any):
        self.generator = generator
        self.tokenizer = getattr(generator, "tokenizer", None)

    @classmethod
    def from_path(cls, model_path: str, **kwargs: Any) -> HFSampler:
        from raystep.engines.hf import HFGenerator

        return cls(HFGenerator(model_path, **kwargs))

    def sample(self, prompts: list[str], n: int, sampling: dict[str, Any]) -> list[list[str]]:
        from raystep.engines.base import sample_seeds

        base = int(sampling.get("seed", 0))
        flat_prompts = [p for p in prompts for _ in range(n)]
        flat_sampling = [{**sampling, "seed": s} for p in prompts for s in sample_seeds(base, n, p)]
        outs = self.generator.generate(flat_prompts, flat_sampling)
        texts = [o["generated_text"] for o in outs]
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def vllm_sampling_kwargs(sampling: dict[str, Any], n: int) -> dict[str, Any]:
    """``vllm.SamplingParams`` arguments for n rollouts of one prefix (plain dict, testable anywhere):
    the engine's ``to_vllm_sampling`` with ``n`` rollouts and defaults for the keys ``sampling`` lacks."""
    from raystep.engines.base import normalize_sampling
    from raystep.engines.vllm import to_vllm_sampling

    defaults = {"temperature": 0.8, "top_p": 1.0, "max_new_tokens": 1024, "seed": 0}
    return {**to_vllm_sampling(normalize_sampling(sampling, defaults)), "n": int(n)}


class VLLMSampler:
    """``vllm.LLM`` in the localizer's process (CPU or GPU): ``n`` rollouts per prefix in one request, and
    prefix caching shares the prefix's KV cache among them and among the probes of one solution.

    ``env`` (the engine's environment, such as the CPU KV-cache size) is set before vLLM reads it; a
    value the process already has wins."""

    def __init__(self, model_path: str, engine_kwargs: dict[str, Any], env: dict[str, str] | None = None):
        import os

        for name, value in (env or {}).items():
            os.environ.setdefault(name, value)
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(
                "rollouts with sampling.engine: vllm need vLLM: pip install 'raystep[gpu]' (CUDA) "
                "or bash scripts/install.sh (CPU build)"
            ) from exc
        self.llm = LLM(model=model_path, **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def sample(self, prompts: list[str], n: int, sampling: dict[str, Any]) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(**vllm_sampling_kwargs(sampling, n))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[c.text for c in out.outputs] for out in outputs]


def grading_fn(workers: int = 1, timeout_s: float = 5.0) -> tuple[GradeFn, Callable[[], None]]:
    """``raystep.grading.Grader`` as a grade function, and the function that closes it."""
    from raystep.grading import Grader

    grader = Grader(workers=workers, timeout_s=timeout_s)

    def grade(texts: list[str], golds: list[str]) -> list[bool]:
        return [v.correct for v in grader.grade(texts, golds)]

    return grade, grader.close


def prompt_base(row: dict[str, Any], template: str = "qwen2-boxed", tokenizer: Any = None) -> str:
    """The text before step 1, so that the prefix ending at step j is ``base + "".join(steps[:j])``.

    Collect keeps the prompt (ending with the ``Step 1:`` primer) and ``response = primer + generated``,
    split into ``steps`` after the primer's first line. The model saw ``prompt + generated``; cutting
    the joined steps off its end gives the base. Rows without a prompt (benchmarks, rectified
    candidates) get the template's prompt for their question.
    """
    from raystep.steps import STEP_PRIMER, build_prompt

    joined = "".join(str(s) for s in row["steps"])
    prompt = str(row.get("prompt") or "")
    if not prompt:
        return build_prompt(template, str(row["question"]), tokenizer=tokenizer)
    response = str(row.get("response") or "")
    if prompt.endswith(STEP_PRIMER) and response.startswith(STEP_PRIMER):
        response = response[len(STEP_PRIMER) :]  # the primer was in the prompt, not generated
    seen = prompt + response
    if joined and seen.endswith(joined):
        return seen[: len(seen) - len(joined)]
    return prompt


class RolloutLocalizer:
    """First wrong step from the success rate of sampled continuations; see the module docstring."""

    def __init__(
        self,
        sampler: Sampler,
        grade: GradeFn,
        num_rollouts: int = 8,
        threshold: float = 0.0,
        bisect: bool = True,
        sampling: dict[str, Any] | None = None,
        close: Callable[[], None] | None = None,
        template: str = "qwen2-boxed",
    ):
        self.sampler = sampler
        self.grade = grade
        self.num_rollouts = num_rollouts
        self.threshold = threshold
        self.bisect = bisect
        self.sampling = dict(
            sampling or {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 512, "seed": 0}
        )
        self._close = close
        self.template = template
        self.name = "rollout"
        self.stats = {"rollouts": 0, "probes": 0}

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    @staticmethod
    def max_probes(num_steps: int, bisect: bool = True) -> int:
        """The most probes one solution of ``num_steps`` steps can cost."""
        if num_steps <= 1:
            return 0
        return math.ceil(math.log2(num_steps)) if bisect else num_steps - 1

    def _next_probe(self, state: dict[str, Any]) -> int | None:
        lo, hi = state["lo"], state["hi"]
        if hi - lo <= 1:
            return None
        return (lo + hi) // 2 if self.bisect else lo + 1

    def locate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(rows)
        states: dict[int, dict[str, Any]] = {}
        for i, row in enumerate(rows):
            steps = list(row["steps"])
            gold = row.get("answer")
            if not steps:
                results[i] = labelled(row, self.name, 0, {"probes": []}, "no steps to localize")
            elif gold in (None, ""):
                results[i] = labelled(row, self.name, 0, {"probes": []}, "rollouts need the gold answer")
            else:
                states[i] = {"lo": 0, "hi": len(steps), "steps": [str(s) for s in steps], "probes": []}
        for i, state in states.items():
            try:
                state["base"] = prompt_base(rows[i], self.template, getattr(self.sampler, "tokenizer", None))
            except Exception as exc:
                results[i] = labelled(rows[i], self.name, 0, {"probes": []}, f"no prompt: {exc}")
        states = {i: s for i, s in states.items() if "base" in s}
        try:
            self._bisect(rows, states)
        except Exception as exc:  # the sampler or the grader failed: every open row keeps the error
            for i, state in states.items():
                evidence = self._evidence(state)
                results[i] = labelled(
                    rows[i], self.name, 0, evidence, f"rollout failed: {type(exc).__name__}: {exc}"
                )
            states = {}
        for i, state in states.items():
            results[i] = labelled(rows[i], self.name, state["hi"], self._evidence(state))
        return [r for r in results if r is not None]

    def _evidence(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "probes": state["probes"],
            "rollouts": sum(p["n"] for p in state["probes"]),
            "num_steps": len(state["steps"]),
            "threshold": self.threshold,
            "bisect": self.bisect,
            "assumed": {"0": "alive", str(len(state["steps"])): "dead"},
        }

    def _bisect(self, rows: list[dict[str, Any]], states: dict[int, dict[str, Any]]) -> None:
        n = self.num_rollouts
        while True:
            probes = [(i, j) for i, s in states.items() if (j := self._next_probe(s)) is not None]
            if not probes:
                return
            prefixes = ["".join(states[i]["steps"][:j]) for i, j in probes]
            prompts = [states[i]["base"] + prefix for (i, _), prefix in zip(probes, prefixes, strict=True)]
            continuations = self.sampler.sample(prompts, n, self.sampling)
            if len(continuations) != len(prompts) or any(len(c) != n for c in continuations):
                raise RuntimeError(
                    f"sampler returned {[len(c) for c in continuations]} for {len(prompts)}x{n}"
                )
            texts = [prefix + c for prefix, conts in zip(prefixes, continuations, strict=True) for c in conts]
            golds = [str(rows[i]["answer"]) for i, _ in probes for _ in range(n)]
            correct = self.grade(texts, golds)
            self.stats["rollouts"] += len(texts)
            self.stats["probes"] += len(probes)
            for k, (i, j) in enumerate(probes):
                rate = sum(bool(c) for c in correct[k * n : (k + 1) * n]) / n
                state = states[i]
                alive = rate > self.threshold
                state["probes"].append({"step": j, "rate": rate, "n": n, "alive": alive})
                if alive:
                    state["lo"] = j
                else:
                    state["hi"] = j
