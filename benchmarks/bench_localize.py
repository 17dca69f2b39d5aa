"""Benchmark: rollouts spent by bisection vs a linear scan over steps, measured side by side in one run.

Two parts, both printing the ratio linear / bisect and each method's exactness:

1. ``scripted`` (always): solutions of S steps whose first wrong step is drawn uniformly; a sampler
   whose continuations succeed with probability ``--alive-rate`` from a prefix before the first error
   and never after (Bernoulli draws, so a live prefix can look dead by chance, as in real sampling).
   Continuations are graded by ``raystep.grading.Grader``. This isolates the search: rollouts spent
   and how often the located step is exact, for S = 4, 8, 16, 32. ``linear`` stops at the first
   dead prefix; the cost of probing every step (Math-Shepherd's way, R * (S - 1)) is printed beside.
2. ``--policy DIR`` (optional): the arithmetic world's warmed-up tiny policy (``raystep.synth.policy``,
   trained by the demo or with ``--train-policy``) samples solutions to world problems; the wrong ones
   are localized by real rollouts (``HFGenerator``) both ways, and compared with the exact verifier
   (``raystep.synth.verify``) as ground truth. Reports wall time too.

    python benchmarks/bench_localize.py [--solutions 200] [--rollouts 8] [--alive-rate 0.6]
    python benchmarks/bench_localize.py --policy runs/demo/policy --problems 64
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raystep.stages.localizers.rollout import RolloutLocalizer, grading_fn  # noqa: E402


class BernoulliSampler:
    """Continuations that box the gold with probability ``alive_rate`` while the prefix is before the
    solution's first wrong step, and never after."""

    def __init__(self, first_wrong: dict[str, int], alive_rate: float, seed: int = 0):
        self.first_wrong = first_wrong
        self.alive_rate = alive_rate
        self.rng = random.Random(seed)

    def sample(self, prompts: list[str], n: int, sampling: dict[str, Any]) -> list[list[str]]:
        out = []
        for prompt in prompts:
            sid = re.search(r"\[(s\d+)\]", prompt).group(1)
            j = len(re.findall(r"<\d+>", prompt))
            p = self.alive_rate if j < self.first_wrong[sid] else 0.0
            out.append([" \\boxed{42}" if self.rng.random() < p else " \\boxed{7}" for _ in range(n)])
        return out


def scripted(args: argparse.Namespace, grade: Any) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    results = []
    for num_steps in (4, 8, 16, 32):
        rows, truth = [], {}
        for i in range(args.solutions):
            sid = f"s{i}"
            truth[sid] = rng.randint(1, num_steps)
            steps = [f"Step {k}: work <{k}>.\n" for k in range(1, num_steps + 1)]
            rows.append(
                {"sample_id": sid, "question": "q", "answer": "42", "prompt": f"[{sid}] ", "steps": steps}
            )
        line: dict[str, Any] = {"steps": num_steps, "solutions": args.solutions}
        for bisect in (True, False):
            loc = RolloutLocalizer(
                BernoulliSampler(truth, args.alive_rate, args.seed),
                grade,
                num_rollouts=args.rollouts,
                bisect=bisect,
            )
            start = time.perf_counter()
            out = loc.locate(rows)
            name = "bisect" if bisect else "linear"
            line[f"{name}_rollouts_per_solution"] = loc.stats["rollouts"] / len(rows)
            line[f"{name}_exact"] = sum(r["first_wrong_step"] == truth[r["sample_id"]] for r in out) / len(
                rows
            )
            line[f"{name}_seconds"] = round(time.perf_counter() - start, 3)
        line["bound_R_ceil_log2_S"] = args.rollouts * RolloutLocalizer.max_probes(num_steps)
        line["every_step_R_times_S_minus_1"] = args.rollouts * (num_steps - 1)
        line["ratio_linear_over_bisect"] = round(
            line["linear_rollouts_per_solution"] / line["bisect_rollouts_per_solution"], 2
        )
        line["ratio_every_step_over_bisect"] = round(
            line["every_step_R_times_S_minus_1"] / line["bisect_rollouts_per_solution"], 2
        )
        results.append(line)
        print(json.dumps(line), flush=True)
    return results


