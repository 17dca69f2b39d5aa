"""Export the trained policy as a Hugging Face folder (safetensors, tokenizer, generation config).

Under ZeRO-3 each rank holds a slice of every parameter: ``gather_state_dict`` is a collective that
assembles the full weights on rank 0 (DeepSpeed's ``_zero3_consolidated_16bit_state_dict``, which keeps
the training dtype). ``consolidate_checkpoint`` does the same offline from a saved DeepSpeed checkpoint
(``zero_to_fp32``), for a run whose workers are gone. LoRA adapters are merged into the base weights, so
the folder is a plain model that ``AutoModelForCausalLM`` and vLLM load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from raystep.config import RunConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def gather_state_dict(engine: Any, zero_stage: int) -> dict[str, torch.Tensor] | None:
    """Full weights on rank 0 (None elsewhere); every rank must call it."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if zero_stage == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()  # the collective: every rank takes part
    elif rank != 0:
        return None  # below ZeRO-3 rank 0 holds the full weights already
    else:
        sd = engine.module.state_dict()
    # no clone: save_hf_model's load_state_dict copies the values into a fresh model
    return {k: v.detach().cpu() for k, v in sd.items()} if rank == 0 and sd else None


def _lora_base_keys(state_dict: dict[str, torch.Tensor]) -> bool:
    return any("lora_A" in k for k in state_dict)


def save_hf_model(
    state_dict: dict[str, torch.Tensor],
    base_model: str,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer_path: str | None = None,
    dtype: torch.dtype | None = None,
    lora: Any = None,
    trust_remote_code: bool = False,
) -> Path:
    """Load ``state_dict`` into a fresh copy of ``base_model`` (merging LoRA), save it as safetensors.

    The base's generation config and tokenizer are copied, so chat stop tokens survive the export.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # load straight into the export dtype (LoRA merges in fp32 first); keeps rank 0's host memory at one copy
    load_dtype = torch.float32 if (lora is not None or dtype is None) else dtype
    model = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=load_dtype, trust_remote_code=trust_remote_code
    )
    if lora is not None and _lora_base_keys(state_dict):
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(lora))
        model.load_state_dict(state_dict, strict=True)
        model = model.merge_and_unload()
    else:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        real_missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
        if real_missing or unexpected:
            raise ValueError(
                f"state dict does not fit {base_model}: missing {real_missing[:5]}, unexpected {unexpected[:5]}"
            )
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_path or base_model, trust_remote_code=trust_remote_code
    )
    tokenizer.save_pretrained(str(out))
    try:
        GenerationConfig.from_pretrained(base_model).save_pretrained(str(out))
    except OSError:
        model.generation_config.save_pretrained(str(out))
    return out


def lora_config(lora: Any) -> Any:
    """A peft ``LoraConfig`` from raystep's ``train.lora`` section (or its dict)."""
    from peft import LoraConfig, TaskType

    data = lora if isinstance(lora, dict) else lora.model_dump()
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=data["r"],
        lora_alpha=data["alpha"],
        lora_dropout=data["dropout"],
        target_modules=list(data["target_modules"]),
    )


def consolidate_checkpoint(
    checkpoint_dir: str | os.PathLike[str], tag: str = "ds"
) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a DeepSpeed checkpoint folder (any ZeRO stage), without any workers."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)


def export_run(
    engine: Any, config: RunConfig, model_dir: str | os.PathLike[str], train_dtype: torch.dtype
) -> None:
    """Gather the trained weights (a collective: every rank calls it) and write ``model_dir`` on rank 0.

    The folder is written beside and renamed into place, so a crash mid-export never leaves half a model;
    ``model.dtype: auto`` exports in the training dtype.
    """
    import shutil

    import torch.distributed as dist

    state_dict = gather_state_dict(engine, config.train.zero_stage)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0 and state_dict is not None:
        final = Path(model_dir)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_hf_model(
            state_dict,
            config.model.path,
            tmp,
            tokenizer_path=config.model.tokenizer or config.model.path,
            dtype=DTYPES.get(config.model.dtype, train_dtype),
            lora=config.train.lora if config.train.lora.enabled else None,
            trust_remote_code=config.model.trust_remote_code,
        )
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    if dist.is_initialized():
        dist.barrier()
