"""The HF export without Ray: plain weights round-trip, and LoRA adapters are merged into a plain model."""

from __future__ import annotations

from pathlib import Path

import torch

from raystep.config import LoraConfig
from raystep.train.export import lora_config, save_hf_model


def _logits(model, tok) -> torch.Tensor:
    ids = tok("Janet has 3 apples and buys 4 more.", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_plain_export_round_trips(tmp_path: Path, tiny_model: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    out = save_hf_model(model.state_dict(), str(tiny_model), tmp_path / "model", dtype=torch.bfloat16)
    assert (out / "model.safetensors").exists() and (out / "generation_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(out)
    torch.testing.assert_close(_logits(loaded.float(), tok), _logits(model, tok), rtol=0.05, atol=0.05)


def test_lora_adapters_are_merged(tmp_path: Path, tiny_model: Path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lora = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), lora_config(lora)
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # LoRA B starts at zero: make the adapter change the outputs
    tok = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    expected = _logits(peft_model.eval(), tok)
    assert not torch.allclose(expected, _logits(base, tok), atol=1e-3)
    out = save_hf_model(peft_model.state_dict(), str(tiny_model), tmp_path / "merged", lora=lora.model_dump())
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(_logits(merged, tok), expected, rtol=1e-4, atol=1e-4)
