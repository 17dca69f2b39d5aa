"""Sweep Step-DPO training settings on a finished demo run's policy and pairs, one model per setting.

This is how the README's training-rate table for the arithmetic world was measured: each setting
trains from the demo's warm-up policy on the demo's own pairs (Ray Train + DeepSpeed on CPU, as the
demo does) and is scored greedily on the same held-out ``test`` problems, so the rows differ only in
the training settings. Each setting is a ``;``-separated group of ``--set`` items.

    raystep demo                                   # makes runs/demo/{policy,pairs}
    python jobs/sweep_demo_training.py --run runs/demo \
        "train.learning_rate=5e-5;train.beta=0.2" "train.learning_rate=5e-4;train.beta=0.2"
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from raystep.config import load_config
from raystep.demo import demo_overrides, ensure_ray
from raystep.synth.policy import evaluate_policy
from raystep.synth.world import WorldSpec, generate, problem_row
from raystep.train import run as train_run


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
    rows = [
        problem_row(p, "test", i, 0) for i, p in enumerate(generate(WorldSpec(), args.problems, 0, "test"))
    ]
    before = evaluate_policy(run / "policy", rows)
    print(f"before training: accuracy {before['accuracy']:.3f} on {len(rows)} problems", flush=True)
    results = []
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
        score = evaluate_policy(out["model_dir"], rows)
        results.append(
            {"settings": items, "accuracy": score["accuracy"], "well_formed": score["well_formed"]}
        )
        print(
            f"{setting}: accuracy {score['accuracy']:.3f} well-formed {score['well_formed']:.3f}", flush=True
        )
    print(json.dumps({"before": before["accuracy"], "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
