"""Steps and templates: lossless splitting (hypothesis), the prefix/body contract, Step-DPO's formats."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystep.steps import (
    STEP_PRIMER,
    TEMPLATES,
    build_messages,
    build_prompt,
    first_step,
    get_template,
    split_steps,
)

# A body never starts a line with a "Step N:" header of its own (that would be the next step).
_body_text = st.text(
    alphabet=st.sampled_from(list("abcxyz 0123456789+-*/=.,:$\\{}()\n\t")) | st.characters(codec="utf-8"),
    max_size=60,
).filter(lambda s: "\nStep " not in s)


@st.composite
def step_formatted(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    """(text, preamble, bodies) in the format the policy is prompted to produce."""
    preamble = draw(st.sampled_from(["", "Let's think step by step.\n", "Sure.\n\n"]))
    bodies = draw(st.lists(_body_text, min_size=1, max_size=6))
    parts = []
    for k, body in enumerate(bodies, start=1):
        sep = "" if k == len(bodies) else draw(st.sampled_from(["\n", "\n\n", "\n \n"]))
        parts.append(f"Step {k}:{body}{sep}")
    # the separator belongs to the step it ends
    text = preamble + "".join(parts)
    bodies_with_sep = [p[len(f"Step {k}:") :] for k, p in enumerate(parts, start=1)]
    return text, preamble, bodies_with_sep


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_split_then_join_is_identity_for_any_text(text: str) -> None:
    assert split_steps(text).join() == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["Step ", "1", "2", ":", "\n", " ", "x", "\r", "Step 1:", "\nStep 2:"])))
def test_split_then_join_is_identity_for_header_like_noise(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert split_steps(text).join() == text


@settings(max_examples=200, deadline=None)
@given(step_formatted())
def test_step_formatted_text_splits_into_its_steps(case: tuple[str, str, list[str]]) -> None:
    text, preamble, bodies = case
    steps = split_steps(text)
    assert steps.style == "header"
    assert steps.join() == text
    assert steps.preamble == preamble
    assert len(steps) == len(bodies)
    for k, body in enumerate(bodies, start=1):
        assert steps.body(k) == body
        prefix = steps.prefix(k)
        assert prefix.endswith(f"Step {k}:")
        # prefix + body of step k + the rest gives back the text: a pair's pieces rebuild the solution
        assert prefix + steps.body(k) + "".join(steps.steps[k:]) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab1= \n")), max_size=80))
def test_line_style_prefix_and_body(text: str) -> None:
    steps = split_steps(text)
    if "Step" in text:
        return
    assert steps.style == "line"
    for k in range(1, len(steps) + 1):
        assert steps.header(k) == ""
        assert steps.prefix(k) + steps.body(k) == steps.preamble + "".join(steps.steps[:k])
        assert steps.body(k).strip()  # a line step is never blank


def test_prefix_and_body_example() -> None:
    text = "Let's think step by step.\nStep 1: 2+3=5.\nStep 2: 5*4=21.\nStep 3: The answer is 21."
    s = split_steps(text)
    assert s.preamble == "Let's think step by step.\n"
    assert s.prefix(2) == "Let's think step by step.\nStep 1: 2+3=5.\nStep 2:"
    assert s.body(2) == " 5*4=21.\n"
    assert s.prefix(1) == "Let's think step by step.\nStep 1:"
    with pytest.raises(IndexError):
        s.body(4)
    with pytest.raises(IndexError):
        s.prefix(0)


def test_header_only_at_line_start() -> None:
    s = split_steps("Step 1: see Step 2: inline\nStep 2: real")
    assert s.steps == ("Step 1: see Step 2: inline\n", "Step 2: real")


def test_first_step_cuts_a_continuation() -> None:
    assert first_step(" 5*4=20.\nStep 3: The answer is 20.", 2) == " 5*4=20.\n"
    assert first_step(" no next header", 2) == " no next header"
    assert first_step(" x\nStep 2: not k+1\nStep 4: y", 2) == " x\nStep 2: not k+1\nStep 4: y"


def test_step_primer_opens_step_one_of_what_collect_stores() -> None:
    """collect ends the prompt with the primer and stores primer + continuation: split, that is step 1
    onwards with the primer's sentence as the preamble, and step 1's prefix is the primer itself."""
    stored = STEP_PRIMER + " 2 + 3 = 5.\nStep 2: 5 * 2 = 10.\nStep 3: The answer is \\boxed{10}."
    steps = split_steps(stored)
    assert steps.style == "header" and len(steps) == 3
    assert [steps.body(k).strip() for k in (1, 2, 3)] == [
        "2 + 3 = 5.",
        "5 * 2 = 10.",
        "The answer is \\boxed{10}.",
    ]
    assert steps.prefix(1) == STEP_PRIMER and steps.join() == stored
    prompt = build_prompt("qwen2-boxed", "What is (2 + 3) * 2?", STEP_PRIMER)
    assert prompt.endswith(STEP_PRIMER) and "What is (2 + 3) * 2?" in prompt


# --- Step-DPO's train.py formats (apply_step_wise_chat_template), copied here as the reference -------

STEPDPO_PROMPT_NO_INPUT = {
    "alpaca": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
    "deepseek-math": "User: {instruction}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\n\nAssistant:",
    "qwen2-boxed": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n{instruction}\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}
STEPDPO_JOINER = {"alpaca": "\n", "deepseek-math": " ", "qwen2-boxed": ""}


def stepdpo_prompt(template: str, instruction: str, initial_reason_steps: str) -> str:
    head = STEPDPO_PROMPT_NO_INPUT[template].format(instruction=instruction)
    if len(initial_reason_steps) == 0:
        return head
    return head + STEPDPO_JOINER[template] + initial_reason_steps


@pytest.mark.parametrize("template", list(STEPDPO_PROMPT_NO_INPUT))
@pytest.mark.parametrize("prefix", ["", "Let's think step by step.\nStep 1:", "Step 1: 2+2=4.\nStep 2:"])
def test_templates_equal_step_dpo_train_py(template: str, prefix: str) -> None:
    question = "What is $\\frac{1}{2}+{3}$?"  # braces in the question must survive formatting
    assert build_prompt(template, question, prefix) == stepdpo_prompt(template, question, prefix)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.sampled_from(list(STEPDPO_PROMPT_NO_INPUT)))
def test_templates_equal_step_dpo_for_any_text(question: str, prefix: str, template: str) -> None:
    assert build_prompt(template, question, prefix) == stepdpo_prompt(template, question, prefix)


def test_chat_template_uses_the_tokenizer(tmp_path: Path, shared_data: Path) -> None:
    from raystep.tiny import build_tokenizer, gsm8k_texts

    tok = build_tokenizer(
        gsm8k_texts(shared_data / "gsm8k" / "train.jsonl", limit=50), tmp_path, vocab_size=300
    )
    prompt = build_prompt("chat", "What is 2+2?", "Step 1:", tokenizer=tok)
    assert prompt.startswith("<|im_start|>user\nWhat is 2+2?\nPlease reason step by step")
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\nStep 1:")
    with pytest.raises(ValueError, match="needs the tokenizer"):
        build_prompt("chat", "q")


def test_messages_and_unknown_template() -> None:
    assert build_messages("qwen2-boxed", "Q?") == [
        {
            "role": "user",
            "content": "Q?\nPlease reason step by step, and put your final answer within \\boxed{}.",
        }
    ]
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        get_template("nope")
    assert {"alpaca", "qwen2-boxed", "chat"} <= set(TEMPLATES)
