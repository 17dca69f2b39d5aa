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
  a token budget, block-diagonal across pairs. ``position_ids`` plus the attention rule carry the layout
  through a stock Hugging Face model; ``raystep.train.attention`` applies the rule as a dense ``sdpa``
  mask, a flex ``BlockMask`` or per-span ``sdpa`` (``varlen``), so packing need not cost the square of the row.

Both produce a ``Batch`` whose targets say, for every step token, which position's logits predict it and
which pair/branch it belongs to, so one function (``raystep.train.batch_loss.branch_logps``) sums log-probs
for either layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from raystep.steps import build_prompt
from raystep.train import attention as attn
from raystep.train.attention import Attention

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
    """A micro-batch as compact host (or device) tensors; ``model_inputs`` expands it where it lives.

    Only token ids and small index tables cross to the device: position ids, the attention mask (dense,
    block-sparse or per-span, see ``raystep.train.attention``) and the logit selection are built from
    them on the batch's own device, so no ``[B, L, L]`` mask is ever made on the host or copied.
    Pair ``i``'s branches are slots ``2i`` (chosen) and ``2i + 1`` (rejected).
    """

    input_ids: torch.Tensor
    """``[rows, length]`` token ids, right-padded."""
    segments: torch.Tensor
    """``[S, 6]`` runs of tokens: row, start, length, first position id, span, branch (0 prompt, 1 chosen,
    2 rejected)."""
    spans: list[tuple[int, int, int, int, int]]
    """Row, start, length, prompt tokens, chosen tokens of each span (the tokens that may see each other:
    one pair in the shared layout, one branch in the two-sequence layout); host ints, never moved."""
    targets: torch.Tensor
    """``[T, 4]`` per step token: row and position of the logits that predict it, the token, its slot."""
    num_pairs: int
    layout: Layout = "shared"
    attention: Attention = "sdpa"
    ref_logps: torch.Tensor | None = None
    """``[2 * num_pairs]`` reference log-probs (chosen, rejected interleaved) when precomputed."""
    real_tokens: int = 0
    """Non-padding tokens the model processes for this batch."""
    logit_positions: int = 0
    """Positions whose logits the step needs (the LM head runs on these only)."""
    attended: int = 0
    """Query-key pairs the attention rule allows (for FLOP counts: about L^2 / 2 per span, causal)."""
    _inputs: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """The same batch on ``device``; on CUDA the copies come from pinned memory and do not block."""
        device = torch.device(device)
        pin = non_blocking and device.type == "cuda"

        def move(t: torch.Tensor) -> torch.Tensor:
            if t.device == device:
                return t
            return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

        return replace(
            self,
            input_ids=move(self.input_ids),
            segments=move(self.segments),
            targets=move(self.targets),
            ref_logps=None if self.ref_logps is None else move(self.ref_logps),
            _inputs=None,
        )

    def model_inputs(self) -> dict[str, Any]:
        """HF ``forward`` keyword arguments, built (once) on the batch's device."""
        if self._inputs is None:
            self._inputs = self._build_inputs()
        return self._inputs

    def _build_inputs(self) -> dict[str, Any]:
        rows, length = self.input_ids.shape
        position_ids, group, branch = expand_segments(self.segments, rows, length, self.real_tokens)
        keep = torch.zeros((rows, length), dtype=torch.bool, device=self.input_ids.device)
        keep[self.targets[:, 0], self.targets[:, 1]] = True
        if self.attention == "flex":
            mask: Any = attn.block_mask(group, branch)
        elif self.attention == "varlen":
            mask = attn.span_plan(self.spans, rows, length, self.input_ids.device)
        elif self.layout == "two_sequence":  # plain causal rows: a 2D padding mask lets sdpa pick its kernel
            mask = (group >= 0).long()
        else:
            mask = attn.dense_mask(group, branch)
        return {
            "input_ids": self.input_ids,
            "position_ids": position_ids,
            "attention_mask": mask,
            "logits_to_keep": keep,
        }


