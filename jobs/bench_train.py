"""Benchmark one Step-DPO training step, side by side on the same pairs, without Ray.

    python jobs/bench_train.py                                   # CPU, a small Qwen2 (4 layers)
    python jobs/bench_train.py --device cuda --model-size 1.5b   # GPU: ~1.5B Qwen2, random weights, bf16

Three configurations run the same forward + backward + AdamW step on the same Step-DPO-shaped pairs
(GSM8K worked answers: a prefix of several steps, one step as chosen, a perturbed copy as rejected):

- ``shared + precomputed``: raystep's default (one sequence per pair, reference log-probs stored);
- ``two-seq + precomputed``: the usual DPO layout, prompt processed twice;
- ``shared + live``: a frozen reference model run at every step.

It prints tokens processed and wall time per pair for each, the prefix-sharing and reference ratios, and
on GPUs the tokens/s and MFU (6 N T over the device's bf16 peak). The one-off reference pass is timed
too, so the amortised ratio over ``--epochs`` epochs is printed as well.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from raystep.train.metrics import mfu  # noqa: E402
from raystep.train.pairs import build_batch, tokenize_pairs  # noqa: E402
from raystep.train.reference import attach, score_pairs  # noqa: E402
from raystep.train.sample_pairs import gsm8k_pairs  # noqa: E402
from raystep.train.step import StepSettings, dpo_step  # noqa: E402

SIZES: dict[str, dict[str, int]] = {
    # hidden, layers, heads, kv heads, intermediate, vocab (None: the tokenizer's)
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    ),
    "small": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=1024,
    ),
    "0.5b": dict(
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
    ),
    "1.5b": dict(
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
        vocab_size=151936,
    ),
}
"""``0.5b`` / ``1.5b`` follow Qwen2-0.5B / Qwen2-1.5B's shapes (vocabulary included)."""


