"""Benchmark the Step-DPO training step side by side: raystep's layouts and TRL's DPOTrainer loss.

    python benchmarks/bench_train.py                                  # CPU: small Qwen2, 64 GSM8K pairs
    python benchmarks/bench_train.py --device cuda --model-size 1.5b  # GPU: Qwen2-1.5B shape, random weights, bf16
    python benchmarks/bench_train.py --smoke                          # seconds: tiny model, every code path once
    python benchmarks/bench_train.py --check                          # per-pair log-probs and grads vs two-sequence

Every setting runs forward + backward of the DPO loss on the same model, the same pairs and the same
micro-batches (precomputed reference log-probs), round-robin with warm-up rounds so load drift hits them
alike; the median time per pair is reported, with tokens, padding, peak memory and (on GPUs) tokens/s
and MFU. The optimizer step, the same for every layout, is timed once apart. Settings:

- ``TRL``: TRL's ``DPOTrainer.compute_loss`` (``trl`` from the ``bench`` extra; skipped when absent) on
  batches from TRL's own tokenization and collator: two right-padded rows per pair, EOS appended;
- ``two-sequence``: raystep's two rows per pair, 2D padding mask (sdpa's fastest kernel);
- ``shared <attention> <n>/row``: the prefix-shared layout, ``n`` pairs packed per row, attention through
  the dense sdpa mask, the flex ``BlockMask`` (CUDA only: torch has no flex backward on CPU) or
  ``varlen`` (per-pair sdpa), see ``raystep/train/attention.py``;
- ``shared + live reference``: the best shared setting plus a frozen reference model's forward.

MFU counts the model FLOPs the step needs (``raystep.train.metrics.FlopCount``): ``6 * N_body * tokens``
(N_body: weights outside embedding and LM head) + ``6 * vocab * hidden * logit positions`` (only step
tokens go through the LM head, in raystep and in TRL) + ``12 * layers * heads * head_dim * attended``
(query-key pairs the causal rule allows), over the device's dense bf16 peak. Only torch, transformers
and tokenizers are needed (no Ray, no DeepSpeed): the GPU script ``benchmarks/bench_train_gpu.sh`` runs it.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # sample_pairs.py, beside this script

import torch  # noqa: E402

from raystep.train.attention import flex_available  # noqa: E402
from raystep.train.batch_loss import batch_loss, branch_logps  # noqa: E402
from raystep.train.metrics import FlopCount, flops_utilisation  # noqa: E402
from raystep.train.pairs import Batch, build_batch, pair_texts, tokenize_pairs  # noqa: E402
from raystep.train.reference import attach, score_pairs  # noqa: E402

SIZES: dict[str, dict[str, int]] = {
    # hidden, layers, heads, kv heads, intermediate, vocab (absent: the tokenizer's)
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
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
    "7b": dict(
        hidden_size=3584,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        intermediate_size=18944,
        vocab_size=152064,
    ),
}
"""``0.5b`` / ``1.5b`` / ``7b`` follow Qwen2-0.5B / 1.5B / 7B (vocabulary included; 7B unties its head)."""

TEMPLATE = "qwen2-boxed"
BETA = 0.5


def build_model(size: str, tokenizer: Any, dtype: torch.dtype, device: str) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = dict(SIZES[size])
    vocab = shape.pop("vocab_size", len(tokenizer))
    config = Qwen2Config(
        vocab_size=vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=size != "7b",
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


# ---------------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------------


def data_file(arg: str | None) -> Path | None:
    """``--data``, else GSM8K train under ``$RAYSTEP_DATA`` or ``../shared/data``, else None."""
    if arg:
        return Path(arg)
    repo = Path(__file__).resolve().parents[1]
    for base in (os.environ.get("RAYSTEP_DATA"), repo.parent / "shared" / "data", repo / "shared" / "data"):
        if base and (Path(base) / "gsm8k" / "train.jsonl").exists():
            return Path(base) / "gsm8k" / "train.jsonl"
    return None


def make_pairs(args: argparse.Namespace, tmp: str) -> tuple[list[dict], Any, str]:
    """Pair rows, a BPE tokenizer trained on their text, and where they came from."""
    from sample_pairs import gsm8k_pairs, world_pairs

    from raystep.tiny import build_tokenizer, gsm8k_texts

    path = None if args.pairs_from == "world" else data_file(args.data)
    if path is None and args.pairs_from == "gsm8k":
        raise SystemExit(
            "no GSM8K file: pass --data path/to/gsm8k/train.jsonl, set RAYSTEP_DATA, or --pairs-from world"
        )
    if path is not None:
        rows = gsm8k_pairs(path, args.pairs)
        texts = gsm8k_texts(path, limit=2000)
        source = f"GSM8K ({path.name})"
    else:
        rows = world_pairs(args.pairs)
        texts = [
            r[k] for r in rows for k in ("prompt", "initial_reason_steps", "full_chosen", "full_rejected")
        ]
        source = "the arithmetic world (no GSM8K file here)"
    return rows, build_tokenizer(texts, tmp, vocab_size=1024), source


# ---------------------------------------------------------------------------------------------------
# Settings and their steps
# ---------------------------------------------------------------------------------------------------


@dataclass
class Setting:
    name: str
    layout: str  # "shared", "two_sequence" or "trl"
    attention: str = "sdpa"
    pairs_per_row: int | None = None
    live: bool = False
    times: list[float] = field(default_factory=list)
    wall_times: list[float] = field(default_factory=list)
    pairs: int = 0
    tokens: int = 0
    padded: int = 0
    flops: float = 0.0
    peak_bytes: int | None = None
    error: str | None = None


def settings_for(device: str, trl: bool, live: bool, per_row: int) -> list[Setting]:
    cuda = device.startswith("cuda")
    out = [Setting("TRL DPOTrainer", "trl")] if trl else []
    out.append(Setting("two-sequence", "two_sequence"))
    kinds = ["sdpa", "flex", "varlen"] if cuda and flex_available() else ["sdpa", "varlen"]
    for kind in kinds:
        for n in (1, per_row):
            out.append(
                Setting(f"shared {kind}{' dense' if kind == 'sdpa' else ''} {n}/row", "shared", kind, n)
            )
    if live:
        best = "flex" if "flex" in kinds else "varlen"
        out.append(Setting("shared + live reference", "shared", best, per_row, live=True))
    return out


class TrlLoss:
    """TRL's DPOTrainer around the same model: its tokenization, collator and ``compute_loss``."""

    def __init__(self, model: Any, tokenizer: Any, rows: list[dict], args: argparse.Namespace, out_dir: str):
        os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's reference pass and datasets' maps draw bars
        import datasets
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        datasets.disable_progress_bars()

        texts = [
            dict(zip(("prompt", "chosen", "rejected"), pair_texts(r, TEMPLATE), strict=True)) for r in rows
        ]
        config = DPOConfig(
            output_dir=out_dir,
            per_device_train_batch_size=args.batch_pairs,
            beta=BETA,
            precompute_ref_log_probs=True,  # like raystep's stored reference: no reference forward per step
            gradient_checkpointing=False,
            max_length=None,
            report_to="none",
            logging_strategy="no",
            save_strategy="no",
            use_cpu=not args.device.startswith("cuda"),
            bf16=False,  # the model itself is already in the bench's dtype, as for raystep
            disable_tqdm=True,
        )
        self.trainer = DPOTrainer(
            model=model, args=config, train_dataset=Dataset.from_list(texts), processing_class=tokenizer
        )
        self.rows = self.trainer.train_dataset  # TRL-tokenized, with TRL's own reference log-probs

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        keys = ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")
        return self.trainer.data_collator([{k: self.rows[i][k] for k in keys} for i in indices])


