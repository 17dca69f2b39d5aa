"""The Step-DPO loss of one batch of pairs, callable without Ray (the loop, the benchmark and tests share it).

``branch_logps`` turns a ``Batch`` (either layout) into per-branch summed log-probs; ``batch_loss`` adds
the reference and the loss (the caller runs backward and the optimizer step). The model is anything that takes HF ``forward`` keyword arguments and
returns ``.logits``: a plain ``PreTrainedModel``, a peft model or a DeepSpeed engine.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from raystep.train import attention as attn
from raystep.train.loss import LossOutput, preference_loss
from raystep.train.pairs import Batch


def branch_logps(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps [2N], tokens [2N])``: summed log-probs of each branch's step tokens (slot 2i chosen, 2i+1 rejected).

    Only the positions that predict a step token go through the LM head (``logits_to_keep`` as a bool
    mask, flattened row-major), so the prompt's long prefix costs no vocabulary projection.
    """
    attn.install(model)
    inputs = batch.model_inputs()
    if isinstance(inputs["attention_mask"], attn.Spans):
        inputs = {**inputs, "attention_mask": attn.per_layer_type(model, inputs["attention_mask"])}
    keep = inputs["logits_to_keep"]
    if getattr(model, "_raystep_keep_positions_only", False):
        inputs = {**inputs, "logits_to_keep": 0}  # all positions; the kept ones are gathered below
    try:
        out = model(**inputs, use_cache=False)
    except IndexError:  # transformers before 5.2x take logits_to_keep as positions, not a bool mask
        model._raystep_keep_positions_only = True
        out = model(**{**inputs, "logits_to_keep": 0}, use_cache=False)
    logits = out.logits  # [num_kept, V]
    if logits.dim() == 3:  # a model that ignores the bool mask: gather rows ourselves
        logits = logits[keep]
    row, pos, tok, slot = batch.targets.unbind(1)
    flat = torch.cumsum(keep.flatten().long(), 0) - 1
    src = flat[row * keep.shape[1] + pos]
    logprobs = torch.log_softmax(logits[src].float(), dim=-1)
    token_logps = logprobs.gather(-1, tok[:, None]).squeeze(-1)
    n = 2 * batch.num_pairs
    sums = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(0, slot, token_logps)
    counts = torch.zeros(n, dtype=torch.long, device=token_logps.device).index_add(
        0, slot, torch.ones_like(slot)
    )
    return sums, counts


class LossKnobs(Protocol):
    """The loss fields of ``raystep.config.TrainConfig`` a batch needs (the config itself is passed in;
    the pydantic-free benchmark passes a plain namespace with the same fields)."""

    mode: str
    loss: str
    beta: float
    label_smoothing: float
    nll_weight: float


def loss_type(train: LossKnobs) -> str:
    """``sft`` mode trains on the chosen branch alone, whatever ``train.loss`` says."""
    return "sft" if train.mode == "sft" else train.loss


def reference_logps(batch: Batch, ref_model: Any | None) -> torch.Tensor:
    """Stored reference log-probs, or a no-grad pass of the frozen reference model (``live`` mode)."""
    if ref_model is None:
        if batch.ref_logps is None:
            raise ValueError("batch has no precomputed reference log-probs and no reference model was given")
        return batch.ref_logps
    with torch.no_grad():
        logps, _ = branch_logps(ref_model, batch)
    return logps.detach()


def batch_loss(model: Any, batch: Batch, train: LossKnobs, ref_model: Any | None = None) -> LossOutput:
    """Forward the policy, fetch the reference, and return the loss (call ``.backward()`` on ``.loss``)."""
    ref = reference_logps(batch, ref_model)
    logps, counts = branch_logps(model, batch)
    ref = ref.to(logps.device, logps.dtype)
    return preference_loss(
        logps[0::2],
        logps[1::2],
        ref[0::2],
        ref[1::2],
        beta=train.beta,
        loss_type=loss_type(train),
        label_smoothing=train.label_smoothing,
        nll_weight=train.nll_weight,
        chosen_tokens=counts[0::2],
    )
