"""The tiny policy of the arithmetic world: a tokenizer and a small Qwen2 warmed up on worked solutions.

The demo needs a model that solves a fair share of problems but not all, and that makes step-level
mistakes Step-DPO can fix. This module trains one on CPU in a couple of minutes: supervised fine-tuning
on world solutions, a share of which contain a plausible slip (``world.solution_with_mistake``), so the
model learns the step format, most of the arithmetic, and some of the slips. It is saved with
``save_pretrained`` and then loaded by every stage exactly like a hub model.

The tokenizer is a byte-level BPE that splits every digit into its own token (as Llama and Qwen do):
words of the small vocabulary become single tokens, which keeps sequences short, while numbers stay
digit by digit, which makes the arithmetic learnable at this size. ``vocab_size=0`` gives a pure
byte-level (character) tokenizer for comparison.

The prompt is ``steps.build_prompt(template, question, steps.STEP_PRIMER)`` with the ``plain`` template
by default, the same text collect, rectify and evaluation send.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raystep.config import RunConfig, SynthPolicyConfig
from raystep.steps import STEP_PRIMER, build_prompt, get_template
from raystep.synth.world import AnySpec, WorldSpec, generate, spec_from_config

MARKER = "warmup.json"
"""Written last into the policy folder: its presence (with matching settings) means the warm-up is done."""


@dataclass(frozen=True)
class PolicySettings:
    """Everything that decides the warmed-up policy; a change of any field retrains it."""

    policy: SynthPolicyConfig = field(default_factory=SynthPolicyConfig)
    """The model's size and the warm-up's knobs: the run's ``data.synth.policy`` as it is."""
    template: str = "plain"
    seed: int = 0
    world: AnySpec = field(default_factory=WorldSpec)

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.model_dump(mode="json"),
            "template": self.template,
            "seed": self.seed,
            "world": asdict(self.world),
            "world_kind": type(self.world).__name__,
        }

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]


PRESETS: dict[str, dict[str, int]] = {
    "small": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 192},
    "large": {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 384},
}
"""Two policy sizes (about 0.13M and 0.46M parameters with the default vocabulary), heads of 32. The
larger doubles the width: four times the parameters per layer at about three times the cost per step,
which a 2-core machine can still warm up."""


def preset_overrides(name: str) -> list[str]:
    """``--set`` items choosing a preset size under ``data.synth.policy``."""
    if name not in PRESETS:
        raise ValueError(f"unknown policy size {name!r}; known: {', '.join(PRESETS)}")
    return [f"data.synth.policy.{k}={v}" for k, v in PRESETS[name].items()]


def settings_from_config(config: RunConfig) -> PolicySettings:
    """The warm-up settings of a run: ``data.synth.policy``, the world of ``data.synth``, the template."""
    return PolicySettings(
        policy=config.data.synth.policy,
        template=config.model.template,
        seed=config.data.synth.seed,
        world=spec_from_config(config.data),
    )


def completion_text(problem_solution: str) -> str:
    """What the model writes after ``Step 1:``: the solution minus the header the primer already holds."""
    head = "Step 1:"
    if not problem_solution.startswith(head):
        raise ValueError("a world solution starts with 'Step 1:'")
    return problem_solution[len(head) :]


def prompt_for(question: str, template: str) -> str:
    """The pipeline's prompt (collect, rectify, the policy's own greedy check): it ends with the primer."""
    return build_prompt(template, question, STEP_PRIMER)


def training_pair(question: str, problem_solution: str, template: str) -> tuple[str, str]:
    """``(prompt, completion)`` for SFT: the bare question prompt, then primer + solution.

    The model learns to write the primer itself, so it answers both the pipeline's prompts (which end
    with the primer) and an evaluation client that sends only the question; both are the same text.
    """
    completion = get_template(template).joiner + STEP_PRIMER + completion_text(problem_solution)
    return build_prompt(template, question), completion


def build_tokenizer(texts: list[str], out_dir: str | os.PathLike[str], vocab_size: int):
    """A byte-level BPE with single-digit tokens (``vocab_size=0``: no merges, character level)."""
    from raystep.tiny import build_tokenizer as build_bpe

    return build_bpe(texts, out_dir, vocab_size, split_digits=True)


def warmup_examples(settings: PolicySettings) -> list[tuple[str, str, bool]]:
    """``(prompt, completion, has_slip)`` for SFT, from the world's ``sft`` split (never train/test)."""
    rng = random.Random(f"raystep-warmup:{settings.seed}")
    kinds = settings.policy.slips or settings.world.slips
    out = []
    for p in generate(settings.world, settings.policy.num_examples, settings.seed, "sft"):
        text = p.solution()
        wrong = rng.random() < settings.policy.slip_rate
        if wrong:
            text = p.random_slip(rng, kinds)
        out.append((*training_pair(p.question, text, settings.template), wrong))
    return out