def trl_stats(inputs: dict[str, torch.Tensor]) -> tuple[int, int, int, int]:
    """(real tokens, padded tokens, logit positions, attended query-key pairs) of a TRL batch."""
    lengths = inputs["attention_mask"].sum(1)
    attended = int((lengths * (lengths + 1) // 2).sum())
    return int(lengths.sum()), inputs["input_ids"].numel(), int(inputs["completion_mask"].sum()), attended


def step_fn(setting: Setting, model: Any, ref_model: Any, trl: TrlLoss | None, device: str):
    """A closure that runs forward + backward on one prepared host batch."""
    if setting.layout == "trl":

        def run(inputs: dict[str, torch.Tensor]) -> None:
            moved = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            trl.trainer.compute_loss(model, moved).backward()

        return run
    # the loss fields of TrainConfig as a plain namespace: the GPU machine may lack pydantic
    loss_knobs = SimpleNamespace(
        mode="stepdpo", loss="sigmoid", beta=BETA, label_smoothing=0.0, nll_weight=0.0
    )

    def run(batch: Batch) -> None:
        batch_loss(model, batch.to(device), loss_knobs, ref_model if setting.live else None).loss.backward()

    return run


def host_batches(setting: Setting, chunks: list[list[int]], pairs: list, trl: TrlLoss | None) -> list:
    if setting.layout == "trl":
        return [trl.batch(c) for c in chunks]
    return [
        build_batch(
            [pairs[i] for i in c], setting.layout, 1 << 30, 0, setting.attention, setting.pairs_per_row
        )
        for c in chunks
    ]


def batch_stats(setting: Setting, batch: Any, flop_count: FlopCount) -> tuple[int, int, int, float]:
    """(pairs, real tokens, padded tokens, model FLOPs) of one prepared batch."""
    if setting.layout == "trl":
        tokens, padded, logits, attended = trl_stats(batch)
        pairs = batch["input_ids"].shape[0] // 2
    else:
        tokens, padded, logits, attended = (
            batch.real_tokens,
            batch.padded_tokens,
            batch.logit_positions,
            batch.attended,
        )
        pairs = batch.num_pairs
    flops = flop_count.flops(tokens, logits, attended)
    if setting.live:  # the reference forward is model work too
        flops += flop_count.flops(tokens, logits, attended, backward=False)
    return pairs, tokens, padded, flops


# ---------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------


class RssPeak:
    """Peak resident memory above the start, sampled every millisecond (CPU has no allocator counter).

    ``serve_large_with_mmap`` makes glibc serve every allocation over 64 KiB with mmap, and each
    measurement first trims the heap, so freed tensors leave the process and the samples follow live
    tensor memory rather than the allocator's cache. It slows allocation down, so it is switched on
    only for the memory round, after the timed ones.
    """

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def _libc() -> Any:
        try:
            return ctypes.CDLL("libc.so.6")
        except OSError:
            return None

    @classmethod
    def serve_large_with_mmap(cls) -> None:
        libc = cls._libc()
        if libc is not None:
            libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (also stops glibc raising it on its own)

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def measure(self, fn) -> int:
        libc = self._libc()
        if libc is not None:
            libc.malloc_trim(0)
        base, peak, done = self._rss(), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], self._rss())
                time.sleep(0.001)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            fn()
        finally:
            done.set()
            thread.join()
        return max(0, max(peak[0], self._rss()) - base)


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


