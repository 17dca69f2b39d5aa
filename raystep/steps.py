"""Prompt templates and step handling.

A solution is ``preamble + step_1 + step_2 + ...`` where each step is a chunk of the original text that
starts with its header ``Step k:`` (header style) or is a line/paragraph (line style, for free-form text
that has no headers). Splitting is lossless: ``split_steps(t).join() == t`` for every string ``t``.

The Step-DPO pair contract: ``initial_reason_steps = preamble + steps[:k-1] + "Step k:"``; chosen and
rejected are the *bodies* of step k (the text after its header, up to the next header), with no EOS.
The prompt templates reproduce Step-DPO's training script exactly (how the template and the prefix are
joined differs per template), so public pairs train unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

STEP_PRIMER = "Let's think step by step.\nStep 1:"
"""What the assistant turn starts with when sampling step-formatted solutions."""

_HEADER = re.compile(r"(?:(?<=\n)|^)Step (\d+):")


@dataclass(frozen=True)
class Template:
    """A prompt format: ``head`` wraps the question; ``joiner`` goes between head and a non-empty prefix."""

    name: str
    head: str
    joiner: str
    chat_suffix: str = ""
    """Appended to the question when the template is used as a chat message."""


TEMPLATES: dict[str, Template] = {
    "alpaca": Template(
        "alpaca",
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:",
        "\n",
    ),
    "qwen2-boxed": Template(
        "qwen2-boxed",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{instruction}\nPlease reason step by step, and put your final answer within "
        "\\boxed{{}}.<|im_end|>\n<|im_start|>assistant\n",
        "",
        "\nPlease reason step by step, and put your final answer within \\boxed{}.",
    ),
    "deepseek-math": Template(
        "deepseek-math",
        "User: {instruction}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\n\n"
        "Assistant:",
        " ",
        "\nPlease reason step by step, and put your final answer within \\boxed{}.",
    ),
    "plain": Template("plain", "Question: {instruction}\nAnswer:", " "),
    "chat": Template(
        "chat", "", "", "\nPlease reason step by step, and put your final answer within \\boxed{}."
    ),
}
"""``chat`` uses the tokenizer's own chat template (pass ``tokenizer`` to ``build_prompt``)."""


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}") from None


def build_prompt(template: str, question: str, prefix: str = "", tokenizer: Any = None) -> str:
    """The text the model continues: the template around ``question``, then the reasoning prefix.

    Mirrors Step-DPO's ``apply_step_wise_chat_template``: alpaca joins with a newline, deepseek-math
    with a space, qwen2-boxed with nothing; an empty prefix adds no joiner.
    """
    t = get_template(template)
    if t.name == "chat":
        if tokenizer is None:
            raise ValueError("the 'chat' template needs the tokenizer (its chat_template renders the prompt)")
        head = tokenizer.apply_chat_template(
            [{"role": "user", "content": question + t.chat_suffix}],
            tokenize=False,
            add_generation_prompt=True,
        )
    else:
        head = t.head.format(instruction=question)
    return head + (t.joiner + prefix if prefix else "")


def build_messages(template: str, question: str) -> list[dict[str, str]]:
    """The same request as chat messages, for OpenAI chat endpoints."""
    return [{"role": "user", "content": question + get_template(template).chat_suffix}]


@dataclass(frozen=True)
class Steps:
    """A solution split into steps; ``join()`` gives back the original text exactly."""

    preamble: str
    steps: tuple[str, ...]
    style: Literal["header", "line"]

    def __len__(self) -> int:
        return len(self.steps)

    def join(self) -> str:
        return self.preamble + "".join(self.steps)

    def header(self, k: int) -> str:
        """What step k starts with: ``Step k:`` in header style, nothing in line style."""
        return f"Step {k}:" if self.style == "header" else ""

    def body(self, k: int) -> str:
        """Step k (1-based) without its header: what a pair's chosen/rejected holds."""
        self._check(k)
        return self.steps[k - 1][len(self.header(k)) :]

    def prefix(self, k: int) -> str:
        """``initial_reason_steps`` for step k: the preamble, steps 1..k-1, then step k's header."""
        self._check(k)
        return self.preamble + "".join(self.steps[: k - 1]) + self.header(k)

    def _check(self, k: int) -> None:
        if not 1 <= k <= len(self.steps):
            raise IndexError(f"step {k} is outside 1..{len(self.steps)}")


def split_steps(text: str) -> Steps:
    """Split a solution into steps.

    Header style when the text has ``Step k:`` at line starts (the preamble is what precedes the
    first one); otherwise line style, one step per non-blank line with its trailing newlines.
    """
    starts = [m.start() for m in _HEADER.finditer(text)]
    if starts:
        bounds = starts + [len(text)]
        return Steps(text[: starts[0]], tuple(text[a:b] for a, b in pairwise(bounds)), "header")
    chunks = [m.group(0) for m in re.finditer(r"[^\n]*\n*|[^\n]+", text) if m.group(0)]
    preamble = ""
    while chunks and not chunks[0].strip():
        preamble += chunks.pop(0)
    steps: list[str] = []
    for chunk in chunks:
        if steps and not chunk.strip():
            steps[-1] += chunk
        else:
            steps.append(chunk)
    return Steps(preamble, tuple(steps), "line")


def first_step(continuation: str, k: int) -> str:
    """The body of step k from a continuation generated after the ``Step k:`` header.

    The continuation runs on into ``Step k+1:``; the step ends where the next header starts (or at the
    end of the text). Used by rectify to cut the chosen step out of a resampled continuation.
    """
    m = re.search(rf"(?:(?<=\n)|^)Step {k + 1}:", continuation)
    return continuation[: m.start()] if m else continuation
