"""Batched incremental decoding with per-request sampling, for the CPU server.

``model.generate`` takes one temperature / top-p / seed for the whole batch and streams only batch
size 1, while a server batches unrelated requests that each bring their own sampling values and
want their tokens as they come. So this is a small decode loop over a KV cache: left-padded prompts,
one forward per step for the whole batch, then each row sampled with its own parameters and its own
seeded generator, and its new text checked against its own stop strings. Serve's ``@serve.batch``
drives the generator one step at a time.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DecodeRequest:
    """One sequence to continue; ``temperature == 0`` is greedy."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    cancelled: bool = False
    """Set by the server when the client went away: the row stops at the next step."""


@dataclass
class DecodeDelta:
    """What one step added to one sequence: new text (may be empty), and the end when it ended."""

    text: str
    finish_reason: str | None
    completion_tokens: int


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could still become a stop string (or a split UTF-8 character)."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    if text.endswith("\ufffd"):
        hold = max(hold, len(text) - len(text.rstrip("\ufffd")))
    return hold


class _Row:
    """Decoding state of one sequence."""

    def __init__(self, request: DecodeRequest) -> None:
        self.request = request
        self.ids: list[int] = []
        self.emitted = 0
        self.done = False
        seed = request.seed if request.seed is not None else secrets.randbits(62)
        self.generator = torch.Generator().manual_seed(seed)


class BatchDecoder:
    """Continues a batch of prompts token by token; one instance per loaded model."""

    def __init__(self, model: Any, tokenizer: Any, eos_token_ids: list[int]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos = set(eos_token_ids)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else eos_token_ids[0]

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        out: list[int] = []
        for i, row in enumerate(rows):
            req = row.request
            if row.done:
                out.append(self.pad_id)
                continue
            if req.temperature <= 0.0:
                out.append(int(torch.argmax(logits[i])))
                continue
            scaled = logits[i] / req.temperature
            probs = torch.softmax(scaled, dim=-1)
            if req.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                cumulative = torch.cumsum(sorted_probs, dim=-1)
                # Keep the smallest prefix whose mass reaches top_p (always at least one token).
                drop = cumulative - sorted_probs >= req.top_p
                sorted_probs = sorted_probs.masked_fill(drop, 0.0)
                choice = torch.multinomial(sorted_probs, 1, generator=row.generator)
                out.append(int(order[choice]))
            else:
                out.append(int(torch.multinomial(probs, 1, generator=row.generator)))
        return out

    def _advance(self, row: _Row, token: int) -> DecodeDelta | None:
        """Add one token to a row; the delta to report, or None once the row has been reported done."""
        if row.done:
            return None
        req = row.request
        finish: str | None = None
        if req.cancelled:
            row.done = True
            return DecodeDelta("", "abort", len(row.ids))
        if token in self.eos:
            finish = "stop"
            text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
            row.ids.append(token)
        else:
            row.ids.append(token)
            text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
            cut = min(
                (i for i in (text.find(s, max(0, row.emitted - len(s))) for s in req.stop) if i >= 0),
                default=-1,
            )
            if cut >= 0:
                text, finish = text[:cut], "stop"
            elif len(row.ids) >= req.max_tokens:
                finish = "length"
        if finish is None:
            end = len(text) - _held_back(text, req.stop)
        else:
            end = len(text)
            row.done = True
        delta = text[row.emitted : max(end, row.emitted)]
        row.emitted = max(end, row.emitted)
        return DecodeDelta(delta, finish, len(row.ids))

    @torch.inference_mode()
    def run(self, requests: list[DecodeRequest]) -> Iterator[list[DecodeDelta | None]]:
        """Yield, per step, one entry per request: its delta, or None after it has finished."""
        rows = [_Row(r) for r in requests]
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(requests):
            n = len(r.prompt_ids)
            input_ids[i, width - n :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        past = None
        for _ in range(max(r.max_tokens for r in requests)):
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            tokens = self._sample(out.logits[:, -1, :].float(), rows)
            yield [self._advance(row, tok) for row, tok in zip(rows, tokens, strict=True)]
            if all(row.done for row in rows):
                return
            input_ids = torch.tensor(tokens, dtype=torch.long)[:, None]
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