def run_settings(settings: list[Setting], model, ref_model, trl, pairs, flop_count, args) -> None:
    """Round-robin: every round runs each setting once on the same micro-batch of pairs."""
    bp = args.batch_pairs
    order = list(range(len(pairs)))
    chunks = [order[i : i + bp] for i in range(0, len(order) - bp + 1, bp)]
    prepared = {s.name: host_batches(s, chunks, pairs, trl) for s in settings}
    fns = {s.name: step_fn(s, model, ref_model, trl, args.device) for s in settings}
    cuda = args.device.startswith("cuda")
    model.train()
    for i in range(args.warmup + args.steps):
        for s in settings:
            if s.error:
                continue
            batch = prepared[s.name][i % len(chunks)]
            try:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                sync(args.device)
                t0, c0 = time.perf_counter(), time.thread_time()
                fns[s.name](batch)
                sync(args.device)
                wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
            except torch.OutOfMemoryError as exc:
                s.error = f"out of memory ({str(exc).splitlines()[0][:80]})"
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                continue
            model.zero_grad(set_to_none=True)
            if i < args.warmup:
                continue
            n, tokens, padded, flops = batch_stats(s, batch, flop_count)
            s.times.append((cpu if args.clock == "cpu" else wall) / n)
            s.wall_times.append(wall / n)
            s.pairs += n
            s.tokens += tokens
            s.padded += padded
            s.flops += flops
            if cuda:
                s.peak_bytes = max(s.peak_bytes or 0, torch.cuda.max_memory_allocated() - base)
    if not cuda:  # one more, untimed, round with the RSS sampler on
        RssPeak.serve_large_with_mmap()
        meter = RssPeak()
        for s in settings:
            if not s.error:
                s.peak_bytes = meter.measure(lambda s=s: fns[s.name](prepared[s.name][0]))
                model.zero_grad(set_to_none=True)


