"""Benchmark: the generation engines (vLLM, hf) through Ray Data and called directly, side by side in one run.

Same model, same prompts (GSM8K questions in the step prompt), same per-row seeds. For each engine it
times a direct call in this process (``vllm.LLM.generate``; ``HFGenerator.generate``) and the engine
through Ray Data as the stages run it (``raystep.engines.build_generator``: ``ray.data.llm``'s vLLM
processor; the hf actor pool), and prints rows/s and generated tokens/s with the engine's start-up
(model load, engine build, actor start) reported apart from steady-state throughput. Directly, steady
state is the generate call alone. Through Ray Data, where start-up and generation overlap, each output
row's arrival is timed: start-up is the time to the first batch of results, steady state the later rows
over the later time. Greedy texts of the two paths of one engine are compared, and the ratios printed:
Ray Data / direct per engine, and vLLM / hf.

    python benchmarks/bench_generation.py                       # a tiny model built on the spot
    python benchmarks/bench_generation.py --prompts 256 --max-new-tokens 64 --engines vllm hf
    python benchmarks/bench_generation.py --model Qwen/Qwen2-0.5B-Instruct --concurrency 2

Each Ray Data replica gets one CPU and one torch thread; ``--threads`` sets the direct hf side's torch
threads (1, the default, is the like-for-like comparison of one replica).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raystep import steps  # noqa: E402
from raystep.config import RunConfig, load_config  # noqa: E402
from raystep.engines.base import fan_out, normalize_sampling  # noqa: E402


def gsm8k_questions(count: int) -> list[str]:
    from raystep.datasets import default_data_dir

    folder = default_data_dir()
    if folder is None or not (folder / "gsm8k" / "test.jsonl").exists():
        return [
            f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?" for i in range(count)
        ]
    lines = (folder / "gsm8k" / "test.jsonl").read_text().splitlines()
    return [json.loads(line)["question"] for line in lines[:count]]


def build_model() -> str:
    from raystep.datasets import default_data_dir
    from raystep.tiny import build_tiny_model, gsm8k_texts

    folder = default_data_dir()
    out = Path(tempfile.mkdtemp(prefix="raystep-bench-model-"))
    texts = gsm8k_texts(folder / "gsm8k" / "train.jsonl", limit=2000) if folder else ["1 + 1 = 2"] * 100
    return str(build_tiny_model(out, texts))


def make_rows(config: RunConfig, prompts: int, n: int) -> list[dict[str, Any]]:
    from raystep.engines import sampling_defaults

    base = normalize_sampling(sampling_defaults(config))
    rows = []
    for i, q in enumerate(gsm8k_questions(prompts)):
        prompt = steps.build_prompt(config.model.template, q, steps.STEP_PRIMER)
        rows += fan_out({"id": f"q{i}", "prompt": prompt}, n, base)
    return rows


def direct_hf(config: RunConfig, rows: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    import torch

    from raystep.engines.hf import HFGenerator

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    gen = HFGenerator(config.model.path, batch_size=config.sampling.batch_size, dtype=config.model.dtype)
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = gen.generate([r["prompt"] for r in rows], [r["sampling"] for r in rows])
    return summarize(out, startup, time.perf_counter() - t1)


def direct_vllm(config: RunConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    from raystep.engine_args import engine_env, vllm_engine_kwargs
    from raystep.engines.vllm import to_vllm_sampling

    for name, value in engine_env(config, "cpu").items():
        os.environ.setdefault(name, value)
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model=config.model.path, **vllm_engine_kwargs(config, "cpu"))
    startup = time.perf_counter() - t0
    params = [SamplingParams(**to_vllm_sampling(r["sampling"])) for r in rows]
    t1 = time.perf_counter()
    outputs = llm.generate([r["prompt"] for r in rows], params, use_tqdm=False)
    elapsed = time.perf_counter() - t1
    out = [
        {"generated_text": o.outputs[0].text, "num_generated_tokens": len(o.outputs[0].token_ids)}
        for o in outputs
    ]
    del llm
    return summarize(out, startup, elapsed)


def through_ray_data(config: RunConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The engine as the stages run it (``raystep.engines.build_generator``), each output row's arrival
    timed. Start-up is the time to the first batch of results (engine load, actor start, the first
    batch's generation); steady state is every later row over the time after that first batch."""
    import ray

    from raystep.engines import build_generator

    t0 = time.perf_counter()
    arrivals: list[float] = []
    out: list[dict[str, Any]] = []
    for row in build_generator(config)(ray.data.from_items(rows)).iter_rows():
        arrivals.append(time.perf_counter() - t0)
        out.append(row)
    first = min(config.sampling.batch_size, len(out) - 1)  # the rows of the first batch
    steady = max(arrivals[-1] - arrivals[first - 1], 1e-9)
    by_key = {(r["id"], r["sample_index"]): r for r in out}
    ordered = [by_key[(r["id"], r["sample_index"])] for r in rows]
    tokens = sum(int(r["num_generated_tokens"]) for r in out[first:])
    return {
        "startup_seconds": round(arrivals[first - 1], 2),
        "steady_seconds": round(steady, 2),
        "rows_per_s_steady": round((len(out) - first) / steady, 2),
        "tokens_per_s_steady": round(tokens / steady, 1),
        "total_seconds": round(arrivals[-1], 2),
        "texts": [o["generated_text"] for o in ordered],
    }


