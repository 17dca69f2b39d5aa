"""Preference losses over summed step-token log-probs (Step-DPO uses the sigmoid DPO loss).

All inputs are ``[N]`` tensors of summed log-probs (policy and reference, chosen and rejected). The
rewards are the implicit DPO rewards ``beta * (policy - reference)``; they are what the per-step
metrics report (margin = chosen - rejected reward; accuracy = share of pairs with margin > 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossOutput:
    loss: torch.Tensor
    """Scalar: mean over pairs (plus the NLL term when enabled)."""
    losses: torch.Tensor
    """``[N]`` per-pair preference loss."""
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    nll_weight: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
) -> LossOutput:
    """DPO (``sigmoid``, with conservative label smoothing) or ``ipo``, plus optional NLL on chosen;
    or ``sft``: the NLL alone.

    sigmoid: ``-(1-eps) log s(beta h) - eps log s(-beta h)``, ``h = (pi_c - ref_c) - (pi_r - ref_r)``.
    ipo: ``(h - 1 / (2 beta))^2`` on the summed log-ratios.
    nll: ``nll_weight * mean(-pi_c / n_chosen_tokens)`` (the per-token NLL of the chosen step).
    sft: ``-pi_c / n_chosen_tokens`` per pair (supervised fine-tuning on the chosen branch; the rejected
    branch and the reference only feed the reward metrics).
    """
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if loss_type == "sft":
        if chosen_tokens is None:
            raise ValueError("loss 'sft' needs chosen_tokens (the chosen branch lengths)")
        losses = -policy_chosen / chosen_tokens.clamp(min=1)
    elif loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss type {loss_type!r}; use 'sigmoid', 'ipo' or 'sft'")
    loss = losses.mean()
    if nll_weight > 0 and loss_type != "sft":
        if chosen_tokens is None:
            raise ValueError("nll_weight > 0 needs chosen_tokens (the chosen step lengths)")
        loss = loss + nll_weight * (-policy_chosen / chosen_tokens.clamp(min=1)).mean()
    return LossOutput(
        loss=loss,
        losses=losses,
        chosen_rewards=beta * chosen_ratio.detach(),
        rejected_rewards=beta * rejected_ratio.detach(),
    )
