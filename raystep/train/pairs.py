"""Pairs -> token ids -> model batches, with or without prefix sharing.

A Step-DPO pair is a long prompt (template + question + the correct steps so far) and two short
continuations (the chosen and the rejected step). Tokenized the way Step-DPO trains: the prompt is
``build_prompt(template, prompt, initial_reason_steps)``; chosen and rejected are the step's tokens alone
with no EOS. Truncation keeps the step and cuts the prompt from the left, and is counted.

Two batch layouts give the same per-pair log-probs:

- ``two_sequence``: ``[prompt | chosen]`` and ``[prompt | rejected]`` as separate, right-padded rows (what
  every DPO trainer does; the prompt is processed twice).
- ``shared``: one sequence ``[prompt | chosen | rejected]`` per pair, where rejected tokens cannot attend
  to chosen tokens and take the positions right after the prompt. Several pairs are packed per row up to
  a token budget, block-diagonal across pairs. A 4D bool mask ``[B, 1, L, L]`` plus ``position_ids`` carry
  the layout through stock ``sdpa`` attention.

Both produce a ``Batch`` whose targets say, for every step token, which position's logits predict it and
which pair/branch it belongs to, so one function (``raystep.train.step.branch_logps``) sums log-probs
for either layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from raystep.steps import build_prompt

Layout = Literal["shared", "two_sequence"]


@dataclass
class TokenizedPair:
    """One pair as token ids; ``index`` is its row in the pair file (stable across reruns)."""

    index: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_cut: int = 0
    """Prompt tokens removed from the left to fit ``max_length``."""
    response_cut: int = 0
    """Step tokens removed from the right (only when a step alone exceeds its budget)."""
    ref_chosen_logp: float | None = None
    ref_rejected_logp: float | None = None

    @property
    def shared_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)

    @property
    def two_sequence_tokens(self) -> int:
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


def pair_texts(
    row: dict[str, Any], template: str, mode: str = "stepdpo", tokenizer: Any = None
) -> tuple[str, str, str]:
    """(prompt text, chosen text, rejected text) for a pair row in the public schema.

    ``full_chosen`` / ``full_rejected`` continue ``initial_reason_steps`` from step k to the end (as
    rectify writes them), so a whole response is ``initial_reason_steps + full_*``.

    ``stepdpo``: the prompt continues the correct prefix (Step-DPO's joining), branches are step bodies.
    ``dpo``: whole responses. The prompt holds the shared prefix and the branches the two full
    continuations: the prefix's log-probs are the same in both branches and cancel in the DPO loss.
    ``sft``: the bare template prompt, branches are the two whole responses (the loss uses chosen only).
    """
    if mode in ("dpo", "sft"):
        chosen, rejected = row.get("full_chosen") or "", row.get("full_rejected") or ""
        if not chosen.strip() or not rejected.strip():
            raise ValueError(f"mode {mode!r} needs non-empty full_chosen and full_rejected")
        prefixed = build_prompt(template, row["prompt"], row["initial_reason_steps"], tokenizer=tokenizer)
        if mode == "dpo":
            return prefixed, chosen, rejected
        head = build_prompt(template, row["prompt"], "", tokenizer=tokenizer)
        prefix = prefixed[len(head) :]
        return head, prefix + chosen, prefix + rejected
    prompt = build_prompt(template, row["prompt"], row["initial_reason_steps"], tokenizer=tokenizer)
    return prompt, row["chosen"], row["rejected"]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_pair(
    row: dict[str, Any],
    tokenizer: Any,
    *,
    index: int,
    template: str,
    mode: str = "stepdpo",
    max_length: int = 1024,
    max_prompt_length: int = 512,
) -> TokenizedPair:
    """Tokenize one pair; the prompt is cut from the left so ``prompt + longest step <= max_length``.

    A step longer than ``max_length - max_prompt_length`` is itself cut from the right (counted in
    ``response_cut``): the prompt then keeps at least ``max_prompt_length`` tokens of context.
    """
    prompt, chosen, rejected = pair_texts(row, template, mode, tokenizer)
    p, c, r = _ids(tokenizer, prompt), _ids(tokenizer, chosen), _ids(tokenizer, rejected)
    if not c or not r:
        raise ValueError(f"pair {index}: chosen or rejected has no tokens")
    response_budget = max_length - min(max_prompt_length, len(p))
    response_cut = max(0, len(c) - response_budget) + max(0, len(r) - response_budget)
    c, r = c[:response_budget], r[:response_budget]
    prompt_budget = max_length - max(len(c), len(r))
    prompt_cut = max(0, len(p) - prompt_budget)
    if prompt_cut:
        p = p[prompt_cut:]
    ref_c, ref_r = row.get("ref_chosen_logp"), row.get("ref_rejected_logp")
    return TokenizedPair(
        index=index,
        prompt_ids=p,
        chosen_ids=c,
        rejected_ids=r,
        prompt_cut=prompt_cut,
        response_cut=response_cut,
        ref_chosen_logp=None if ref_c is None else float(ref_c),
        ref_rejected_logp=None if ref_r is None else float(ref_r),
    )


def tokenize_pairs(rows: Sequence[dict[str, Any]], tokenizer: Any, **kwargs: Any) -> list[TokenizedPair]:
    return [tokenize_pair(row, tokenizer, index=i, **kwargs) for i, row in enumerate(rows)]


@dataclass
class Batch:
    """Model inputs plus the step-token targets of ``num_pairs`` pairs (slot 2i = chosen, 2i+1 = rejected).

    ``tgt_row/tgt_pos`` locate the logits that predict ``tgt_tok``; ``tgt_slot`` is the branch it adds to.
    ``keep`` marks the positions whose logits are needed (passed as ``logits_to_keep``).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    keep: torch.Tensor
    tgt_row: torch.Tensor
    tgt_pos: torch.Tensor
    tgt_tok: torch.Tensor
    tgt_slot: torch.Tensor
    num_pairs: int
    ref_logps: torch.Tensor | None = None
    """``[2 * num_pairs]`` reference log-probs (chosen, rejected interleaved) when precomputed."""
    real_tokens: int = 0
    """Non-padding tokens the model processes for this batch."""

    def to(self, device: torch.device | str) -> Batch:
        moved = {
            name: getattr(self, name).to(device)
            for name in (
                "input_ids",
                "position_ids",
                "attention_mask",
                "keep",
                "tgt_row",
                "tgt_pos",
                "tgt_tok",
                "tgt_slot",
            )
        }
        ref = None if self.ref_logps is None else self.ref_logps.to(device)
        return Batch(
            **moved,
            num_pairs=self.num_pairs,
            ref_logps=ref,
            real_tokens=self.real_tokens,
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "attention_mask": self.attention_mask,
            "logits_to_keep": self.keep,
        }


def pack_rows(pairs: Sequence[TokenizedPair], pack_tokens: int) -> list[list[int]]:
    """Group pair positions (indices into ``pairs``) into rows of at most ``pack_tokens`` shared tokens.

    First fit in the given order, so the grouping is deterministic; a pair longer than the budget gets
    a row of its own.
    """
    rows: list[list[int]] = []
    sizes: list[int] = []
    for i, pair in enumerate(pairs):
        n = pair.shared_tokens
        for r, used in enumerate(sizes):
            if used + n <= pack_tokens:
                rows[r].append(i)
                sizes[r] += n
                break
        else:
            rows.append([i])
            sizes.append(n)
    return rows


def _ref_tensor(pairs: Sequence[TokenizedPair]) -> torch.Tensor | None:
    if any(p.ref_chosen_logp is None or p.ref_rejected_logp is None for p in pairs):
        return None
    values = [v for p in pairs for v in (p.ref_chosen_logp, p.ref_rejected_logp)]
    return torch.tensor(values, dtype=torch.float32)


def build_batch(
    pairs: Sequence[TokenizedPair], layout: Layout = "shared", pack_tokens: int = 4096, pad_id: int = 0
) -> Batch:
    """Lay out ``pairs`` as one model batch in the chosen layout (see the module docstring)."""
    if not pairs:
        raise ValueError("build_batch needs at least one pair")
    # Each segment: (pair slot base, list of (token ids, branch)) laid out in one row.
    row_tokens: list[list[int]] = []
    row_pos: list[list[int]] = []
    row_group: list[list[int]] = []  # pair id per token (-1 pad) for block-diagonal masking
    row_branch: list[list[int]] = []  # 0 prompt, 1 chosen, 2 rejected
    targets: list[tuple[int, int, int, int]] = []  # row, source position, token, slot

    def add_pair(row: int, k: int, pair: TokenizedPair, branches: Sequence[int]) -> None:
        toks, pos, grp, br = row_tokens[row], row_pos[row], row_group[row], row_branch[row]
        start = len(toks)
        p = len(pair.prompt_ids)
        toks.extend(pair.prompt_ids)
        pos.extend(range(p))
        grp.extend([k] * p)
        br.extend([0] * p)
        last_prompt = start + p - 1
        for branch in branches:
            ids = pair.chosen_ids if branch == 1 else pair.rejected_ids
            slot = 2 * k + (branch - 1)
            first = len(toks)
            toks.extend(ids)
            pos.extend(range(p, p + len(ids)))
            grp.extend([k] * len(ids))
            br.extend([branch] * len(ids))
            # token j of the branch is predicted from the position before it; the first from the prompt's end
            for j, tok in enumerate(ids):
                targets.append((row, last_prompt if j == 0 else first + j - 1, tok, slot))

    def new_row() -> int:
        for lst in (row_tokens, row_pos, row_group, row_branch):
            lst.append([])
        return len(row_tokens) - 1

    if layout == "shared":
        for members in pack_rows(pairs, pack_tokens):
            row = new_row()
            for k in members:
                add_pair(row, k, pairs[k], (1, 2))
    elif layout == "two_sequence":
        for k, pair in enumerate(pairs):
            add_pair(new_row(), k, pair, (1,))
            add_pair(new_row(), k, pair, (2,))
    else:
        raise ValueError(f"unknown layout {layout!r}")

    n_rows = len(row_tokens)
    length = max(len(t) for t in row_tokens)
    input_ids = torch.full((n_rows, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, length), dtype=torch.long)
    group = torch.full((n_rows, length), -1, dtype=torch.long)
    branch = torch.zeros((n_rows, length), dtype=torch.long)
    for r in range(n_rows):
        n = len(row_tokens[r])
        input_ids[r, :n] = torch.tensor(row_tokens[r])
        position_ids[r, :n] = torch.tensor(row_pos[r])
        position_ids[r, n:] = torch.arange(length - n)
        group[r, :n] = torch.tensor(row_group[r])
        branch[r, :n] = torch.tensor(row_branch[r])
    # two-sequence rows are plain causal sequences: a 2D padding mask lets HF pick its fastest kernel
    mask = attention_mask_4d(group, branch) if layout == "shared" else (group >= 0).long()
    tgt = torch.tensor(targets, dtype=torch.long)
    keep = torch.zeros((n_rows, length), dtype=torch.bool)
    keep[tgt[:, 0], tgt[:, 1]] = True
    return Batch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=mask,
        keep=keep,
        tgt_row=tgt[:, 0],
        tgt_pos=tgt[:, 1],
        tgt_tok=tgt[:, 2],
        tgt_slot=tgt[:, 3],
        num_pairs=len(pairs),
        ref_logps=_ref_tensor(pairs),
        real_tokens=sum(len(t) for t in row_tokens),
    )


def attention_mask_4d(group: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """``[B, 1, L, L]`` bool mask (True = may attend): causal, within one pair, rejected blind to chosen.

    Padding (group -1) attends only to itself so no softmax row is empty (sdpa would return NaN).
    """
    length = group.shape[1]
    causal = torch.ones((length, length), dtype=torch.bool).tril()
    same = (group[:, :, None] == group[:, None, :]) & (group[:, :, None] >= 0)
    rejected_to_chosen = (branch[:, :, None] == 2) & (branch[:, None, :] == 1)
    allowed = causal[None] & same & ~rejected_to_chosen
    allowed |= torch.eye(length, dtype=torch.bool)[None]
    return allowed[:, None]
