"""What the judge is asked: the paper's prompt word for word, or raystep's own.

``stepdpo`` is the prompt of the official Step-DPO data pipeline, ``data_pipeline/locate_error_by_gpt4.py``
of https://github.com/dvlab-research/Step-DPO (commit c4902fd, Apache-2.0), filled the way that script
fills it: one user message holding the problem, the full correct solution and the incorrect answer
(``"Step 1: " + completion``), with blank lines collapsed (``.replace("\\n\\n", "\\n")``) in both. It
needs the problem's reference solution (MATH ``solution``, the GSM8K worked answer), which problem rows
carry as ``solution``.

``raystep`` sends the problem, the reference *answer* when known and the numbered steps, and asks for one
``Step k: label - reason`` line per step. It needs no reference solution (ProcessBench rows have none).

A structured request (``localize.judge.structured``) leaves these texts as they are and adds a system
message that maps the requested decisions onto the JSON fields of ``verdicts.verdict_schema``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from raystep.config import JudgeConfig

PromptName = Literal["stepdpo", "raystep"]
PROMPTS: tuple[str, ...] = ("stepdpo", "raystep")

# Verbatim from data_pipeline/locate_error_by_gpt4.py (Step-DPO, commit c4902fd); the "\n" after
# "Final Decision:" is a newline there too (a plain triple-quoted string). Do not edit: a test compares
# the rendering with the original file.
STEPDPO_PROMPT = """### Problem:
{problem}

### Correct solution:
{solution}

### Incorrect answer:
{answer}

---

A math problem and its correct solution are listed above. We also give another incorrect answer, where step-by-step reasoning process is shown. Please output the correctness for each reasoning step in the given answer.

Requirements:
1. You should first output a step-by-step analysis process (no more than 200 words), and finally output the decision ("correct", "neutral", "incorrect") for each step following the format of "Final Decision:\nStep 1: correct; Step 2: neutral; ...";
2. Stop when you find the first incorrect step."""

SYSTEM_PROMPT = (
    "You are a meticulous math teacher who grades solutions step by step. "
    "You judge whether each step is mathematically valid and moves the solution forward."
)

USER_TEMPLATE = """Review the following solution to a math problem, one step at a time.

### Problem
{question}
{reference}
### Solution steps
{steps}

For each step, in order, decide whether it is:
- correct: valid and makes progress towards the answer;
- neutral: not wrong, but makes no progress (irrelevant, a repetition, or an empty restatement);
- incorrect: contains an error in calculation, logic, or understanding of the problem.

Write one line per step in the form "Step <n>: <correct|neutral|incorrect> - <short reason>".
Stop at the first step you mark incorrect and do not judge the steps after it.
If every step is correct, end with "All steps are correct."
"""

STRUCTURED_INSTRUCTION = (
    'Reply with one JSON object. Put your step-by-step analysis in "analysis", the decision for each '
    'step ("correct", "neutral" or "incorrect") under its key in "steps" ("step_1", "step_2", ...; only '
    "the steps up to the first one you judge neutral or incorrect count), and the number of that first "
    'step in "first_wrong_step" (0 if every step is correct).'
)
STRUCTURED_INSTRUCTION_LABELS_ONLY = (
    'Reply with one JSON object: the decision for each step ("correct", "neutral" or "incorrect") under '
    'its key in "steps" ("step_1", "step_2", ...; only the steps up to the first one you judge neutral or '
    'incorrect count), and the number of that first step in "first_wrong_step" (0 if every step is '
    "correct)."
)


class MissingReference(ValueError):
    """The ``stepdpo`` prompt was asked for a problem whose row has no reference solution."""


def format_steps(steps: list[str]) -> str:
    """Numbered steps; a ``Step k:`` header already present in the text is not repeated."""
    lines = []
    for k, step in enumerate(steps, start=1):
        body = re.sub(rf"^\s*Step {k}:\s*", "", str(step)).strip()
        lines.append(f"Step {k}: {body}")
    return "\n".join(lines)


def answer_text(steps: list[str]) -> str:
    """The solution as the paper shows it: the response from ``Step 1:`` on.

    Collect's steps already start with their ``Step k:`` headers and join back into the generated text;
    steps without headers (ProcessBench, free-form solutions) are numbered like ``format_steps``.
    """
    texts = [str(s) for s in steps]
    if all(re.match(rf"Step {k}:", s) for k, s in enumerate(texts, start=1)):
        return "".join(texts).rstrip()
    return format_steps(texts)


def reference_solution(row: dict[str, Any]) -> str:
    """The row's reference solution, or ``MissingReference`` naming the row."""
    solution = row.get("solution")
    if not isinstance(solution, str) or not solution.strip():
        ident = row.get("sample_id") or row.get("id") or "?"
        raise MissingReference(
            f"row {ident}: the stepdpo judge prompt needs the problem's reference solution (field "
            "'solution': MATH's solution, GSM8K's worked answer), and this row has none; load problems that "
            "carry one, or set localize.judge.prompt: raystep"
        )
    return solution


def stepdpo_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """The paper's request: a single user message, filled exactly as ``locate_error_by_gpt4.py`` fills it."""
    user = STEPDPO_PROMPT.format(
        problem=str(row["question"]).strip(),
        solution=reference_solution(row).replace("\n\n", "\n"),
        answer=answer_text(list(row["steps"])).replace("\n\n", "\n"),
    )
    return [{"role": "user", "content": user}]


def raystep_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """raystep's request; the reference answer is included when known (ProcessBench has none)."""
    answer = row.get("answer")
    reference = f"\n### Reference answer\n{answer}\n" if answer not in (None, "") else ""
    user = USER_TEMPLATE.format(
        question=str(row["question"]).strip(), reference=reference, steps=format_steps(list(row["steps"]))
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def build_messages(
    row: dict[str, Any], prompt: PromptName = "raystep", structured: bool = False, analysis: bool = True
) -> list[dict[str, str]]:
    """The chat messages for one row; a structured request also says how the JSON maps the decisions."""
    if prompt == "stepdpo":
        messages = stepdpo_messages(row)
    elif prompt == "raystep":
        messages = raystep_messages(row)
    else:
        raise ValueError(f"unknown judge prompt {prompt!r}; known: {', '.join(PROMPTS)}")
    if not structured:
        return messages
    instruction = STRUCTURED_INSTRUCTION if analysis else STRUCTURED_INSTRUCTION_LABELS_ONLY
    if messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + instruction}, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def require_reference(rows: list[dict[str, Any]], config: JudgeConfig, source: str = "the problems") -> None:
    """The ``stepdpo`` prompt needs every row's reference solution: fail before any request, naming how
    many rows lack one and the first of them."""
    if config.prompt != "stepdpo":
        return
    missing = [r for r in rows if not (isinstance(r.get("solution"), str) and r["solution"].strip())]
    if missing:
        try:
            reference_solution(missing[0])
        except MissingReference as exc:
            raise MissingReference(
                f"{source}: {len(missing)} of {len(rows)} rows have no reference solution; {exc}"
            ) from None
