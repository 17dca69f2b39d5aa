"""Step-DPO-shaped pairs made from GSM8K worked answers, for the tests and ``bench_train.py``.

Real pairs come from the collect -> localize -> rectify stages; these are a stand-in with the same shape
(a prefix of several correct steps, the true next step as chosen, the same step with one number changed
as rejected), so training, packing and the benchmark run on real text without any generation.
"""

from __future__ import annotations

import json
import os
import random
import re
from typing import Any

from raystep.steps import split_steps

_NUMBER = re.compile(r"\d+")


def perturb_step(step: str, rng: random.Random) -> str | None:
    """The step with its last number changed (a plausible arithmetic slip); None when it has no number."""
    matches = list(_NUMBER.finditer(step))
    if not matches:
        return None
    m = matches[-1]
    value = int(m.group(0))
    wrong = value + rng.choice([-3, -2, -1, 1, 2, 3, 10])
    if wrong < 0 or wrong == value:
        wrong = value + 7
    return step[: m.start()] + str(wrong) + step[m.end() :]


def gsm8k_pairs(
    path: str | os.PathLike[str], n: int, seed: int = 0, min_prefix_steps: int = 2
) -> list[dict[str, Any]]:
    """``n`` pairs in the public schema from a GSM8K JSONL file (deterministic for a seed).

    Each pair takes the last reasoning step that has a number as the branch point, so the prefix holds
    at least ``min_prefix_steps`` steps: a prompt several times longer than the step, as in Step-DPO.
    """
    rng = random.Random(seed)
    pairs: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if len(pairs) >= n:
                break
            row = json.loads(line)
            body = row["answer"].split("####")[0]
            steps = split_steps(body)
            candidates = [
                k for k in range(min_prefix_steps + 1, len(steps) + 1) if _NUMBER.search(steps.body(k))
            ]
            if not candidates:
                continue
            k = candidates[-1]
            chosen = steps.body(k)
            rejected = perturb_step(chosen, rng)
            if rejected is None or not chosen.strip():
                continue
            prefix = steps.prefix(k)
            answer = row["answer"].split("####")[-1].strip()
            pairs.append(
                {
                    "dataset": "gsm8k",
                    "prompt": row["question"],
                    "initial_reason_steps": prefix,
                    "chosen": chosen,
                    "rejected": rejected,
                    "full_chosen": chosen + "".join(steps.steps[k:]),
                    "full_rejected": rejected,
                    "answer": answer,
                    "pair_id": f"gsm8k-{len(pairs)}",
                    "step_index": k,
                }
            )
    if len(pairs) < n:
        raise ValueError(f"{path}: only {len(pairs)} pairs could be made, {n} requested")
    return pairs


def world_pairs(n: int, seed: int = 0, min_prefix_steps: int = 2) -> list[dict[str, Any]]:
    """``n`` Step-DPO pairs from the built-in arithmetic world, for machines without the GSM8K file.

    Long chains (6 to 10 events, amounts up to 999) give a prefix of several correct steps; the branch
    step is drawn after it, chosen is its correct body and rejected the same step from a worked solution
    with one of the world's mistakes there (wrong result, operator or operand).
    """
    from raystep.synth.world import MISTAKES, WorldSpec, generate, solution, solution_with_mistake

    spec = WorldSpec(min_steps=6, max_steps=10, max_operand=99, max_factor=5, max_value=999)
    rng = random.Random(seed)
    pairs: list[dict[str, Any]] = []
    for problem in generate(spec, n, seed=seed):
        good = split_steps(solution(problem))
        k = rng.randint(min_prefix_steps + 1, len(problem.events))
        bad = split_steps(solution_with_mistake(problem, k, rng.choice(MISTAKES), rng))
        chosen, rejected = good.body(k), bad.body(k)
        if chosen == rejected:  # a mistake that happens to give the same text: take an arithmetic slip
            rejected = perturb_step(chosen, rng) or chosen + " 1"
        pairs.append(
            {
                "dataset": "synth",
                "prompt": problem.question,
                "initial_reason_steps": good.prefix(k),
                "chosen": chosen,
                "rejected": rejected,
                "full_chosen": chosen + "".join(good.steps[k:]),
                "full_rejected": rejected + "".join(bad.steps[k:]),
                "answer": str(problem.answer),
                "pair_id": f"synth-{len(pairs)}",
                "step_index": k,
            }
        )
    return pairs