def with_policy(args: argparse.Namespace, grade: Any) -> dict[str, Any]:
    from raystep import steps as steps_mod
    from raystep.engines.base import derive_seed
    from raystep.engines.hf import HFGenerator
    from raystep.stages.localizers.rollout import HFSampler
    from raystep.synth import policy as policy_mod
    from raystep.synth.verify import first_wrong_step
    from raystep.synth.world import WorldSpec, generate

    settings = policy_mod.PolicySettings()
    policy_dir = Path(args.policy)
    if args.train_policy:
        policy_dir, _ = policy_mod.ensure_policy(policy_dir, settings)
    gen = HFGenerator(str(policy_dir), batch_size=64)
    problems = generate(WorldSpec(), args.problems, seed=args.seed + 1, split="test")
    prompts = [policy_mod.prompt_for(p.question, settings.template) for p in problems]
    sampling = [
        {
            "temperature": 1.0,
            "top_p": 1.0,
            "max_new_tokens": 96,
            "seed": derive_seed(args.seed, i, s),
            "stop": [],
        }
        for i in range(len(problems))
        for s in range(args.samples)
    ]
    outs = gen.generate([p for p in prompts for _ in range(args.samples)], sampling)
    rows = []
    for idx, out in enumerate(outs):
        p = problems[idx // args.samples]
        response = steps_mod.STEP_PRIMER + out["generated_text"]
        if policy_mod.boxed_answer(response) == str(p.answer):
            continue
        step_list = list(steps_mod.split_steps(response).steps)
        truth = first_wrong_step(p.question, step_list)
        if not step_list or truth == 0:
            continue  # no wrong step to find (cut off before an error)
        rows.append(
            {
                "sample_id": f"w{idx}",
                "question": p.question,
                "answer": str(p.answer),
                "prompt": prompts[idx // args.samples],
                "response": response,
                "steps": step_list,
                "truth": truth,
            }
        )
    result: dict[str, Any] = {
        "problems": len(problems),
        "samples": len(outs),
        "wrong_with_a_wrong_step": len(rows),
    }
    sampling_one = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 96, "seed": args.seed}
    for bisect in (True, False):
        loc = RolloutLocalizer(
            HFSampler(gen), grade, num_rollouts=args.rollouts, bisect=bisect, sampling=sampling_one
        )
        start = time.perf_counter()
        out = loc.locate(rows)
        name = "bisect" if bisect else "linear"
        result[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
        result[f"{name}_rollouts_per_solution"] = round(loc.stats["rollouts"] / max(1, len(rows)), 2)
        result[f"{name}_agrees_with_verifier"] = round(
            sum(r["first_wrong_step"] == r["truth"] for r in out) / max(1, len(rows)), 3
        )
    if rows:
        result["ratio_rollouts_linear_over_bisect"] = round(
            result["linear_rollouts_per_solution"] / result["bisect_rollouts_per_solution"], 2
        )
        result["ratio_seconds_linear_over_bisect"] = round(
            result["linear_seconds"] / result["bisect_seconds"], 2
        )
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solutions", type=int, default=200, help="scripted solutions per length")
    parser.add_argument("--rollouts", type=int, default=8, help="R, continuations per probe")
    parser.add_argument("--alive-rate", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policy", help="a warmed-up arithmetic-world policy folder (part 2)")
    parser.add_argument(
        "--train-policy", action="store_true", help="train the policy into --policy if needed"
    )
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="samples per problem (part 2)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    grade, close = grading_fn(workers=1)
    try:
        report: dict[str, Any] = {"scripted": scripted(args, grade)}
        if args.policy:
            report["policy"] = with_policy(args, grade)
    finally:
        close()
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
