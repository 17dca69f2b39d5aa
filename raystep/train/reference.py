"""Reference log-probs computed once, before the first update, and stored with the pairs.

The DPO reference is the starting policy, so one no-grad pass over the pairs at step 0 gives every
``ref_chosen_logp`` / ``ref_rejected_logp`` and training then holds a single model (half the memory of a
frozen copy, and no reference forward per step). Inside the Ray Train loop every rank scores its share
(all ranks run the same number of forwards, which ZeRO-3 needs) and the shares are all-gathered.
The result is written as ``train/reference.parquet`` (the pairs plus the two columns) and into each
checkpoint, so a resumed run never recomputes it from an already-updated policy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from raystep.records import read_parquet, write_parquet
from raystep.train.attention import Attention
from raystep.train.batch_loss import branch_logps
from raystep.train.pairs import TokenizedPair, build_batch

RefTable = dict[int, tuple[float, float]]
"""pair index -> (ref chosen logp, ref rejected logp)."""


@torch.no_grad()
def score_pairs(
    model: Any,
    pairs: Sequence[TokenizedPair],
    *,
    batch_pairs: int = 8,
    pack_tokens: int = 4096,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    pad_id: int = 0,
    attention: Attention = "sdpa",
) -> RefTable:
    """This rank's share of the summed branch log-probs (prefix-shared layout, the cheap one).

    Ranks run ``ceil(len/world/batch)`` forwards each; a rank with fewer pairs repeats its last batch
    (results discarded) so collective parameter gathers stay in lockstep.
    """
    mine = list(pairs[rank::world_size])
    per_rank = -(-len(pairs) // world_size)
    n_batches = max(1, -(-per_rank // batch_pairs))
    scored: list[tuple[list[TokenizedPair], torch.Tensor]] = []
    for b in range(n_batches):
        chunk = mine[b * batch_pairs : (b + 1) * batch_pairs]
        dummy = not chunk
        if dummy:
            chunk = list(pairs[:1])
        batch = build_batch(chunk, "shared", pack_tokens, pad_id, attention).to(device)
        logps, _ = branch_logps(model, batch)
        if not dummy:
            scored.append((chunk, logps.float()))
    out: RefTable = {}
    if not scored:
        return out
    values = torch.cat([logps for _, logps in scored]).cpu().tolist()  # one host sync for the whole pass
    flat = [pair for chunk, _ in scored for pair in chunk]
    for k, pair in enumerate(flat):
        out[pair.index] = (values[2 * k], values[2 * k + 1])
    return out


def attach(pairs: Sequence[TokenizedPair], table: RefTable) -> None:
    """Store reference log-probs on the tokenized pairs (in place); every pair must be in the table."""
    missing = [p.index for p in pairs if p.index not in table]
    if missing:
        raise ValueError(f"reference log-probs missing for {len(missing)} pairs (first: {missing[:5]})")
    for p in pairs:
        p.ref_chosen_logp, p.ref_rejected_logp = table[p.index]


def write_reference(
    path: str | Path, rows: Sequence[dict[str, Any]], table: RefTable, fingerprint: dict
) -> None:
    """The pair rows with ``ref_chosen_logp`` / ``ref_rejected_logp`` filled, plus a fingerprint file."""
    path = Path(path)
    out = [
        {**row, "ref_chosen_logp": table[i][0], "ref_rejected_logp": table[i][1]}
        for i, row in enumerate(rows)
    ]
    write_parquet(path, out)
    path.with_suffix(".json").write_text(json.dumps(fingerprint, indent=2, sort_keys=True))


def read_reference(path: str | Path, fingerprint: dict) -> RefTable | None:
    """The stored table when it exists and was made for the same model, pairs and tokenization."""
    path = Path(path)
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        return None
    if json.loads(meta.read_text()) != json.loads(json.dumps(fingerprint, sort_keys=True)):
        return None
    return table_from_rows(read_parquet(path))


def table_from_rows(rows: Sequence[dict[str, Any]]) -> RefTable | None:
    """Reference values carried by the input pairs themselves (all rows, or None)."""
    if rows and all(
        r.get("ref_chosen_logp") is not None and r.get("ref_rejected_logp") is not None for r in rows
    ):
        return {i: (float(r["ref_chosen_logp"]), float(r["ref_rejected_logp"])) for i, r in enumerate(rows)}
    return None
