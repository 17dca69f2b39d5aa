"""Attention for packed, prefix-shared rows: the mask logic once, three ways to run it.

A packed row holds several *spans* (one pair's ``[prompt | chosen | rejected]`` in the shared layout, one
branch's ``[prompt | step]`` in the two-sequence layout). A token may attend to an earlier token of its
own span, except that rejected tokens never see chosen ones; padding sees nothing. ``allowed`` states
that rule on per-token span ids and branch codes; every kernel below applies exactly it:

- ``sdpa``: the rule materialised as a dense ``[B, 1, L, L]`` bool mask for ``scaled_dot_product_attention``.
  Runs everywhere, but attention costs the square of the *row* length whatever the block structure,
  and on GPUs a dense mask rules out the fused flash kernels.
- ``flex``: the rule as a ``torch.nn.attention.flex_attention`` ``BlockMask``: blocks no query may
  attend to are skipped, so packing costs what the pairs cost. On CUDA ``flex_attention`` runs compiled
  (fused forward and backward). torch has no flex backward on CPU (its compiled CPU kernel is
  forward-only), so on CPU it serves checks and no-grad passes only.
- ``varlen``: ``sdpa`` span by span on views of the packed rows, each with its own small mask (or sdpa's
  causal kernel for a plain sequence): block-diagonal by construction, exact work, forward and backward
  on any device. The projections and MLP still run on the packed, padding-free rows.

``install`` points a Hugging Face model at one attention function (``raystep``) that dispatches on the
mask the batch carries, so a model serves all three without being reloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

Attention = Literal["sdpa", "flex", "varlen"]
ATTENTION_CHOICES = ("auto", "flex", "sdpa", "varlen")
IMPLEMENTATION = "raystep"
"""The name this module's attention function is registered under in transformers."""

FLEX_COMPILE: bool | None = None
"""Compile flex_attention (fused kernels): None = on CUDA only; eager (unfused, for checks) elsewhere."""


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
    except ImportError:
        return False
    return True


def resolve(setting: str, device: torch.device | str) -> Attention:
    """The attention a ``train.attention`` setting means on ``device``.

    ``auto``: ``flex`` on CUDA (fused block-sparse kernels), ``varlen`` elsewhere (exact, no row-wide mask,
    and it has a backward on CPU, which flex lacks). An explicit choice is returned as is.
    """
    if setting not in ATTENTION_CHOICES:
        raise ValueError(f"unknown attention {setting!r}; use one of {', '.join(ATTENTION_CHOICES)}")
    if setting != "auto":
        return setting  # type: ignore[return-value]
    if torch.device(device).type == "cuda" and flex_available():
        return "flex"
    return "varlen"


def allowed(
    q_group: torch.Tensor, q_branch: torch.Tensor, kv_group: torch.Tensor, kv_branch: torch.Tensor
) -> torch.Tensor:
    """Same span, real token, and not rejected -> chosen (causality is applied by the caller)."""
    return (q_group == kv_group) & (q_group >= 0) & ~((q_branch == 2) & (kv_branch == 1))


