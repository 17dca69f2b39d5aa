"""The row contract every generation engine honours, and the fan-out that turns N samples into N rows.

Rows in carry ``prompt`` (the full text to continue) and ``sampling`` (a dict: temperature, top_p,
max_new_tokens, seed, stop) plus any pass-through columns. Rows out are the same rows plus
``generated_text``, ``num_generated_tokens``, ``finish_reason`` (``stop`` | ``length`` | ``error``) and
``generation_error`` (None, or the message of a failed generation: the row is kept, never dropped).

Engines return one completion per row (vLLM's Ray Data processor keeps only the first completion of
``n``), so N samples per prompt are N rows, each with its own recorded seed. Seeds are derived from
stable keys, not from row order, so a resumed or re-batched run draws the same samples. The N seeds of
one prompt are consecutive (:func:`sample_seeds`), the seeds vLLM gives the ``n`` choices of one
request (choice j: ``seed + j``), so an engine may send them as one request and draw the same samples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

INPUT_COLUMNS: tuple[str, ...] = ("prompt", "sampling")
OUTPUT_COLUMNS: tuple[str, ...] = (
    "generated_text",
    "num_generated_tokens",
    "finish_reason",
    "generation_error",
)
SAMPLING_KEYS: tuple[str, ...] = ("temperature", "top_p", "max_new_tokens", "seed", "stop")
FINISH_REASONS: tuple[str, ...] = ("stop", "length", "error")


def derive_seed(base: int, *keys: object) -> int:
    """A 31-bit seed from a base seed and stable keys (problem id, sample index...).

    ``hash()`` is salted per process, so a sha256 of the keys is used: the same keys give the same
    seed in every process, on every machine, in every rerun.
    """
    text = ":".join([str(base), *(str(k) for k in keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def sample_seeds(base: int, n: int, *keys: object) -> list[int]:
    """The seeds of N samples of one prompt: ``derive_seed(base, *keys) + j``, consecutive, like the seeds
    vLLM gives the ``n`` choices of a request seeded with the first, so that N rows and one request with
    ``n = N`` draw the same samples (``raystep.engines.endpoint`` sends them so)."""
    first = derive_seed(base, *keys)
    return [first + j for j in range(n)]


def make_sampling(
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    stop: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """One row's sampling parameters in the engine-neutral form."""
    return {
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": int(max_new_tokens),
        "seed": int(seed),
        "stop": [str(s) for s in stop],
    }


def normalize_sampling(sampling: Any, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A row's ``sampling`` as a complete dict (it may arrive as a JSON string or with gaps).

    Missing keys come from ``defaults``; a key missing from both is an error naming it.
    """
    if isinstance(sampling, str):
        sampling = json.loads(sampling) if sampling.strip() else {}
    merged: dict[str, Any] = dict(defaults or {})
    merged.update({k: v for k, v in dict(sampling or {}).items() if v is not None})
    missing = [k for k in SAMPLING_KEYS if k not in merged and k != "stop"]
    if missing:
        raise ValueError(f"sampling is missing {missing}; got {sorted(merged)}")
    stop = merged.get("stop")
    return make_sampling(
        temperature=merged["temperature"],
        top_p=merged["top_p"],
        max_new_tokens=merged["max_new_tokens"],
        seed=merged["seed"],
        stop=list(stop) if stop is not None else [],
    )


def fan_out(
    row: Mapping[str, Any], n: int, sampling: Mapping[str, Any], key: str = "id"
) -> list[dict[str, Any]]:
    """N copies of ``row``, one per sample, each with ``sample_index``, its own ``seed`` and ``sampling``.

    The seeds are ``sample_seeds(sampling['seed'], n, row[key])``: reproducible per row whatever the
    batch, the shard or the number of replicas.
    """
    out = []
    for i, seed in enumerate(sample_seeds(int(sampling["seed"]), n, row[key])):
        out.append({**row, "sample_index": i, "seed": seed, "sampling": {**sampling, "seed": seed}})
    return out


def truncate_at_stop(text: str, stop: list[str] | tuple[str, ...]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string (excluded, as vLLM does); True when one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def error_output(row: Mapping[str, Any], error: str) -> dict[str, Any]:
    """The output row of a failed generation: kept with its error so it is counted, not lost."""
    return {
        **row,
        "generated_text": "",
        "num_generated_tokens": 0,
        "finish_reason": "error",
        "generation_error": error,
    }


def check_output_row(row: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when an engine's output row breaks the contract (used by tests and engines)."""
    for name in (*INPUT_COLUMNS, *OUTPUT_COLUMNS):
        if name not in row:
            raise ValueError(f"engine output is missing column {name!r}")
    if not isinstance(row["generated_text"], str):
        raise ValueError("generated_text must be a string")
    if not isinstance(row["num_generated_tokens"], int) or row["num_generated_tokens"] < 0:
        raise ValueError("num_generated_tokens must be a non-negative int")
    if row["finish_reason"] not in FINISH_REASONS:
        raise ValueError(f"finish_reason {row['finish_reason']!r} is not one of {FINISH_REASONS}")