def _lr_at(step: int, total: int, peak: float, warmup_ratio: float) -> float:
    warm = max(1, int(total * warmup_ratio))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_policy(out_dir: str | os.PathLike[str], settings: PolicySettings, progress: bool = True) -> dict:
    """Build the tokenizer and model, run the SFT warm-up, save both into ``out_dir``; returns stats."""
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    started = time.time()
    examples = warmup_examples(settings)
    tokenizer = build_tokenizer([p + c for p, c, _ in examples], out, settings.policy.vocab_size)
    eos = tokenizer.eos_token_id
    encoded = []
    for prompt, completion, _ in examples:
        p_ids = tokenizer(prompt)["input_ids"]
        c_ids = tokenizer(completion)["input_ids"] + [eos]
        encoded.append((p_ids + c_ids, len(p_ids)))
    max_len = max(len(ids) for ids, _ in encoded)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings.policy.torch_threads)
    torch.manual_seed(settings.seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=settings.policy.hidden_size,
        intermediate_size=settings.policy.intermediate_size,
        num_hidden_layers=settings.policy.num_layers,
        num_attention_heads=settings.policy.num_heads,
        num_key_value_heads=settings.policy.num_heads,
        max_position_embeddings=max(512, 2 * max_len),
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.policy.learning_rate, betas=(0.9, 0.98), weight_decay=0.0
    )
    rng = random.Random(settings.seed)
    losses: list[float] = []
    bar = tqdm(range(settings.policy.steps), desc="warm-up SFT", disable=not progress, mininterval=2.0)
    for step in bar:
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(settings.policy.batch_size)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, n_prompt) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
            attention[row, : len(ids)] = 1
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(
                step, settings.policy.steps, settings.policy.learning_rate, settings.policy.warmup_ratio
            )
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")

    torch.set_num_threads(threads_before)
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[eos, tokenizer.convert_tokens_to_ids("<|im_end|>")], pad_token_id=eos, do_sample=False
    )
    model.save_pretrained(str(out))
    stats = {
        "settings": settings.as_dict(),
        "fingerprint": settings.fingerprint(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer),
        "max_sequence_tokens": max_len,
        "slip_examples": sum(1 for *_, wrong in examples if wrong),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "loss_curve": [
            round(sum(losses[i : i + 50]) / len(losses[i : i + 50]), 4) for i in range(0, len(losses), 50)
        ],
        "train_seconds": round(time.time() - started, 2),
    }
    return stats


_STEP_LINE = re.compile(r"Step (\d+): [^\n]*?-?\d+ [-+*/] -?\d+ = -?\d+[^\n]*")
_ANSWER_LINE = re.compile(r"The answer is \\boxed\{-?\d+\}\.")


def is_well_formed(response: str) -> bool:
    """A full step solution: the primer, ``Step k:`` lines numbered 1.. each stating a computation, a boxed answer."""
    lines = response.rstrip().split("\n")
    if len(lines) < 3 or lines[0] + "\n" != STEP_PRIMER[: -len("Step 1:")]:
        return False
    *step_lines, last = lines[1:]
    if not _ANSWER_LINE.fullmatch(last):
        return False
    for k, line in enumerate(step_lines, 1):
        m = _STEP_LINE.fullmatch(line)
        if not m or int(m.group(1)) != k:
            return False
    return True


def boxed_answer(text: str) -> str | None:
    m = re.search(r"\\boxed\{\s*(-?\d+)\s*\}", text)
    return m.group(1) if m else None


def greedy_generate(
    model_dir: str | os.PathLike[str], prompts: list[str], max_new_tokens: int = 96, batch_size: int = 64
) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches): the evaluation's decoding, without Ray."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    out: list[str] = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def evaluate_policy(
    model_dir: str | os.PathLike[str], rows: list[dict], template: str = "plain", max_new_tokens: int = 96
) -> dict[str, Any]:
    """Greedy accuracy and format rate of a policy on problem rows (``question``, ``answer``)."""
    started = time.time()
    prompts = [prompt_for(r["question"], template) for r in rows]
    texts = greedy_generate(model_dir, prompts, max_new_tokens=max_new_tokens)
    responses = [STEP_PRIMER + t for t in texts]
    correct = [boxed_answer(resp) == r["answer"] for resp, r in zip(responses, rows, strict=True)]
    formed = [is_well_formed(resp) for resp in responses]
    return {
        "problems": len(rows),
        "accuracy": sum(correct) / max(1, len(rows)),
        "well_formed": sum(formed) / max(1, len(rows)),
        "seconds": round(time.time() - started, 2),
        "responses": responses,
        "correct": correct,
    }


def ensure_policy(
    policy_dir: str | os.PathLike[str], settings: PolicySettings, progress: bool = True
) -> tuple[Path, dict[str, Any]]:
    """The warmed-up policy in ``policy_dir`` (e.g. ``<run>/policy``): trained once, reused on reruns.

    Reuse needs the marker written after a complete save with the same settings fingerprint; anything
    else (a killed run, changed settings) retrains from scratch. Returns the folder and its stats, with
    ``cached`` telling which happened.
    """
    out = Path(policy_dir)
    marker = out / MARKER
    if marker.exists():
        stats = json.loads(marker.read_text())
        if stats.get("fingerprint") == settings.fingerprint():
            return out, {**stats, "cached": True}
    stats = train_policy(out, settings, progress=progress)
    marker.write_text(json.dumps(stats, indent=2))
    return out, {**stats, "cached": False}
