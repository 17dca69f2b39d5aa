"""Tiny models built locally: a byte-level BPE tokenizer trained on given text plus a small Qwen2.

Model weights cannot be downloaded on CI or a laptop without network; tests, benchmarks and the demo
build what they need here in seconds, through the same ``save_pretrained`` / ``from_pretrained`` path a
hub model takes, so every loader is exercised for real.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def gsm8k_texts(path: str | os.PathLike[str], limit: int | None = None) -> list[str]:
    """Questions and worked answers from a GSM8K JSONL file: enough text for a small BPE vocabulary."""
    texts: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if limit is not None and i >= limit:
                break
            row = json.loads(line)
            texts.append(row["question"])
            texts.append(row["answer"])
    return texts


def build_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike[str],
    vocab_size: int = 1024,
    *,
    split_digits: bool = False,
):
    """Train a byte-level BPE tokenizer and save it as a ``PreTrainedTokenizerFast`` with a chat template.

    ``split_digits`` makes every digit its own token (numbers are never merged), which keeps a tiny
    model's arithmetic learnable; ``vocab_size`` below the byte alphabet means no merges at all.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, len(alphabet) + len(SPECIAL_TOKENS)),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    texts: Iterable[str],
    *,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 128,
    max_positions: int = 2048,
    seed: int = 0,
) -> Path:
    """Build and save a randomly initialised Qwen2 causal LM with its tokenizer; returns the folder.

    Two heads of 32: vLLM's CPU attention rejects head sizes below 32, and every engine must load it.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, out, vocab_size=vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m raystep.tiny OUT_DIR``: build the tiny model from the data folder's GSM8K train text."""
    import argparse

    from raystep.datasets import default_data_dir

    parser = argparse.ArgumentParser(prog="python -m raystep.tiny", description=main.__doc__)
    parser.add_argument("out_dir", help="folder to write the model and tokenizer to")
    parser.add_argument(
        "--data-dir", default=None, help="data folder (default: $RAYSTEP_DATA or ../shared/data)"
    )
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if data_dir is None or not (data_dir / "gsm8k" / "train.jsonl").exists():
        parser.error("GSM8K train text not found; pass --data-dir or set RAYSTEP_DATA")
    out = build_tiny_model(args.out_dir, gsm8k_texts(data_dir / "gsm8k" / "train.jsonl", limit=2000))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