def summarize(
    out: list[dict[str, Any]], startup: float, elapsed: float, count: int | None = None
) -> dict[str, Any]:
    """Rows/s and tokens/s over ``elapsed`` (steady state), start-up apart; the texts for comparisons."""
    rows = len(out) if count is None else count
    tokens = sum(int(o["num_generated_tokens"]) for o in out)
    share = rows / max(len(out), 1)
    return {
        "startup_seconds": round(startup, 2),
        "steady_seconds": round(elapsed, 2),
        "rows_per_s_steady": round(rows / elapsed, 2) if elapsed > 0 else None,
        "tokens_per_s_steady": round(tokens * share / elapsed, 1) if elapsed > 0 else None,
        "texts": [o["generated_text"] for o in out],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder or hub name (default: build a tiny Qwen2 here)")
    parser.add_argument("--engines", nargs="+", default=["vllm", "hf"], choices=["vllm", "hf"])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--n", type=int, default=1, help="samples per prompt (fanned-out rows)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=1, help="Ray Data engine replicas")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the direct hf side")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy, so the paths can be compared"
    )
    args = parser.parse_args()

    import ray

    from raystep.console import quiet_libraries
    from raystep.local_ray import ensure_ray

    quiet_libraries()
    model = args.model or build_model()
    results: dict[str, dict[str, Any]] = {}
    for engine in args.engines:
        config = load_config(
            None,
            [
                f"model.path={model}",
                "model.template=qwen2-boxed",
                "model.dtype=float32",
                f"sampling.engine={engine}",
                "engine.device=cpu",
                "engine.max_model_len=1024",
                "engine.cpu_kv_cache_gib=1",
                f"sampling.max_new_tokens={args.max_new_tokens}",
                f"sampling.batch_size={args.batch_size}",
                f"sampling.concurrency={args.concurrency}",
                f"sampling.temperature={args.temperature}",
            ],
        )
        rows = make_rows(config, args.prompts, args.n)
        direct = direct_vllm(config, rows) if engine == "vllm" else direct_hf(config, rows, args.threads)
        ensure_ray()
        try:
            via_ray = through_ray_data(config, rows)
        finally:
            ray.shutdown()
        same = sum(a == b for a, b in zip(direct.pop("texts"), via_ray.pop("texts"), strict=True))
        results[engine] = {"direct": direct, "ray_data": via_ray, "same_text_rows": f"{same}/{len(rows)}"}

    print(
        f"\n{args.prompts} prompts x {args.n}, max_new_tokens={args.max_new_tokens}, batch {args.batch_size}"
    )
    print(f"{'engine / path':<22} {'start-up s':>10} {'rows/s':>9} {'tokens/s':>10}   (steady state)")
    for engine, r in results.items():
        for path in ("direct", "ray_data"):
            m = r[path]
            print(
                f"{engine + ' ' + path:<22} {m['startup_seconds']:>10.1f} {m['rows_per_s_steady']:>9.2f} "
                f"{m['tokens_per_s_steady']:>10.1f}"
            )
    for engine, r in results.items():
        ratio = r["ray_data"]["tokens_per_s_steady"] / r["direct"]["tokens_per_s_steady"]
        r["ratio_ray_data_over_direct"] = round(ratio, 3)
        print(
            f"{engine}: Ray Data / direct = {ratio:.2f}x tokens/s (steady); same text {r['same_text_rows']}"
        )
    if {"vllm", "hf"} <= set(results):
        for path in ("direct", "ray_data"):
            ratio = results["vllm"][path]["tokens_per_s_steady"] / results["hf"][path]["tokens_per_s_steady"]
            print(f"vllm / hf ({path}) = {ratio:.2f}x tokens/s (steady)")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
