"""What serving the next model of an experiment costs: a new ``ray.serve.llm`` engine vs loading it in place.

The demo, ``raystep sweep`` and ``raystep ablate`` evaluate a series of checkpoints of one model (the
warm-up policy, then each trained arm). Until ``raystep.serve.swap``, each was served by shutting the app
down and starting a new engine; now ``raystep.serve.run.Server`` loads each into the running engine.

This script builds the tiny Qwen2 and ``--models`` perturbed copies of it, starts a local Ray as a raystep
run does and serves them in turn, both ways, in one run:

- ``restart``: ``serve.run.shutdown()`` then ``serve.run.start()`` with the next checkpoint;
- ``swap``: ``Server.serve()`` of the next checkpoint into the engine started for the first.

Each next model answers one greedy completion before its time stops (it is being served). It prints the
median seconds per next model each way and their ratio; the first start is reported apart.

    python benchmarks/bench_swap.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def checkpoints(root: Path, n: int) -> list[str]:
    """The tiny model and ``n`` copies with every weight perturbed (same shapes and tokenizer)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from raystep.datasets import default_data_dir
    from raystep.tiny import build_tiny_model, gsm8k_texts

    data = default_data_dir() or DATA
    first = build_tiny_model(root / "m0", gsm8k_texts(data / "gsm8k" / "train.jsonl", limit=2000))
    out = [str(first)]
    for i in range(1, n + 1):
        folder = root / f"m{i}"
        shutil.copytree(first, folder)
        model = AutoModelForCausalLM.from_pretrained(first, dtype=torch.float32)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(param.std() * torch.randn(param.shape, generator=gen))
        model.save_pretrained(folder)
        out.append(str(folder))
    return out


def answer(url: str) -> str:
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    return (
        client.completions.create(model="raystep", prompt="Tom has 3 apples", max_tokens=8, temperature=0)
        .choices[0]
        .text
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=3, help="checkpoints served after the first, each way")
    parser.add_argument("--port", type=int, default=8431)
    args = parser.parse_args()

    from raystep.config import load_config
    from raystep.local_ray import ensure_ray
    from raystep.serve import run as serve_run

    with tempfile.TemporaryDirectory() as tmp:
        models = checkpoints(Path(tmp), args.models)
        config = load_config(
            None, ["engine.max_model_len=256", "engine.cpu_kv_cache_gib=1", f"serve.port={args.port}"]
        )
        ensure_ray()
        restart: list[float] = []
        fresh: list[str] = []  # each model's answer from an engine started on it
        for i, model in enumerate(models):
            start = time.perf_counter()
            if i:
                serve_run.shutdown()
            config.serve.model = model
            fresh.append(answer(serve_run.start(config)))
            restart.append(time.perf_counter() - start)
        serve_run.shutdown()
        swap: list[float] = []
        swapped: list[str] = []
        with serve_run.Server(config) as server:
            for model in models:
                start = time.perf_counter()
                swapped.append(answer(server.serve(model)))
                swap.append(time.perf_counter() - start)
        first, restart, swap = swap[0], restart[1:], swap[1:]
    print(f"tiny Qwen2, {args.models} checkpoints served after the first, each answering one completion")
    print(f"  first engine start (with a completion): {first:6.2f} s")
    print(
        f"  restart: median {statistics.median(restart):6.2f} s per next model ({', '.join(f'{s:.1f}' for s in restart)})"
    )
    print(
        f"  swap:    median {statistics.median(swap):6.2f} s per next model ({', '.join(f'{s:.2f}' for s in swap)})"
    )
    print(
        f"  each model answers the same text both ways: {swapped == fresh} ({len(set(fresh))} distinct answers)"
    )
    print(
        f"loading in place is {statistics.median(restart) / statistics.median(swap):.0f}x faster than a new engine"
    )


if __name__ == "__main__":
    main()