def dense_mask(group: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """``[B, 1, L, L]`` bool (True = may attend) for ``sdpa``. Padding attends to itself only, so no
    softmax row is empty (sdpa would return NaN for it)."""
    length = group.shape[1]
    idx = torch.arange(length, device=group.device)
    causal = idx[:, None] >= idx[None, :]
    ok = allowed(group[:, :, None], branch[:, :, None], group[:, None, :], branch[:, None, :]) & causal
    ok |= idx[:, None] == idx[None, :]
    return ok[:, None]


def block_mask(group: torch.Tensor, branch: torch.Tensor) -> Any:
    """The same rule as a flex ``BlockMask``, built on the tensors' device (padding attends to nothing:
    flex returns zeros for such rows, and their blocks are skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & allowed(
            group[b, q_idx], branch[b, q_idx], group[b, kv_idx], branch[b, kv_idx]
        )

    rows, length = group.shape
    return create_block_mask(
        mask_mod, rows, None, length, length, device=group.device, _compile=group.device.type == "cuda"
    )


@dataclass
class Spans:
    """Where each span sits and its own attention rule, for ``varlen``.

    ``table`` rows are host ints (row, start, length, prompt tokens, chosen tokens), so the per-span
    loop never asks the device for sizes; ``masks[i]`` is span i's ``[n, n]`` bool rule, or None where
    the span is a plain causal sequence (a two-sequence row) and sdpa's causal kernel applies.
    """

    table: list[tuple[int, int, int, int, int]]
    masks: list[torch.Tensor | None]
    rows: int
    length: int


def span_plan(table: list[tuple[int, int, int, int, int]], rows: int, length: int, device: Any) -> Spans:
    """The per-span masks, built on ``device``: causal, and rejected tokens blind to chosen ones."""
    masks: list[torch.Tensor | None] = []
    for _, _, n, prompt, chosen in table:
        if chosen == 0 or prompt + chosen == n:  # one branch only: plain causal
            masks.append(None)
            continue
        mask = torch.ones((n, n), dtype=torch.bool, device=device).tril_()
        mask[prompt + chosen :, prompt : prompt + chosen] = False
        masks.append(mask)
    return Spans(table=table, masks=masks, rows=rows, length=length)


def per_layer_type(model: Any, mask: Any) -> dict[str, Any]:
    """``mask`` for every layer type of ``model``: transformers models take a dict of prepared masks keyed
    by layer type and hand each entry to the attention function untouched (how ``Spans`` get there)."""
    config = _config(model)
    return dict.fromkeys(set(getattr(config, "layer_types", None) or ["full_attention"]), mask)


def varlen_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, spans: Spans, scaling: float | None
) -> torch.Tensor:
    """``[B, H, L, D]`` inputs -> ``[B, L, H, D]`` output, attention computed span by span on views of
    the packed rows (no copies in, one concatenation out; padding gets zeros)."""
    rows, heads, length, dim = query.shape
    gqa = key.shape[1] != heads
    pieces: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    used = [0] * rows
    for (r, start, n, _, _), mask in zip(spans.table, spans.masks, strict=True):
        window = slice(start, start + n)
        pieces[r].append(
            F.scaled_dot_product_attention(
                query[r : r + 1, :, window],
                key[r : r + 1, :, window],
                value[r : r + 1, :, window],
                attn_mask=mask,
                is_causal=mask is None,
                scale=scaling,
                enable_gqa=gqa,
            )
        )
        used[r] = start + n
    for r in range(rows):
        if used[r] < length:
            pieces[r].append(query.new_zeros(1, heads, length - used[r], dim))
    out = torch.cat([torch.cat(p, dim=2) for p in pieces], dim=0)
    return out.transpose(1, 2).contiguous()


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The ``raystep`` transformers attention function: dispatch on the kind of mask."""
    if isinstance(attention_mask, Spans):
        if dropout:
            raise ValueError("varlen attention has no dropout; set the model's attention_dropout to 0")
        return varlen_attention(query, key, value, attention_mask, scaling), None
    if _is_block_mask(attention_mask):
        return flex(query, key, value, attention_mask, scaling), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )


_compiled_flex: Any = None


def flex(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_mask: Any, scaling: float | None
) -> torch.Tensor:
    """``flex_attention`` under one ``torch.compile`` for the process (fused kernels; on CPU eager unless
    ``FLEX_COMPILE``). Grouped K/V heads are expanded when the group size is not a power of two, as
    transformers' own flex integration does. Returns ``[B, L, H, D]``."""
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    compile_it = FLEX_COMPILE if FLEX_COMPILE is not None else query.device.type == "cuda"
    fn = flex_attention
    if compile_it:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention)
        fn = _compiled_flex
    groups = query.shape[1] // key.shape[1]
    if groups > 1 and groups & (groups - 1):
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
        groups = 1
    out = fn(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=groups > 1)
    return out.transpose(1, 2).contiguous()


def _is_block_mask(mask: Any) -> bool:
    if mask is None or isinstance(mask, torch.Tensor):
        return False
    try:
        from torch.nn.attention.flex_attention import BlockMask
    except ImportError:
        return False
    return isinstance(mask, BlockMask)


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)  # 2D padding masks, as for sdpa
    _registered = True


def _config(model: Any) -> Any:
    inner = getattr(model, "module", model)  # DeepSpeed engine -> its module; peft forwards attributes
    config = getattr(inner, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no transformers config to set the attention on")
    return config


def install(model: Any) -> None:
    """Route ``model``'s attention through ``attention_forward`` (a plain HF model, peft or DeepSpeed)."""
    _register()
    config = _config(model)
    if config._attn_implementation != IMPLEMENTATION:
        config._attn_implementation = IMPLEMENTATION
