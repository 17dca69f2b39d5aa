"""The demo's rectify workload on vLLM's engine called directly: how much of the stage is the engine.

The demo's rectify asks its policy for 8 continuations of up to 80 tokens for each of its 448 wrong
samples (3,584 rows). This script sends the same shape of work (448 world problems as prompts, ``n=8``,
temperature 0.8, top-p 0.95, 80 tokens) to ``vllm.LLM.generate`` in one process, once per
``max_num_seqs`` given, and prints the seconds and tokens/s of each; compare with the stage's own time
in the demo's report (``timings (s): ... rectify``).

    python benchmarks/bench_rectify_engine.py --policy runs/demo/policy --max-num-seqs 128 256

The policy folder is any warmed-up world policy (``raystep demo`` leaves one in ``runs/demo/policy``).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def measure(policy: str, max_num_seqs: int, prompts: list[str]) -> dict[str, float]:
    """One engine, one warm-up call, then the whole workload timed."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        policy,
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max(2048, 16 * max_num_seqs),
        enable_prefix_caching=True,
    )
    # no seed: vLLM's CPU build refuses n > 1 with a seed ("CPU Generator does not use offset")
    params = SamplingParams(n=8, temperature=0.8, top_p=0.95, max_tokens=80)
    llm.generate(prompts[:16], params, use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"seconds": round(seconds, 1), "tokens": tokens, "tokens_per_s": round(tokens / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="runs/demo/policy", help="a warmed-up world policy folder")
    parser.add_argument("--max-num-seqs", type=int, nargs="+", default=[128], help="vLLM max_num_seqs")
    parser.add_argument("--prompts", type=int, default=448, help="wrong samples to continue (the demo: 448)")
    args = parser.parse_args()

    from raystep.config import load_config
    from raystep.synth.policy import prompt_for
    from raystep.synth.world import load_problems

    data = load_config(None, ["data.source=synth", "data.split=train", f"data.limit={args.prompts}"]).data
    prompts = [prompt_for(p["question"], "plain") for p in load_problems(data)][: args.prompts]
    for seqs in args.max_num_seqs:
        result = measure(args.policy, seqs, prompts)
        print(
            f"max_num_seqs={seqs}: {len(prompts)} prompts x 8 continuations in {result['seconds']} s, "
            f"{result['tokens']} tokens, {result['tokens_per_s']} tokens/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
