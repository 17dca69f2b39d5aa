"""Benchmark: the ``ray.serve.llm`` app (vLLM) under load, one client against many, side by side in one run.

A local Ray starts ``raystep serve``'s app once on loopback (vLLM's CPU build here, the GPU build on a
GPU machine). It then gets two bounded loads in turn: one client sending ``/v1/completions`` requests
(GSM8K questions, sampled, ``max_tokens`` fixed) back to back for D seconds, then N concurrent clients
doing the same. vLLM batches concurrent requests continuously, so the ratio of the two says what that
batching buys behind Serve. Then 16 concurrent small requests are timed alone and beside the biggest
request the serving limits allow (``serve.limits``), kept in flight back to back: the ratio says how much
one maximal client slows everyone else. The script prints requests/s, tokens/s, p50 and p99 latency, the
error and 5xx counts per load, the ratios, and fails (exit 1) on any 5xx. The model is a tiny Qwen2 built here (no
download) unless ``--model`` names a folder; start-up time is reported apart.

    python benchmarks/bench_serve.py [--clients 32] [--duration 30] [--max-tokens 32] [--model DIR]
                               [--plot bench_serve.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raystep.config import RunConfig  # noqa: E402
from raystep.datasets import default_data_dir, load_benchmark  # noqa: E402
from raystep.evaluate.report import percentile  # noqa: E402
from raystep.local_ray import ensure_ray  # noqa: E402
from raystep.tiny import build_tiny_model, gsm8k_texts  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(
    base_url: str, prompts: list[str], clients: int, duration_s: float, max_tokens: int
) -> dict[str, Any]:
    """``clients`` workers send requests back to back until ``duration_s`` has passed."""
    import httpx
    from tqdm import tqdm

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures: list[str] = []
    completion_tokens = 0
    deadline = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(seed: int, http: httpx.AsyncClient) -> None:
        nonlocal completion_tokens
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            body = {
                "model": "raystep",
                "prompt": rng.choice(prompts),
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "top_p": 0.95,
                "seed": rng.randrange(1 << 30),
            }
            start = time.perf_counter()
            try:
                resp = await http.post(f"{base_url}/completions", json=body)
            except httpx.HTTPError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            if resp.status_code == 200:
                latencies.append(time.perf_counter() - start)
                completion_tokens += resp.json()["usage"]["completion_tokens"]
            else:
                failures.append(f"{resp.status_code}: {resp.text[:200]}")

    async def ticker() -> None:
        with tqdm(total=round(duration_s), unit="s", leave=False) as bar:
            while time.perf_counter() < deadline:
                await asyncio.sleep(1)
                bar.update(1)
                bar.set_postfix(done=len(latencies))

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(ticker(), *(worker(i, http) for i in range(clients)))
    wall = time.perf_counter() - started
    return {
        "requests_ok": len(latencies),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "tokens_per_s": round(completion_tokens / wall, 1),
        "p50_s": round(percentile(latencies, 0.5), 4) if latencies else float("nan"),
        "p99_s": round(percentile(latencies, 0.99), 4) if latencies else float("nan"),
        "mean_s": round(statistics.fmean(latencies), 4) if latencies else float("nan"),
        "errors": len(failures),
        "status_5xx": sum(n for code, n in statuses.items() if code >= 500),
        "statuses": statuses,
        "first_failures": failures[:3],
    }


def beside_maximal(base_url: str, prompts: list[str], config: RunConfig, tokenizer: Any) -> dict[str, Any]:
    """The slowest of 16 concurrent small requests (8 tokens, greedy) alone (median of three rounds),
    then while the biggest request the limits allow (a prompt of half the context, ``max_choices``
    completions filling the rest, ``ignore_eos``) is kept in flight back to back."""
    import concurrent.futures
    import threading

    import httpx

    context = int(config.engine.max_model_len or 1024)
    prompt = tokenizer.decode(tokenizer(" ".join(prompts))["input_ids"][: context // 2])
    room = context - len(tokenizer(prompt)["input_ids"]) - 1
    maximal = {
        "model": "raystep", "prompt": prompt, "n": config.serve.limits.max_choices, "max_tokens": room,
        "temperature": 1.0, "ignore_eos": True,
    }  # fmt: skip

    def small(i: int) -> float:
        body = {"model": "raystep", "prompt": prompts[i], "max_tokens": 8, "temperature": 0}
        started = time.perf_counter()
        resp = httpx.post(f"{base_url}/completions", json=body, timeout=300)
        resp.raise_for_status()
        return time.perf_counter() - started

    def sixteen() -> float:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            return max(pool.map(small, range(16)))

    sixteen()  # warm
    unloaded = statistics.median(sixteen() for _ in range(3))
    done, spans = threading.Event(), []

    def keep_maximal_in_flight() -> None:
        while not done.is_set():
            began = time.perf_counter()
            httpx.post(f"{base_url}/completions", json=maximal, timeout=600).raise_for_status()
            spans.append(time.perf_counter() - began)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        big = pool.submit(keep_maximal_in_flight)
        time.sleep(0.5)
        loaded = statistics.median(sixteen() for _ in range(3))
        done.set()
        big.result()
    return {
        "unloaded_slowest_s": round(unloaded, 3),
        "beside_maximal_slowest_s": round(loaded, 3),
        "ratio": round(loaded / unloaded, 2),
        "maximal_requests": len(spans),
        "maximal_s": round(statistics.median(spans), 2),
        "maximal_choices": maximal["n"],
        "maximal_tokens": room,
    }


def run_loads(model: Path, args: argparse.Namespace, prompts: list[str]) -> dict[str, Any]:
    """Serve ``model`` once; measure one client, then ``args.clients`` concurrent clients."""
    from raystep.serve.run import shutdown, start

    config = RunConfig.model_validate(
        {
            "model": {"path": str(model)},
            "engine": {"max_model_len": 1024, "cpu_kv_cache_gib": 2},
            "serve": {
                "model": str(model),
                "port": free_port(),
                "max_ongoing_requests": max(args.clients, 8),
            },
        }
    )
    started = time.perf_counter()
    url = start(config)
    startup = time.perf_counter() - started
    try:
        asyncio.run(load(url, prompts, min(args.clients, 4), 2.0, args.max_tokens))  # warm-up, not counted
        results = {
            "1 client": asyncio.run(load(url, prompts, 1, args.duration, args.max_tokens)),
            f"{args.clients} clients": asyncio.run(
                load(url, prompts, args.clients, args.duration, args.max_tokens)
            ),
        }
        from transformers import AutoTokenizer

        fairness = beside_maximal(url, prompts, config, AutoTokenizer.from_pretrained(str(model)))
    finally:
        shutdown()
    return {"startup_s": round(startup, 1), "results": results, "beside_maximal": fairness}


def plot(results: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.bar(names, [results[n]["requests_per_s"] for n in names], color=["tab:blue", "tab:gray"])
    ax1.set_ylabel("requests / s")
    width = 0.35
    xs = range(len(names))
    ax2.bar([x - width / 2 for x in xs], [results[n]["p50_s"] for n in names], width, label="p50")
    ax2.bar([x + width / 2 for x in xs], [results[n]["p99_s"] for n in names], width, label="p99")
    ax2.set_xticks(list(xs), names)
    ax2.set_ylabel("latency (s)")
    ax2.legend()
    fig.suptitle("ray.serve.llm (vLLM): one client vs many")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per mode")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument("--model", help="a Hugging Face model folder (default: a tiny Qwen2 built here)")
    parser.add_argument("--hidden", type=int, default=256, help="tiny model hidden size")
    parser.add_argument("--layers", type=int, default=4, help="tiny model layers")
    parser.add_argument("--plot", help="write a PNG of the two modes")
    args = parser.parse_args()

    import ray

    data = default_data_dir()
    if data is None:
        print("benchmark data not found: set RAYSTEP_DATA", file=sys.stderr)
        return 2
    prompts = [p["question"] for p in load_benchmark("gsm8k", data, limit=256)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model = Path(args.model)
        else:
            model = build_tiny_model(
                Path(tmp) / "model",
                gsm8k_texts(data / "gsm8k" / "train.jsonl", limit=2000),
                hidden_size=args.hidden,
                num_layers=args.layers,
                intermediate_size=args.hidden * 2,
            )
        ensure_ray()
        try:
            measured = run_loads(model, args, prompts)
        finally:
            ray.shutdown()

    results = measured["results"]
    one, many = results.values()
    print(
        f"\nray.serve.llm up in {measured['startup_s']:.0f} s; {args.duration:.0f} s per load, "
        f"max_tokens={args.max_tokens}"
    )
    header = (
        f"{'load':<30} {'req/s':>8} {'tok/s':>8} {'p50 s':>8} {'p99 s':>8} {'ok':>6} {'errors':>7} {'5xx':>5}"
    )
    print(header)
    for name, r in results.items():
        print(
            f"{name:<30} {r['requests_per_s']:>8.2f} {r['tokens_per_s']:>8.1f} {r['p50_s']:>8.3f} "
            f"{r['p99_s']:>8.3f} {r['requests_ok']:>6} {r['errors']:>7} {r['status_5xx']:>5}"
        )
    ratio_rps = many["requests_per_s"] / max(one["requests_per_s"], 1e-9)
    ratio_tps = many["tokens_per_s"] / max(one["tokens_per_s"], 1e-9)
    print(f"{args.clients} clients / 1 client: {ratio_rps:.2f}x requests/s, {ratio_tps:.2f}x tokens/s")
    fair = measured["beside_maximal"]
    print(
        f"16 small requests beside a maximal one ({fair['maximal_choices']} x {fair['maximal_tokens']} tokens, "
        f"{fair['maximal_s']:.1f} s each): slowest {fair['beside_maximal_slowest_s']:.2f} s vs "
        f"{fair['unloaded_slowest_s']:.2f} s alone: {fair['ratio']:.2f}x (target <= 2x)"
    )
    print(json.dumps({**measured, "ratio_requests_per_s": round(ratio_rps, 2)}, default=str))
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    bad = {name: r["status_5xx"] for name, r in results.items() if r["status_5xx"]}
    if bad:
        print(
            f"FAIL: 5xx responses under load: {bad}; first failures: {many['first_failures']}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