def build_model(size: str, tokenizer, dtype: torch.dtype, device: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = dict(SIZES[size])
    vocab = shape.pop("vocab_size", len(tokenizer))
    config = Qwen2Config(
        vocab_size=vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.config.use_cache = False
    return model


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Runner:
    """One configuration: its layout, reference mode and optimizer; ``step`` times one optimizer step."""

    def __init__(self, model, ref_model, layout: str, device: str):
        self.model, self.ref_model, self.layout, self.device = model, ref_model, layout, device
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-7)
        self.times: list[float] = []
        self.pairs = self.tokens = self.ref_tokens = 0

    def step(self, chunk, pack_tokens: int, record: bool) -> None:
        batch = build_batch(chunk, self.layout, pack_tokens).to(self.device)
        sync(self.device)
        t0 = time.perf_counter()
        out = dpo_step(self.model, batch, StepSettings(beta=0.5), self.ref_model)
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        if not record:
            return
        self.times.append((time.perf_counter() - t0) / batch.num_pairs)
        self.pairs += batch.num_pairs
        self.tokens += batch.real_tokens
        self.ref_tokens += batch.real_tokens if self.ref_model is not None else 0

    def result(self) -> dict:
        per_pair = statistics.median(self.times)
        return {
            "seconds_per_pair": per_pair,
            "tokens_per_pair": (self.tokens + self.ref_tokens) / self.pairs,
            "train_tokens_per_s": self.tokens / self.pairs / per_pair,
            "seconds": per_pair * self.pairs,
            "train_tokens": self.tokens,
            "ref_tokens": self.ref_tokens,
        }


def run_interleaved(runners: dict[str, Runner], pairs, args) -> dict[str, dict]:
    """Round-robin over the configurations (one warm-up round), so load drift hits them all alike;
    the median time per pair of each is reported."""
    bp = args.batch_pairs
    batches = [pairs[i : i + bp] for i in range(0, len(pairs) - bp + 1, bp)]
    for i in range(args.steps + 1):
        for runner in runners.values():
            runner.step(batches[i % len(batches)], args.pack_tokens, record=i > 0)
    return {name: r.result() for name, r in runners.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model-size", default="small", choices=list(SIZES))
    parser.add_argument("--pairs", type=int, default=64, help="pairs made from GSM8K train")
    parser.add_argument("--batch-pairs", type=int, default=8, help="pairs per training step (micro-batch)")
    parser.add_argument(
        "--steps", type=int, default=6, help="timed steps per configuration (after one warm-up)"
    )
    parser.add_argument(
        "--pack-tokens",
        type=int,
        default=512,
        help="row budget of the shared layout (attention under a dense mask is quadratic in the row length)",
    )
    parser.add_argument("--epochs", type=int, default=8, help="for the amortised reference ratio (paper: 8)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (0: torch's default); one thread keeps timings stable on a shared machine",
    )
    parser.add_argument("--template", default="qwen2-boxed")
    parser.add_argument("--data", default=None, help="GSM8K train.jsonl (default: the shared data folder)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    from raystep.tiny import build_tokenizer, gsm8k_texts

    if args.data:
        data = Path(args.data)
    else:
        from raystep.datasets import default_data_dir

        base = default_data_dir()
        if base is None:
            parser.error("no data folder found: pass --data path/to/gsm8k/train.jsonl or set RAYSTEP_DATA")
        data = base / "gsm8k" / "train.jsonl"
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(gsm8k_texts(data, limit=2000), tmp, vocab_size=1024)
    rows = gsm8k_pairs(data, args.pairs)
    pairs = tokenize_pairs(rows, tokenizer, template=args.template, max_length=1024, max_prompt_length=512)
    prompt = sum(len(p.prompt_ids) for p in pairs) / len(pairs)
    step = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs) / (2 * len(pairs))
    model = build_model(args.model_size, tokenizer, dtype, device)
    n_params = sum(p.numel() for p in model.parameters())
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(
        f"model {args.model_size}: {n_params / 1e6:.1f}M params, {dtype}, {device_name}; "
        f"{len(pairs)} pairs: prompt {prompt:.0f} tokens, step {step:.0f} tokens (prompt/step {prompt / step:.1f}x); "
        f"{args.batch_pairs} pairs per step, {args.steps} timed steps",
        flush=True,
    )

    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    score_pairs(ref_model, pairs[: args.batch_pairs], batch_pairs=args.batch_pairs, device=device)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    attach(
        pairs,
        score_pairs(
            ref_model, pairs, batch_pairs=args.batch_pairs, pack_tokens=args.pack_tokens, device=device
        ),
    )
    sync(device)
    ref_pass = (time.perf_counter() - t0) / len(pairs)

    runners = {
        "shared + precomputed": Runner(model, None, "shared", device),
        "two-seq + precomputed": Runner(model, None, "two_sequence", device),
        "shared + live": Runner(model, ref_model, "shared", device),
    }
    results = run_interleaved(runners, pairs, args)
    for r in results.values():
        r["mfu"] = (
            mfu(n_params, r["train_tokens"], r["seconds"], device_name) if device.startswith("cuda") else None
        )
        if r["mfu"] is not None and r["ref_tokens"]:  # the live reference's forward counts as useful work too
            r["mfu"] += mfu(n_params, r["ref_tokens"], r["seconds"], device_name) / 3

    print(f"\n{'configuration':<24}{'tokens/pair':>12}{'ms/pair':>10}{'train tok/s':>13}{'MFU':>8}")
    for name, r in results.items():
        m = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(
            f"{name:<24}{r['tokens_per_pair']:>12.0f}{1000 * r['seconds_per_pair']:>10.1f}"
            f"{r['train_tokens_per_s']:>13.0f}{m:>8}"
        )
    shared, two, live = (
        results[k] for k in ("shared + precomputed", "two-seq + precomputed", "shared + live")
    )
    ratios = {
        "prefix_sharing_speedup": two["seconds_per_pair"] / shared["seconds_per_pair"],
        "prefix_sharing_token_ratio": two["tokens_per_pair"] / shared["tokens_per_pair"],
        "precomputed_reference_speedup_per_step": live["seconds_per_pair"] / shared["seconds_per_pair"],
        "precomputed_reference_speedup_amortised": (args.epochs * live["seconds_per_pair"])
        / (ref_pass + args.epochs * shared["seconds_per_pair"]),
        "reference_pass_ms_per_pair": 1000 * ref_pass,
    }
    print(
        f"\nprefix sharing: {ratios['prefix_sharing_speedup']:.2f}x faster per pair, "
        f"{ratios['prefix_sharing_token_ratio']:.2f}x fewer tokens (two-seq / shared)"
    )
    print(
        f"precomputed reference: {ratios['precomputed_reference_speedup_per_step']:.2f}x faster per step "
        f"(live / precomputed); {ratios['precomputed_reference_speedup_amortised']:.2f}x over {args.epochs} epochs "
        f"including the one-off pass ({ratios['reference_pass_ms_per_pair']:.1f} ms/pair)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "n_params": n_params,
                    "device": device_name,
                    "results": results,
                    **ratios,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
