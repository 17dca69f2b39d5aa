"""Benchmark: what bounded concurrency buys the evaluator, measured side by side in one run.

The endpoint is the FAKE scripted server from ``tests/fake_answers_server.py`` (a real local HTTP
server with a fixed per-answer delay standing in for model latency), so the numbers measure the
client (requests, grading, appending, reporting), not a model. The same GSM8K problems are evaluated
with ``eval.concurrency=1`` and ``=N``; the script prints both wall times and their ratio, and checks
that both give the same accuracy.

    python benchmarks/bench_eval.py [--problems 64] [--delay 0.2] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fake_answers_server import FakeAnswersServer  # noqa: E402

from raystep.config import load_config  # noqa: E402
from raystep.datasets import default_data_dir, load_benchmark  # noqa: E402
from raystep.evaluate.run import evaluate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the fake endpoint takes per answer")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    problems = load_benchmark("gsm8k", default_data_dir(), limit=args.problems)
    answers = {
        p["question"]: f"Step 1: work.\nThe answer is \\boxed{{{p['answer'] if i % 3 else '-1'}}}."
        for i, p in enumerate(problems)
    }
    results = {}
    with FakeAnswersServer(answers, delay_s=args.delay) as server, tempfile.TemporaryDirectory() as tmp:
        for concurrency in (1, args.concurrency):
            config = load_config(
                None,
                [
                    f"eval.base_url={server.base_url}",
                    "eval.model=fake",
                    "eval.benchmarks=[gsm8k]",
                    f"eval.limit={args.problems}",
                    f"eval.concurrency={concurrency}",
                ],
            )
            start = time.perf_counter()
            out = evaluate(config, Path(tmp) / f"c{concurrency}", progress=False)
            seconds = time.perf_counter() - start
            results[concurrency] = {
                "seconds": round(seconds, 3),
                "accuracy": out["benchmarks"]["gsm8k"]["accuracy"],
            }
    one, many = results[1], results[args.concurrency]
    assert one["accuracy"] == many["accuracy"], results
    print(json.dumps({"problems": args.problems, "delay_s": args.delay, "results": results}, indent=2))
    print(
        f"concurrency 1: {one['seconds']:.2f} s, concurrency {args.concurrency}: {many['seconds']:.2f} s "
        f"-> {one['seconds'] / many['seconds']:.1f}x faster (same accuracy {100 * one['accuracy']:.1f}%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
