"""Attention for packed, prefix-shared rows: the mask logic once, three ways to run it.

A packed row holds several *spans* (one pair's ``[prompt | chosen | rejected]`` in the shared layout, one
branch's ``[prompt | step]`` in the two-sequence layout). A token may attend to an earlier token of its
own span, except that rejected tokens never see chosen ones; padding sees nothing. ``allowed`` states
that rule on per-token span ids and branch codes; every kernel below applies exactly it:

- ``sdpa``: the rule materialised as a dense ``[B, 1, L, L]`` bool mask for ``scaled_dot_product_attention``.
  Runs everywhere, but attention costs the square of the *row* length whatever the block structure,
  and on GPUs a dense mask rules out the fused flash kernels.
- ``flex``: the rule as a ``torch.nn.attention.flex_attention`` ``BlockMask``: blocks no query may
  attend to are skipped, so packing costs what the pairs cost. On CUDA it runs through transformers'
  compiled ``flex_attention`` (fused forward and backward). torch has no flex backward on CPU (its
  CPU kernel is forward-only), so on CPU it serves checks and no-grad passes only.
- ``varlen``: each span's tokens gathered into a ``[spans, longest span]`` batch for ``sdpa`` with a small
  per-span mask, then scattered back: block-diagonal by construction, forward and backward on any
  device. The projections and MLP still run on the packed, padding-free rows.

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
"""Run flex through transformers' compiled wrapper: None = on CUDA only (eager flex elsewhere)."""


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
    """Gather plan for ``varlen``: span ``s``'s tokens sit at flat positions ``index[s, :n_s]`` of the
    ``[rows * length]`` token axis; ``mask`` is each span's own ``[Lmax, Lmax]`` attention rule."""

    index: torch.Tensor
    """``[S, Lmax]`` flat token positions (padded slots repeat the span's first token)."""
    valid: torch.Tensor
    """``[S, Lmax]`` bool: slot holds a real token of the span."""
    mask: torch.Tensor
    """``[S, 1, Lmax, Lmax]`` bool."""
    targets: torch.Tensor
    """``index[valid]``: where the gathered outputs go back."""
    rows: int
    length: int


def span_plan(spans: torch.Tensor, branch: torch.Tensor, longest: int) -> Spans:
    """``spans``: ``[S, 3]`` (row, start, length) on the device; ``branch``: ``[B, L]`` branch codes."""
    rows, length = branch.shape
    slot = torch.arange(longest, device=spans.device)
    valid = slot[None, :] < spans[:, 2:3]
    start = spans[:, 0:1] * length + spans[:, 1:2]
    index = start + torch.where(valid, slot[None, :], torch.zeros_like(slot)[None, :])
    br = branch.reshape(-1)[index]
    causal = slot[:, None] >= slot[None, :]
    ok = causal[None] & valid[:, None, :] & ~((br[:, :, None] == 2) & (br[:, None, :] == 1))
    ok |= torch.eye(longest, dtype=torch.bool, device=spans.device)[None]  # padded slots see themselves
    return Spans(index=index, valid=valid, mask=ok[:, None], targets=index[valid], rows=rows, length=length)


class AnyLayer(dict):
    """A per-layer-type mask mapping that answers every layer type with the same mask.

    transformers models take a dict of prepared masks keyed by layer type and pass each entry to the
    attention function untouched; that is how a ``Spans`` plan reaches ``attention_forward``.
    """

    def __init__(self, value: Any):
        super().__init__()
        self.value = value

    def __missing__(self, key: str) -> Any:
        return self.value


def varlen_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, spans: Spans, scaling: float | None
) -> torch.Tensor:
    """``[B, H, L, D]`` inputs -> ``[B, L, H, D]`` output, attention computed per span."""
    rows, heads, length, dim = query.shape

    def gather(x: torch.Tensor) -> torch.Tensor:
        flat = x.transpose(1, 2).reshape(rows * length, x.shape[1], dim)
        return flat[spans.index].transpose(1, 2)

    out = F.scaled_dot_product_attention(
        gather(query),
        gather(key),
        gather(value),
        attn_mask=spans.mask,
        scale=scaling,
        enable_gqa=key.shape[1] != heads,
    )
    picked = out.transpose(1, 2)[spans.valid]  # [tokens, H, D]
    full = picked.new_zeros(rows * length, heads, dim).index_copy(0, spans.targets, picked)
    return full.view(rows, length, heads, dim)


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
        compile_flex = FLEX_COMPILE if FLEX_COMPILE is not None else query.device.type == "cuda"
        if compile_flex:
            from transformers.integrations.flex_attention import flex_attention_forward

            return flex_attention_forward(
                module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
            )
        from torch.nn.attention.flex_attention import flex_attention

        out = flex_attention(
            query,
            key,
            value,
            block_mask=attention_mask,
            scale=scaling,
            enable_gqa=key.shape[1] != query.shape[1],
        )
        return out.transpose(1, 2).contiguous(), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )


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


def install(model: Any) -> None:
    """Route ``model``'s attention through ``attention_forward`` (a plain HF model, peft or DeepSpeed)."""
    _register()
    inner = getattr(model, "module", model)  # DeepSpeed engine -> its module
    config = getattr(inner, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no transformers config to set the attention on")
    if config._attn_implementation != IMPLEMENTATION:
        config._attn_implementation = IMPLEMENTATION
