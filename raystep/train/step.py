"""One Step-DPO training step, callable without Ray (the loop, the benchmark and tests share it).

``branch_logps`` turns a ``Batch`` (either layout) into per-branch summed log-probs; ``dpo_step`` adds
the reference and the loss. The model is anything that takes HF ``forward`` keyword arguments and
returns ``.logits``: a plain ``PreTrainedModel``, a peft model or a DeepSpeed engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from raystep.train.loss import LossOutput, preference_loss
from raystep.train.pairs import Batch


def branch_logps(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps [2N], tokens [2N])``: summed log-probs of each branch's step tokens (slot 2i chosen, 2i+1 rejected).

    Only the positions that predict a step token go through the LM head (``logits_to_keep`` as a bool
    mask, flattened row-major), so the prompt's long prefix costs no vocabulary projection.
    """
    out = model(**batch.model_inputs(), use_cache=False)
    logits = out.logits  # [num_kept, V]
    if logits.dim() == 3:  # a model that ignores the bool mask: gather rows ourselves
        logits = logits[batch.keep]
    flat = torch.cumsum(batch.keep.flatten().long(), 0) - 1
    src = flat[batch.tgt_row * batch.keep.shape[1] + batch.tgt_pos]
    logprobs = torch.log_softmax(logits[src].float(), dim=-1)
    token_logps = logprobs.gather(-1, batch.tgt_tok[:, None]).squeeze(-1)
    n = 2 * batch.num_pairs
    sums = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(
        0, batch.tgt_slot, token_logps
    )
    counts = torch.zeros(n, dtype=torch.long, device=token_logps.device).index_add(
        0, batch.tgt_slot, torch.ones_like(batch.tgt_slot)
    )
    return sums, counts


@dataclass
class StepSettings:
    """The loss knobs of ``TrainConfig`` a step needs."""

    beta: float = 0.5
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    nll_weight: float = 0.0

    @classmethod
    def from_train_config(cls, train: Any) -> StepSettings:
        loss = "sft" if getattr(train, "mode", "stepdpo") == "sft" else train.loss
        return cls(train.beta, loss, train.label_smoothing, train.nll_weight)


def reference_logps(batch: Batch, ref_model: Any | None) -> torch.Tensor:
    """Stored reference log-probs, or a no-grad pass of the frozen reference model (``live`` mode)."""
    if ref_model is None:
        if batch.ref_logps is None:
            raise ValueError("batch has no precomputed reference log-probs and no reference model was given")
        return batch.ref_logps
    with torch.no_grad():
        logps, _ = branch_logps(ref_model, batch)
    return logps.detach()


def dpo_step(model: Any, batch: Batch, settings: StepSettings, ref_model: Any | None = None) -> LossOutput:
    """Forward the policy, fetch the reference, and return the loss (call ``.backward()`` on ``.loss``)."""
    ref = reference_logps(batch, ref_model)
    logps, counts = branch_logps(model, batch)
    ref = ref.to(logps.device, logps.dtype)
    return preference_loss(
        logps[0::2],
        logps[1::2],
        ref[0::2],
        ref[1::2],
        beta=settings.beta,
        loss_type=settings.loss_type,
        label_smoothing=settings.label_smoothing,
        nll_weight=settings.nll_weight,
        chosen_tokens=counts[0::2],
    )


def step_metrics(out: LossOutput) -> dict[str, float]:
    """Loss, rewards, margin and reward accuracy of one micro-batch (means over its pairs)."""
    return {
        "loss": float(out.loss.detach()),
        "rewards/chosen": float(out.chosen_rewards.mean()),
        "rewards/rejected": float(out.rejected_rewards.mean()),
        "rewards/margin": float(out.margins.mean()),
        "rewards/accuracy": float((out.margins > 0).float().mean()),
    }
