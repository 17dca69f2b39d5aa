"""Per-step training metrics: throughput, MFU, the step log, and loss / margin plots.

``train/metrics.jsonl`` is the step log: one row per optimizer step, written by rank 0. When a run
resumes from a checkpoint at step ``s`` the rows after ``s`` (work that the checkpoint does not hold) are
dropped first, so the final log has every step exactly once; ``train/events.jsonl`` records each start
and resume.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from raystep.records import append_jsonl, read_jsonl, write_jsonl

# Dense bf16 peak FLOP/s per device (no sparsity), by a substring of the CUDA device name.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None


@dataclass(frozen=True)
class FlopCount:
    """Model FLOPs of a decoder step, counted the way the step actually runs.

    Per token ``2 * body`` (all weights outside the token embedding and LM head), ``2 * vocab * hidden``
    per position that goes through the LM head (raystep and TRL project only the step tokens), and
    ``4 * layers * heads * head_dim`` per query-key pair the attention rule allows (QK^T and AV; a causal
    span of L tokens has L(L+1)/2 pairs; blocks a kernel computes and then masks do not count). Training
    (forward + backward) is three times the forward.
    """

    body_params: int
    head_params: int
    layers: int
    attn_dim: int

    @classmethod
    def of(cls, model: Any) -> FlopCount:
        """From a transformers causal LM (ZeRO-3 partitioned parameters count at full size)."""
        inner = getattr(model, "module", model)
        cfg = inner.config
        total = sum(getattr(p, "ds_numel", p.numel()) for p in inner.parameters())
        head = cfg.vocab_size * cfg.hidden_size
        embeddings = head if getattr(cfg, "tie_word_embeddings", False) else 2 * head
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(total - embeddings, head, cfg.num_hidden_layers, cfg.num_attention_heads * head_dim)

    def flops(self, tokens: int, logit_positions: int, attended: int, backward: bool = True) -> float:
        forward = (
            2 * self.body_params * tokens
            + 2 * self.head_params * logit_positions
            + 4 * self.layers * self.attn_dim * attended
        )
        return 3 * forward if backward else forward


def flops_utilisation(flops: float, seconds: float, device_name: str, num_devices: int = 1) -> float | None:
    """``flops / seconds`` over the devices' dense bf16 peak; None where no peak is known (CPU)."""
    peak = peak_flops(device_name)
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (peak * num_devices)


DEVICE_SUMS = ("loss", "chosen", "rejected", "margin", "correct")
HOST_SUMS = ("pairs", "tokens", "flops", "micro_batches", "padded_tokens")


@dataclass
class StepTotals:
    """One optimizer step's sums over a rank's micro-batches (loss and rewards weighted by pairs).

    The loss and reward sums stay on the device until the step ends, so a step costs one all-reduce and
    one device-to-host copy (``all_reduce``), not a sync per micro-batch.
    """

    device: torch.device
    on_device: torch.Tensor = field(init=False)
    pairs: int = 0
    tokens: int = 0
    flops: float = 0.0
    micro_batches: int = 0
    padded_tokens: int = 0

    def __post_init__(self) -> None:
        self.on_device = torch.zeros(len(DEVICE_SUMS), dtype=torch.float64, device=self.device)

    def add(self, out: Any, batch: Any, flop_count: FlopCount) -> None:
        """Add one micro-batch: ``out`` a ``LossOutput``, ``batch`` the ``Batch`` it came from."""
        n = batch.num_pairs
        parts = (
            out.loss.detach() * n,
            out.chosen_rewards.sum(),
            out.rejected_rewards.sum(),
            out.margins.sum(),
            (out.margins > 0).sum(),
        )
        self.on_device += torch.stack([p.to(torch.float64) for p in parts])
        self.pairs += n
        self.tokens += batch.real_tokens
        self.flops += flop_count.flops(batch.real_tokens, batch.logit_positions, batch.attended)
        self.micro_batches += 1
        self.padded_tokens += batch.padded_tokens

    def all_reduce(self) -> dict[str, float]:
        """The sums over all ranks, by name (``DEVICE_SUMS`` + ``HOST_SUMS``)."""
        import torch.distributed as dist

        host = [float(getattr(self, name)) for name in HOST_SUMS]
        values = torch.cat([self.on_device, torch.tensor(host, dtype=torch.float64, device=self.device)])
        if dist.is_initialized():
            dist.all_reduce(values)
        return dict(zip(DEVICE_SUMS + HOST_SUMS, values.cpu().tolist(), strict=True))


def step_metrics(sums: dict[str, float], seconds: float) -> dict[str, Any]:
    """The step log's loss, reward, token and throughput fields from a step's all-reduced sums."""
    pairs = sums["pairs"]
    return {
        "loss": sums["loss"] / pairs,
        "rewards/chosen": sums["chosen"] / pairs,
        "rewards/rejected": sums["rejected"] / pairs,
        "rewards/margin": sums["margin"] / pairs,
        "rewards/accuracy": sums["correct"] / pairs,
        "pairs": int(pairs),
        "tokens": int(sums["tokens"]),
        "padding": 1 - sums["tokens"] / sums["padded_tokens"],
        "seconds": seconds,
        "tokens_per_s": sums["tokens"] / seconds,
    }


class StepLog:
    """Rank 0's view of ``metrics.jsonl`` and ``events.jsonl`` in the run's ``train/`` folder."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self.metrics_path = self.folder / "metrics.jsonl"
        self.events_path = self.folder / "events.jsonl"

    def start(self, resumed_from_step: int, total_steps: int) -> None:
        """Drop step rows beyond the checkpoint, then record the (re)start."""
        kept = 0
        if self.metrics_path.exists():
            rows = [r for r in read_jsonl(self.metrics_path) if r.get("step", 0) <= resumed_from_step]
            kept = write_jsonl(self.metrics_path, rows)
        event = "resume" if resumed_from_step else "start"
        append_jsonl(
            self.events_path,
            [
                {
                    "event": event,
                    "step": resumed_from_step,
                    "total_steps": total_steps,
                    "rows_kept": kept,
                    "time": time.time(),
                }
            ],
        )

    def log(self, row: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, [row])

    def finish(self, step: int) -> None:
        append_jsonl(self.events_path, [{"event": "finish", "step": step, "time": time.time()}])

    def rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path) if self.metrics_path.exists() else []


def plot_metrics(rows: list[dict[str, Any]], out_dir: str | os.PathLike[str]) -> list[str]:
    """``loss.png`` and ``margin.png`` (with chosen / rejected rewards and accuracy) from the step log."""
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in rows]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["loss"] for r in rows], label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Step-DPO loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)
    paths.append(str(out / "loss.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["rewards/margin"] for r in rows], label="margin")
    ax.plot(steps, [r["rewards/chosen"] for r in rows], label="chosen reward", alpha=0.7)
    ax.plot(steps, [r["rewards/rejected"] for r in rows], label="rejected reward", alpha=0.7)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward (beta * log-ratio)")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["rewards/accuracy"] for r in rows], color="grey", linestyle=":", label="accuracy")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("reward accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Rewards and margin")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "margin.png", dpi=120)
    plt.close(fig)
    paths.append(str(out / "margin.png"))
    return paths


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """First / last values of the headline metrics, for the stage stats and the manifest."""
    if not rows:
        return {}
    keys = ("loss", "rewards/margin", "rewards/accuracy", "tokens_per_s")
    out: dict[str, Any] = {"steps": rows[-1]["step"]}
    for k in keys:
        if k in rows[0]:
            out[f"first_{k}"] = rows[0][k]
            out[f"last_{k}"] = rows[-1][k]
    return out
