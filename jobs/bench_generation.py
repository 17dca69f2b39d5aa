"""Benchmark: the ``hf`` engine through Ray Data against the same model called directly in one process.

Same model, same prompts (GSM8K questions in the step prompt), same per-row seeds, so both sides
generate the same tokens (checked). Prints rows/s and generated tokens/s of each side and their
ratio: the Ray Data pipeline's overhead (or, with ``--concurrency`` > 1 on enough cores, its gain).

    python jobs/bench_generation.py                       # a tiny model built on the spot
    python jobs/bench_generation.py --model Qwen/Qwen2-0.5B-Instruct --prompts 256 --concurrency 4

Both sides include loading the model (a Ray Data actor loads it when the pipeline starts); the direct
side's load and generation times are also printed apart, and the Ray side's time to its first batch
(actor start + model load) and its rate after that. ``--threads`` sets torch threads for the
direct side; each Ray actor gets one CPU (Ray sets its OMP threads to 1), so the default of 1 is the
like-for-like comparison of one replica.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raystep import steps  # noqa: E402
from raystep.config import load_config  # noqa: E402
from raystep.engines import build_generator, sampling_defaults  # noqa: E402
from raystep.engines.base import fan_out, normalize_sampling  # noqa: E402


def gsm8k_questions(data_dir: Path | None, count: int) -> list[str]:
    from raystep.datasets import default_data_dir

    folder = data_dir or default_data_dir()
    if folder is None or not (folder / "gsm8k" / "test.jsonl").exists():
        return [
            f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" for i in range(count)
        ]
    lines = (folder / "gsm8k" / "test.jsonl").read_text().splitlines()
    return [json.loads(line)["question"] for line in lines[:count]]


def build_model(data_dir: Path | None) -> str:
    from raystep.datasets import default_data_dir
    from raystep.tiny import build_tiny_model, gsm8k_texts

    folder = data_dir or default_data_dir()
    out = Path(tempfile.mkdtemp(prefix="raystep-bench-model-"))
    texts = gsm8k_texts(folder / "gsm8k" / "train.jsonl", limit=2000) if folder else ["1 + 1 = 2"] * 100
    return str(build_tiny_model(out, texts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder or hub name (default: build a tiny Qwen2 here)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=1, help="samples per prompt (fanned-out rows)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=1, help="Ray Data engine replicas")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the direct side")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    args = parser.parse_args()

    import ray
    import torch

    model = args.model or build_model(args.data_dir)
    config = load_config(
        None,
        [
            f"model.path={model}",
            "model.template=qwen2-boxed",
            f"sampling.max_new_tokens={args.max_new_tokens}",
            f"sampling.batch_size={args.batch_size}",
            f"sampling.concurrency={args.concurrency}",
            "sampling.temperature=0.8",
        ],
    )
    base = normalize_sampling(sampling_defaults(config))
    rows = []
    for i, q in enumerate(gsm8k_questions(args.data_dir, args.prompts)):
        prompt = steps.build_prompt(config.model.template, q, steps.STEP_PRIMER)
        rows += fan_out({"id": f"q{i}", "prompt": prompt}, args.n, base)

    # direct: one process, the same generator class the Ray actors use
    from raystep.engines.hf import HFGenerator

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    direct_gen = HFGenerator(model, batch_size=args.batch_size)
    t_load = time.perf_counter() - t0
    direct = direct_gen.generate([r["prompt"] for r in rows], [r["sampling"] for r in rows])
    t_direct = time.perf_counter() - t0
    del direct_gen

    # Ray Data: from_items -> actor pool -> rows back in the driver
    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    out: list[dict] = []
    t_first = None
    for batch in build_generator(config)(ray.data.from_items(rows)).iter_batches(
        batch_format="pyarrow", batch_size=None
    ):
        if t_first is None:
            t_first, first_rows = time.perf_counter() - t0, batch.num_rows
        out += batch.to_pylist()
    t_ray = time.perf_counter() - t0
    ray.shutdown()

    by_key = {(r["id"], r["sample_index"]): r for r in out}
    same = all(
        by_key[(r["id"], r["sample_index"])]["generated_text"] == d["generated_text"]
        for r, d in zip(rows, direct, strict=True)
    )
    tokens_direct = sum(d["num_generated_tokens"] for d in direct)
    tokens_ray = sum(r["num_generated_tokens"] for r in out)
    result = {
        "rows": len(rows),
        "direct": {
            "seconds": round(t_direct, 3),
            "load_seconds": round(t_load, 3),
            "generate_seconds": round(t_direct - t_load, 3),
            "rows_per_s": round(len(rows) / t_direct, 3),
            "tokens_per_s": round(tokens_direct / t_direct, 1),
        },
        "ray_data": {
            "seconds": round(t_ray, 3),
            "replicas": args.concurrency,
            "rows_per_s": round(len(out) / t_ray, 3),
            "tokens_per_s": round(tokens_ray / t_ray, 1),
            "first_batch_seconds": round(t_first or 0.0, 3),
            "after_first_batch_rows_per_s": (
                round((len(out) - first_rows) / (t_ray - t_first), 3) if t_first and t_ray > t_first else None
            ),
        },
        "ratio_rows_per_s_ray_over_direct": round((len(out) / t_ray) / (len(rows) / t_direct), 3),
        "ratio_tokens_per_s_ray_over_direct": round((tokens_ray / t_ray) / (tokens_direct / t_direct), 3),
        "same_outputs": same,
    }
    print(json.dumps(result, indent=2))
    print(
        f"hf engine: Ray Data {result['ray_data']['rows_per_s']} rows/s, {result['ray_data']['tokens_per_s']} tok/s"
        f" vs direct {result['direct']['rows_per_s']} rows/s, {result['direct']['tokens_per_s']} tok/s"
        f" -> ratio {result['ratio_rows_per_s_ray_over_direct']} (Ray Data / direct)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
