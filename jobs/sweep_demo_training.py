"""Sweep Step-DPO training settings on a finished demo run's policy and pairs, one model per setting.

This is how the README's training-rate table for the arithmetic world was measured: each setting
trains from the demo's warm-up policy on the demo's own pairs (Ray Train + DeepSpeed on CPU, as the
demo does) and is scored greedily on the same held-out ``test`` problems, so the rows differ only in
the training settings. Each setting is a ``;``-separated group of ``--set`` items. For each model it
prints greedy accuracy, the share of well-formed step solutions, and which operation the exact verifier
finds wrong first in each wrong answer. Scoring is in-process greedy decoding with the demo's prompt
(the demo itself scores through Serve and the ``openai`` client; both give 59.0% before training).

    raystep demo                                   # makes runs/demo/{policy,pairs}
    python jobs/sweep_demo_training.py --run runs/demo \
        "train.learning_rate=5e-5;train.beta=0.2" "train.learning_rate=5e-4;train.beta=0.2"
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from pathlib import Path

from raystep.config import load_config
from raystep.experiments.demo import demo_overrides, ensure_ray, test_problems
from raystep.steps import split_steps
from raystep.synth.policy import evaluate_policy
from raystep.synth.verify import first_wrong_step, parse_question
from raystep.train import run as train_run


def first_error_ops(rows: list[dict], score: dict) -> dict[str, int]:
    """For each wrong answer, the operation of its first wrong step ("answer" when every step holds)."""
    ops: Counter[str] = Counter()
    for row, response, correct in zip(rows, score["responses"], score["correct"], strict=True):
        if correct:
            continue
        k = first_wrong_step(row["question"], list(split_steps(response).steps))
        events = parse_question(row["question"])[1]
        ops[events[k - 1][0] if 1 <= k <= len(events) else "answer"] += 1
    return dict(ops.most_common())


def report(label: str, rows: list[dict], score: dict) -> dict:
    line = {"accuracy": score["accuracy"], "well_formed": score["well_formed"]}
    line["first_error_ops"] = first_error_ops(rows, score)
    print(f"{label}: {json.dumps(line)}", flush=True)
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", help='";"-separated --set items, one group per model')
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished `raystep demo` run")
    parser.add_argument("--problems", type=int, default=300, help="held-out test problems")
    args = parser.parse_args()

    run = args.run.resolve()
    for needed in (run / "policy" / "config.json", run / "pairs" / "pairs.jsonl"):
        if not needed.exists():
            parser.error(f"{needed} is missing: run `raystep demo` first (or point --run at its folder)")
    ensure_ray()
    base = load_config(None, [*demo_overrides("full", 8390), f"eval.limit={args.problems}"])
    rows = test_problems(base)
    results = {"before": report("before training", rows, evaluate_policy(run / "policy", rows))}
    for setting in args.settings:
        items = [s for s in setting.split(";") if s]
        tag = hashlib.sha1(setting.encode()).hexdigest()[:10]
        cfg = load_config(
            None,
            [
                *demo_overrides("full", 8390),
                f"storage.root={run.parent / 'sweeps'}",
                f"name=sweep-{tag}",
                f"model.path={run / 'policy'}",
                f"train.pairs={run / 'pairs' / 'pairs.jsonl'}",
                *items,
            ],
        )
        out = train_run.run(cfg)
        results[setting] = report(setting, rows, evaluate_policy(out["model_dir"], rows))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