def expand_segments(
    segments: torch.Tensor, rows: int, length: int, tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token ``position_ids``, span id (-1 on padding) and branch code from the segment table.

    ``tokens`` (the real token count, known on the host) sizes the expansion, so nothing waits on the device.
    """
    device = segments.device
    lengths = segments[:, 2]
    run = torch.repeat_interleave(torch.arange(len(segments), device=device), lengths, output_size=tokens)
    starts = torch.cumsum(lengths, 0) - lengths
    offset = torch.arange(tokens, device=device) - starts[run]
    seg = segments[run]
    flat = seg[:, 0] * length + seg[:, 1] + offset
    position_ids = torch.zeros(rows * length, dtype=torch.long, device=device)
    position_ids[flat] = seg[:, 3] + offset
    group = torch.full((rows * length,), -1, dtype=torch.long, device=device)
    group[flat] = seg[:, 4]
    branch = torch.zeros(rows * length, dtype=torch.long, device=device)
    branch[flat] = seg[:, 5]
    return position_ids.view(rows, length), group.view(rows, length), branch.view(rows, length)


def pack_rows(
    pairs: Sequence[TokenizedPair], pack_tokens: int, pairs_per_row: int | None = None
) -> list[list[int]]:
    """Group pair positions (indices into ``pairs``) into rows of at most ``pack_tokens`` shared tokens
    (and at most ``pairs_per_row`` pairs when given).

    First fit in the given order, so the grouping is deterministic; a pair longer than the budget gets
    a row of its own.
    """
    rows: list[list[int]] = []
    sizes: list[int] = []
    cap = pairs_per_row or len(pairs)
    for i, pair in enumerate(pairs):
        n = pair.shared_tokens
        for r, used in enumerate(sizes):
            if used + n <= pack_tokens and len(rows[r]) < cap:
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
    pairs: Sequence[TokenizedPair],
    layout: Layout = "shared",
    pack_tokens: int = 4096,
    pad_id: int = 0,
    attention: Attention = "sdpa",
    pairs_per_row: int | None = None,
) -> Batch:
    """Lay out ``pairs`` as one model batch (see the module docstring); host tensors, index tables only."""
    if not pairs:
        raise ValueError("build_batch needs at least one pair")
    if layout not in ("shared", "two_sequence"):
        raise ValueError(f"unknown layout {layout!r}")
    rows: list[list[int]] = []  # token ids per row
    segments: list[
        tuple[int, int, int, int, int, int]
    ] = []  # row, start, length, first position, span, branch
    spans: list[tuple[int, int, int, int, int]] = []  # row, start, length, prompt, chosen
    targets: list[tuple[int, int, int, int]] = []  # row, source position, token, slot

    attended = 0

    def add_span(row: int, k: int, pair: TokenizedPair, branches: Sequence[int]) -> None:
        nonlocal attended
        toks = rows[row]
        span, start, p = len(spans), len(toks), len(pair.prompt_ids)
        attended += p * (p + 1) // 2
        toks.extend(pair.prompt_ids)
        segments.append((row, start, p, 0, span, 0))
        last_prompt = start + p - 1
        for branch in branches:
            ids = pair.chosen_ids if branch == 1 else pair.rejected_ids
            first = len(toks)
            toks.extend(ids)
            attended += len(ids) * p + len(ids) * (len(ids) + 1) // 2
            segments.append((row, first, len(ids), p, span, branch))  # both branches continue the prompt
            slot = 2 * k + (branch - 1)
            # token j of the branch is predicted from the position before it; the first from the prompt's end
            targets.extend(
                (row, last_prompt if j == 0 else first + j - 1, tok, slot) for j, tok in enumerate(ids)
            )
        chosen = len(pair.chosen_ids) if 1 in branches else 0
        spans.append((row, start, len(toks) - start, p, chosen))

    if layout == "shared":
        for members in pack_rows(pairs, pack_tokens, pairs_per_row):
            rows.append([])
            for k in members:
                add_span(len(rows) - 1, k, pairs[k], (1, 2))
    else:
        for k, pair in enumerate(pairs):
            for branch in (1, 2):
                rows.append([])
                add_span(len(rows) - 1, k, pair, (branch,))

    length = max(len(t) for t in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for r, toks in enumerate(rows):
        input_ids[r, : len(toks)] = torch.tensor(toks, dtype=torch.long)
    return Batch(
        input_ids=input_ids,
        segments=torch.tensor(segments, dtype=torch.long),
        spans=spans,
        targets=torch.tensor(targets, dtype=torch.long),
        num_pairs=len(pairs),
        layout=layout,
        attention=attention,
        ref_logps=_ref_tensor(pairs),
        real_tokens=sum(len(t) for t in rows),
        logit_positions=len({(t[0], t[1]) for t in targets}),
        attended=attended,
    )