def clock(kind: str) -> float:
    """The bench's clock: this thread's CPU time or wall time (see ``--clock``)."""
    return time.thread_time() if kind == "cpu" else time.perf_counter()


def optimizer_step_ms(model: Any, device: str, kind: str) -> float | None:
    """One AdamW step over all weights (gradients set to zeros), timed after one warm-up step."""
    try:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=device.startswith("cuda") or None)
        opt.step()
        sync(device)
        t0 = clock(kind)
        opt.step()
        sync(device)
        return 1000 * (clock(kind) - t0)
    except torch.OutOfMemoryError:
        return None
    finally:
        model.zero_grad(set_to_none=True)
        opt = None
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def summarise(settings: list[Setting], device_name: str, elapsed_flops: bool) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for s in settings:
        r: dict[str, Any] = {"layout": s.layout, "attention": s.attention, "pairs_per_row": s.pairs_per_row}
        if s.error or not s.times:
            r["error"] = s.error or "not run"
            results[s.name] = r
            continue
        per_pair = statistics.median(s.times)
        seconds = per_pair * s.pairs
        r.update(
            seconds_per_pair=per_pair,
            wall_seconds_per_pair=statistics.median(s.wall_times),
            tokens_per_pair=s.tokens / s.pairs,
            padding=1 - s.tokens / s.padded,
            tokens_per_s=s.tokens / seconds,
            tflops_per_s=s.flops / seconds / 1e12,
            mfu=flops_utilisation(s.flops, seconds, device_name) if elapsed_flops else None,
            peak_mib=None if s.peak_bytes is None else s.peak_bytes / 2**20,
        )
        results[s.name] = r
    return results


def ratios(results: dict[str, dict], per_row: int) -> dict[str, Any]:
    ok = {k: v for k, v in results.items() if "seconds_per_pair" in v}

    def t(name: str) -> float | None:
        return ok[name]["seconds_per_pair"] if name in ok else None

    out: dict[str, Any] = {"vs_trl": {}, "vs_two_sequence": {}, "packing": {}}
    for name, r in ok.items():
        if t("TRL DPOTrainer"):
            out["vs_trl"][name] = t("TRL DPOTrainer") / r["seconds_per_pair"]
        if t("two-sequence"):
            out["vs_two_sequence"][name] = t("two-sequence") / r["seconds_per_pair"]
    for kind in ("sdpa dense", "flex", "varlen"):
        one, many = t(f"shared {kind} 1/row"), t(f"shared {kind} {per_row}/row")
        if one and many:
            out["packing"][kind] = many / one
    return out


