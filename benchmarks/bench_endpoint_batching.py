"""The demo's rectify workload sent to the served policy one prompt per request, or many per request.

Rectify asks the demo's policy for 8 continuations of up to 80 tokens for each of 448 wrong samples:
3,584 rows. This script sends work of the same shape (448 world problems as prompts, 8 continuations
each, 80 tokens, temperature 0.8, top-p 0.95), as ``bench_rectify_engine.py`` does for the engine alone.
Through ``ray.serve.llm`` each request crosses Serve's proxy, the OpenAI ingress and the engine's server, three processes on a 2-core machine. This script serves the policy once, the way the
demo does, then sends the same rows, side by side in one run:

- one row per request, each with its own seed (the endpoint engine before this benchmark);
- the 8 continuations of one prefix as one request with ``n=8`` and the first row's seed (vLLM seeds
  choice j with ``seed + j``, so the rows' seeds are the same in both shapes);

each with 64 rows in flight (the demo's two request actors x 32), and the second also with 512.

It prints the seconds, requests and generated tokens/s of each, and their ratio, from the driver with
raystep's own OpenAI client (no Ray Data in between: this isolates the serving path).

    python benchmarks/bench_endpoint_batching.py --policy runs/demo/policy

The policy folder is any warmed-up world policy (``raystep demo`` leaves one in ``runs/demo/policy``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any


async def send(url: str, model: str, prompts: list[str], n: int, per_request: int, in_flight: int) -> dict:
    """Every prompt's ``n`` continuations, ``per_request`` of them to a request (vLLM seeds choice j of a
    request with ``seed + j``, so both shapes draw from the same seeds), ``in_flight`` rows at a time."""
    from raystep.endpoint import EndpointClient
    from raystep.engines.base import derive_seed

    client = EndpointClient(url, model, concurrency=max(1, in_flight // per_request), max_retries=2)
    base: dict[str, Any] = {"max_tokens": 80, "temperature": 0.8, "top_p": 0.95, "stop": []}
    requests = [
        {**base, "prompt": p, "seed": derive_seed(0, i, "rectify") + j, "n": per_request}
        for i, p in enumerate(prompts)
        for j in range(0, n, per_request)
    ]
    start = time.perf_counter()
    try:
        results = await asyncio.gather(*(client.complete({"prompt": r["prompt"]}, r) for r in requests))
    finally:
        await client.close()
    seconds = time.perf_counter() - start
    failed = [r["error"] for r in results if r.get("error")]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed: {failed[0]}")
    tokens = sum(int(r["completion_tokens"] or 0) for r in results)
    return {"seconds": seconds, "requests": len(requests), "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="runs/demo/policy", help="a warmed-up world policy folder")
    parser.add_argument("--prompts", type=int, default=448, help="wrong samples to continue (the demo: 448)")
    parser.add_argument("--n", type=int, default=8, help="continuations per sample (the demo: 8)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    from raystep.config import load_config
    from raystep.console import quiet_libraries
    from raystep.experiments.demo import demo_overrides
    from raystep.serve import run as serve_run
    from raystep.synth.policy import prompt_for
    from raystep.synth.world import load_problems

    quiet_libraries()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    config = load_config(None, [*demo_overrides("full", args.port), f"serve.model={args.policy}"])
    data = load_config(None, ["data.source=synth", "data.split=train", f"data.limit={args.prompts}"]).data
    prompts = [prompt_for(p["question"], "plain") for p in load_problems(data)][: args.prompts]

    started = time.perf_counter()
    url = serve_run.start(config)
    print(f"served the policy in {time.perf_counter() - started:.1f} s", flush=True)
    model = config.serve.model_id
    try:
        asyncio.run(send(url, model, prompts[:16], 1, 1, 16))  # warm the path
        results = {
            # the demo's endpoint engine before: 2 request actors x 32 in flight, one row per request
            "1 row/request, 64 in flight": asyncio.run(send(url, model, prompts, args.n, 1, 64)),
            f"{args.n} rows/request, 64 in flight": asyncio.run(
                send(url, model, prompts, args.n, args.n, 64)
            ),
            f"{args.n} rows/request, 512 in flight": asyncio.run(
                send(url, model, prompts, args.n, args.n, 512)
            ),
        }
    finally:
        serve_run.shutdown()
    rows = len(prompts) * args.n
    first = next(iter(results.values()))
    for name, r in results.items():
        print(
            f"{name:30s}: {rows} rows in {r['requests']:5d} requests, {r['seconds']:6.1f} s, "
            f"{r['tokens'] / r['seconds']:6.0f} generated tokens/s, {first['seconds'] / r['seconds']:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
