"""The ``hf`` engine: ``transformers`` ``generate``, batched with left padding, on CPU or GPU.

``HFGenerator`` works without Ray (localizer rollouts inside an actor, benchmarks); ``HFEngineUDF`` wraps
it as a Ray Data class-based UDF (one model per actor). Sampling is reproducible per row whatever the
batch it lands in: each row draws its noise from its own ``torch.Generator`` seeded with the row's seed
(Gumbel-max: add Gumbel noise to the temperature-scaled, top-p-filtered logits and take the argmax,
which samples exactly from that distribution), so same prompt + same seed -> same text.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from raystep.engines.base import error_output, normalize_sampling, truncate_at_stop

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class PerRowGumbelSampler:
    """A logits processor that turns greedy search into per-row seeded sampling.

    Greedy search takes ``argmax(scores)``; adding Gumbel noise to ``log softmax(logits / T)`` (after
    the top-p mask) makes that argmax a sample of the filtered distribution. Each row's noise comes from
    its own generator, so its draws do not depend on the other rows of the batch. Temperature 0 leaves
    the row greedy.
    """

    def __init__(self, seeds: Sequence[int], temperatures: Sequence[float], top_ps: Sequence[float]):
        import torch

        self.generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        self.temperatures = [float(t) for t in temperatures]
        self.top_ps = [float(p) for p in top_ps]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        out = scores.clone().float()
        for i, gen in enumerate(self.generators):
            temperature = self.temperatures[i]
            if temperature <= 0.0:
                continue
            logits = out[i] / temperature
            if self.top_ps[i] < 1.0:
                probs = torch.softmax(logits, dim=-1)
                sorted_probs, order = torch.sort(probs, descending=True)
                cumulative = torch.cumsum(sorted_probs, dim=-1)
                drop_sorted = (cumulative - sorted_probs) > self.top_ps[i]
                drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
                logits = logits.masked_fill(drop, float("-inf"))
            uniform = torch.rand(logits.shape, generator=gen, dtype=torch.float32).to(logits.device)
            gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
            out[i] = torch.log_softmax(logits, dim=-1) + gumbel
        return out


class HFGenerator:
    """A causal LM and its tokenizer; ``generate`` returns one completion per prompt (the row contract)."""

    def __init__(
        self,
        model_path: str,
        *,
        tokenizer: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 16,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = model_path
        self.device = device or _default_device()
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(
            tokenizer or model_path, trust_remote_code=trust_remote_code
        )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if dtype == "auto":
            torch_dtype: Any = torch.float32 if self.device == "cpu" else "auto"
        else:
            torch_dtype = getattr(torch, _DTYPES[dtype])
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch_dtype, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None:
            eos_ids = [*eos_ids, self.tokenizer.eos_token_id]
        self.eos_ids = sorted({int(e) for e in eos_ids})
        self.pad_id = int(self.tokenizer.pad_token_id)

    def generate(
        self, prompts: Sequence[str], sampling: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Complete each prompt; ``sampling`` is one dict for all prompts or one dict per prompt.

        Returns dicts with ``generated_text``, ``num_generated_tokens``, ``finish_reason`` (stop strings
        are cut off, as vLLM does). Prompts are grouped by (max_new_tokens, stop) and batched.
        """
        per_row = (
            [normalize_sampling(sampling)] * len(prompts)
            if isinstance(sampling, Mapping)
            else [normalize_sampling(s) for s in sampling]
        )
        if len(per_row) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(per_row)} sampling dicts")
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for i, s in enumerate(per_row):
            groups.setdefault((s["max_new_tokens"], tuple(s["stop"])), []).append(i)
        results: list[dict[str, Any] | None] = [None] * len(prompts)
        for (max_new, stop), indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                outs = self._generate_batch(
                    [prompts[i] for i in chunk], [per_row[i] for i in chunk], max_new, stop
                )
                for i, out in zip(chunk, outs, strict=True):
                    results[i] = out
        return [r for r in results if r is not None]

    def _generate_batch(
        self, prompts: list[str], sampling: list[dict[str, Any]], max_new_tokens: int, stop: tuple[str, ...]
    ) -> list[dict[str, Any]]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        sampler = PerRowGumbelSampler(
            [s["seed"] for s in sampling],
            [s["temperature"] for s in sampling],
            [s["top_p"] for s in sampling],
        )
        # A fresh config: greedy over the sampler's scores, and none of the checkpoint's own
        # sampling defaults (repetition penalty, top-k) that vLLM would not apply either.
        gen_config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            stop_strings=list(stop) or None,
        )
        with torch.no_grad():
            output = self.model.generate(
                **enc,
                generation_config=gen_config,
                logits_processor=LogitsProcessorList([sampler]),
                tokenizer=self.tokenizer if stop else None,
            )
        new_tokens = output[:, enc["input_ids"].shape[1] :].tolist()
        ends = set(self.eos_ids) | {self.pad_id}
        results = []
        for tokens in new_tokens:
            length = next((j for j, t in enumerate(tokens) if t in ends), None)
            hit_eos = length is not None and tokens[length] in self.eos_ids
            kept = tokens[: length if length is not None else len(tokens)]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            text, hit_stop = truncate_at_stop(text, stop)
            count = len(kept) + (1 if hit_eos else 0)
            reason = "stop" if hit_eos or hit_stop or count < max_new_tokens else "length"
            results.append({"generated_text": text, "num_generated_tokens": count, "finish_reason": reason})
        return results


class HFEngineUDF:
    """Ray Data class-based UDF: one ``HFGenerator`` per actor, a batch of contract rows in and out.

    A batch that fails is retried row by row; a row that still fails is returned with ``finish_reason
    = "error"`` and its ``generation_error``, so nothing is lost and the failure is counted downstream.
    """

    def __init__(self, model_path: str, defaults: dict[str, Any] | None = None, **kwargs: Any):
        self.generator = HFGenerator(model_path, **kwargs)
        self.defaults = defaults or {}

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        rows = batch.to_pylist()
        return pa.Table.from_pylist(self.process(rows))

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            sampling = [normalize_sampling(r.get("sampling"), self.defaults) for r in rows]
            outs = self.generator.generate([r["prompt"] for r in rows], sampling)
            return [
                {**r, "sampling": s, **o, "generation_error": None}
                for r, s, o in zip(rows, sampling, outs, strict=True)
            ]
        except Exception:
            if len(rows) == 1:
                return [error_output(rows[0], traceback.format_exc(limit=3))]
            return [out for r in rows for out in self.process([r])]