def print_report(results: dict[str, dict], rt: dict[str, Any], per_row: int, gpu: bool, clock: str) -> None:
    head = (
        f"{'setting':<28}{'tok/pair':>9}{'padding':>8}{'ms/pair':>9}{'wall ms':>9}{'tok/s':>9}{'TFLOP/s':>9}"
    )
    head += f"{'MFU':>7}{'peak MiB':>10}{'vs TRL':>8}{'vs 2-seq':>9}"
    print("\n" + head)
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<28}  {r['error']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        vt, vs = rt["vs_trl"].get(name), rt["vs_two_sequence"].get(name)
        print(
            f"{name:<28}{r['tokens_per_pair']:>9.0f}{100 * r['padding']:>7.1f}%"
            f"{1000 * r['seconds_per_pair']:>9.2f}{1000 * r['wall_seconds_per_pair']:>9.2f}"
            f"{r['tokens_per_s']:>9.0f}{r['tflops_per_s']:>9.3f}{mfu:>7}{peak:>10}"
            f"{(f'{vt:.2f}x' if vt else '-'):>8}{(f'{vs:.2f}x' if vs else '-'):>9}"
        )
    what = "the thread's CPU time" if clock == "cpu" else "wall time"
    peak = "CUDA allocator peak above the memory in use before the step" if gpu else "resident memory peak"
    print(
        f"\nms/pair: median over the timed rounds of {what} per pair (tok/s, TFLOP/s, MFU and the ratios use it); "
        f"wall ms: wall time; vs TRL / vs 2-seq: times faster per pair than that setting; peak MiB: {peak}"
    )
    for kind, ratio in rt["packing"].items():
        verdict = "no slower" if ratio <= 1.0 else "slower"
        print(
            f"packing, {kind}: {per_row} pairs/row take {ratio:.2f}x the time per pair of 1 pair/row ({verdict})"
        )


def target_lines(results: dict[str, dict], rt: dict[str, Any], per_row: int, gpu: bool) -> list[str]:
    """The issue's targets, measured in this run."""
    flex_ran = "seconds_per_pair" in results.get(f"shared flex {per_row}/row", {})
    block = "flex" if gpu and flex_ran else "varlen"
    best = f"shared {block} {per_row}/row"
    lines = []
    if best in rt["vs_trl"]:
        v = rt["vs_trl"][best]
        lines.append(
            f"{best} vs TRL: {v:.2f}x faster per pair (target >= 2.5x): {'met' if v >= 2.5 else 'NOT met'}"
        )
    if block in rt["packing"]:
        v = rt["packing"][block]
        lines.append(
            f"{block}: {per_row} pairs/row cost {v:.2f}x per pair of 1 pair/row (target <= 1.0): "
            f"{'met' if v <= 1.0 else 'NOT met'}"
        )
    if gpu and best in results and results[best].get("mfu") is not None:
        v = results[best]["mfu"]
        lines.append(f"{best} MFU: {100 * v:.1f}% (target >= 45%): {'met' if v >= 0.45 else 'NOT met'}")
    return lines


# ---------------------------------------------------------------------------------------------------
# Correctness check (the tests' claim, runnable on any device)
# ---------------------------------------------------------------------------------------------------


def check(model: Any, pairs: list, device: str, per_row: int) -> dict[str, dict[str, float]]:
    """Max |difference| of per-pair log-probs and of all gradients, each attention vs two-sequence."""
    model.train()

    def run(batch: Batch, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(grad):
            logps, _ = branch_logps(model, batch.to(device))
        if not grad:
            return logps.detach(), None
        (logps[0::2] - logps[1::2]).sum().backward()
        return logps.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    ref_l, ref_g = run(build_batch(pairs, "two_sequence"), True)
    out: dict[str, dict[str, float]] = {
        "two-sequence": {"logp_scale": float(ref_l.abs().max()), "grad_scale": float(ref_g.abs().max())}
    }
    kinds = ["sdpa", "varlen"] + (["flex"] if flex_available() else [])
    for kind in kinds:
        grad = device.startswith("cuda") or kind != "flex"  # torch has no flex backward on CPU
        logps, grads = run(build_batch(pairs, "shared", 1 << 30, 0, kind, per_row), grad)
        r = {"logp_max_diff": float((logps - ref_l).abs().max())}
        r["logp_rel"] = r["logp_max_diff"] / out["two-sequence"]["logp_scale"]
        if grads is not None:
            r["grad_max_diff"] = float((grads - ref_g).abs().max())
            r["grad_rel"] = r["grad_max_diff"] / out["two-sequence"]["grad_scale"]
        out[f"shared {kind} {per_row}/row"] = r
    model.zero_grad(set_to_none=True)
    return out


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--model-size", default=None, choices=list(SIZES), help="default: small (cpu), 1.5b (cuda)"
    )
    parser.add_argument(
        "--pairs", type=int, default=64, help="pairs (GSM8K, or the arithmetic world without it)"
    )
    parser.add_argument("--pairs-from", default="auto", choices=["auto", "gsm8k", "world"])
    parser.add_argument("--batch-pairs", type=int, default=8, help="pairs per micro-batch (every setting)")
    parser.add_argument("--per-row", type=int, default=8, help="pairs per row of the packed settings")
    parser.add_argument("--steps", type=int, default=6, help="timed rounds (after the warm-up rounds)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed rounds first (default: 1 cpu, 2 cuda)"
    )
    parser.add_argument("--no-trl", action="store_true", help="leave TRL out even when installed")
    parser.add_argument("--no-live", action="store_true", help="leave out the live-reference setting")
    parser.add_argument("--epochs", type=int, default=8, help="for the amortised reference ratio (paper: 8)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (0: torch's default)")
    parser.add_argument(
        "--clock",
        default=None,
        choices=["cpu", "wall"],
        help="what times a step: the thread's CPU time (default on CPU with one thread: other jobs on a shared "
        "machine do not inflate it) or wall time (default on GPU, after a synchronize)",
    )
    parser.add_argument(
        "--data", default=None, help="GSM8K train.jsonl (default: $RAYSTEP_DATA or ../shared/data)"
    )
    parser.add_argument(
        "--json",
        default=None,
        help="also write the results here (default: $OUT/bench_train_<size>.json when $OUT is set)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model, 8 pairs, one round: every code path in seconds"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only compare each attention's log-probs and grads with two-sequence (fp32)",
    )
    args = parser.parse_args(argv)

    device = args.device
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU")
    if args.smoke:
        args.model_size = "tiny"
        args.pairs, args.batch_pairs, args.per_row, args.steps = 8, 4, 4, 1
        args.warmup = 1 if args.warmup is None else args.warmup
    size = args.model_size or ("tiny" if args.check else "1.5b" if cuda else "small")
    args.model_size = size
    args.warmup = args.warmup if args.warmup is not None else (2 if cuda else 1)
    args.clock = args.clock or ("cpu" if not cuda and args.threads == 1 else "wall")
    if args.threads and not cuda:
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if (args.check or not cuda) else torch.bfloat16
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        rows, tokenizer, source = make_pairs(args, tmp)
        pairs = tokenize_pairs(rows, tokenizer, template=TEMPLATE, max_length=1024, max_prompt_length=512)
        prompt = sum(len(p.prompt_ids) for p in pairs) / len(pairs)
        step = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs) / (2 * len(pairs))
        model = build_model(size, tokenizer, dtype, device)
        n_params = sum(p.numel() for p in model.parameters())
        device_name = torch.cuda.get_device_name() if cuda else "cpu"
        print(
            f"model {size}: {n_params / 1e6:.1f}M params, {dtype}, {device_name}, torch {torch.__version__}; "
            f"{len(pairs)} pairs from {source}: prompt {prompt:.0f} tokens, step {step:.0f} "
            f"(prompt/step {prompt / step:.1f}x); {args.batch_pairs} pairs per micro-batch",
            flush=True,
        )

        if args.check:
            result = check(model, pairs[: args.batch_pairs], device, args.per_row)
            for name, r in result.items():
                print(f"{name:<24}" + "  ".join(f"{k} {v:.2e}" for k, v in r.items()))
            worst = max(v for r in result.values() for k, v in r.items() if k.endswith("_rel"))
            print(
                f"largest difference relative to the values' scale: {worst:.1e} ({'ok' if worst < 1e-4 else 'TOO LARGE'} at 1e-4)"
            )
            _write(args, {"check": result, "device": device_name, "torch": torch.__version__})
            return 0

        live = not args.no_live
        # copy before TRL patches the model's forward (a copy made after would call the original's)
        ref_model = copy.deepcopy(model).eval().requires_grad_(False) if live else None
        trl, trl_note = None, None
        if not args.no_trl:
            try:
                trl = TrlLoss(model, tokenizer, rows, args, os.path.join(tmp, "trl"))
            except Exception as exc:  # noqa: BLE001 - TRL is optional: report why and go on
                trl_note = f"TRL left out: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                print(trl_note, flush=True)

        best = "flex" if cuda and flex_available() else "varlen"
        scorer = ref_model if ref_model is not None else model
        score_pairs(
            scorer, pairs[: args.batch_pairs], batch_pairs=args.batch_pairs, device=device, attention=best
        )
        sync(device)
        t0 = clock(args.clock)
        table = score_pairs(scorer, pairs, batch_pairs=args.batch_pairs, device=device, attention=best)
        sync(device)
        ref_pass = (clock(args.clock) - t0) / len(pairs)
        attach(pairs, table)

        settings = settings_for(device, trl is not None, live, args.per_row)
        run_settings(settings, model, ref_model, trl, pairs, FlopCount.of(model), args)
        opt_ms = optimizer_step_ms(model, device, args.clock)

    results = summarise(settings, device_name, cuda)
    rt = ratios(results, args.per_row)
    print_report(results, rt, args.per_row, cuda, args.clock)
    if opt_ms is not None:
        print(
            f"optimizer step (AdamW over all weights, once per global batch, not in the times above): {opt_ms:.1f} ms"
        )
    live_name, shared_name = "shared + live reference", f"shared {best} {args.per_row}/row"
    if all("seconds_per_pair" in results.get(n, {}) for n in (live_name, shared_name)):
        lv, sh = results[live_name]["seconds_per_pair"], results[shared_name]["seconds_per_pair"]
        rt["reference"] = {
            "per_step": lv / sh,
            "amortised": args.epochs * lv / (ref_pass + args.epochs * sh),
            "pass_ms_per_pair": 1000 * ref_pass,
        }
        print(
            f"precomputed reference: {lv / sh:.2f}x faster per step than a live reference model; "
            f"{rt['reference']['amortised']:.2f}x over {args.epochs} epochs with the one-off pass "
            f"({1000 * ref_pass:.1f} ms/pair)"
        )
    targets = target_lines(results, rt, args.per_row, cuda)
    for line in targets:
        print(line)
    if trl_note:
        print(trl_note)
    print(f"total {time.perf_counter() - t_start:.0f} s", flush=True)
    _write(
        args,
        {
            "args": vars(args),
            "device": device_name,
            "torch": torch.__version__,
            "n_params": n_params,
            "pairs_source": source,
            "prompt_tokens": prompt,
            "step_tokens": step,
            "results": results,
            "ratios": rt,
            "targets": targets,
            "optimizer_step_ms": opt_ms,
            "trl_note": trl_note,
            "settings": [asdict(s) | {"times": s.times} for s in settings],
        },
    )
    return 0


def _write(args: argparse.Namespace, payload: dict) -> None:
    path = args.json
    if path is None and os.environ.get("OUT"):
        tag = "check" if args.check else args.model_size
        path = os.path.join(os.environ["OUT"], f"bench_train_{tag}.json")
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
