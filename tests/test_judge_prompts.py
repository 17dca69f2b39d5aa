"""The paper's judge prompt and its ``Final Decision`` parser, checked against the original files.

``tests/data/stepdpo/`` holds Step-DPO's ``locate_error_by_gpt4.py`` and ``prepare_for_correction.py``
byte for byte (see PROVENANCE.md there). The prompt is read out of the first file and filled the way it
fills it; the second file's ``main()`` (the paper's own parser) is run on judge replies and its step
numbers compared with raystep's.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from fake_openai import DECISION_STYLES, verdict_reply

from raystep.config import DataConfig, JudgeConfig
from raystep.datasets import load_problems
from raystep.stages.localizers import MissingReference, require_reference
from raystep.stages.localizers.judge_prompts import build_messages
from raystep.stages.localizers.verdicts import (
    VerdictParseError,
    parse_final_decision,
    parse_structured,
    read_verdict,
    response_format,
    verdict_schema,
)
from raystep.steps import STEP_PRIMER, split_steps

PAPER = Path(__file__).parent / "data" / "stepdpo"


def paper_prompt() -> str:
    """The ``prompt = '''...'''`` literal of the paper's ``locate_error_by_gpt4.py``."""
    tree = ast.parse((PAPER / "locate_error_by_gpt4.py.txt").read_text())
    (value,) = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "prompt"
    ]
    return value


def paper_instruction(question: str, gt_output: str, completion: str) -> str:
    """What ``locate_error_by_gpt4.py`` sends for a sample (its lines 72-73, verbatim)."""
    prompt = paper_prompt()
    completion = "Step 1: " + completion
    return prompt.format(
        problem=question, solution=gt_output.replace("\n\n", "\n"), answer=completion.replace("\n\n", "\n")
    )


def sample_row(problem: dict[str, Any], completion: str) -> dict[str, Any]:
    """A collect-shaped wrong sample: the model continued the ``Step 1:`` primer with ``completion``."""
    response = STEP_PRIMER + " " + completion
    return {**problem, "sample_id": f"{problem['id']}-s0", "steps": list(split_steps(response).steps)}


COMPLETION = (
    "We first work out the amount at the start.\n\nStep 2: Then we multiply it by 3 to get 42.\n\n"
    "Step 3: So the answer is $\\boxed{42}$."
)


@pytest.mark.parametrize(
    ("source", "split"), [("math500", "test"), ("gsm8k", "train"), ("gsm8k-stepdpo", "test")]
)
def test_stepdpo_prompt_is_the_papers_text_filled_with_a_dataset_row(shared_data, source, split) -> None:
    (problem,) = load_problems(DataConfig(source=source, split=split, limit=1), data_dir=shared_data)
    assert problem["solution"].strip(), "the loaders keep the reference solution"
    if source.startswith("gsm8k"):
        assert "####" in problem["solution"]  # the worked answer, as the paper's gt_output
    else:
        assert "\\boxed" in problem["solution"]
    row = sample_row(problem, COMPLETION)
    messages = build_messages(row, "stepdpo")
    expected = paper_instruction(problem["question"].strip(), problem["solution"], COMPLETION)
    assert messages == [{"role": "user", "content": expected}]  # one user message, no system prompt
    assert "Final Decision:\nStep 1: correct; Step 2: neutral; ..." in expected
    assert "\n\n" not in expected.split("### Correct solution:\n")[1].split("\n\n### Incorrect answer")[0]


def test_stepdpo_structured_request_keeps_the_papers_message() -> None:
    row = {"id": "p", "question": "q?", "solution": "s", "steps": ["Step 1: a\n", "Step 2: b"]}
    plain = build_messages(row, "stepdpo")
    structured = build_messages(row, "stepdpo", structured=True)
    assert structured[1:] == plain and structured[0]["role"] == "system"
    assert '"steps"' in structured[0]["content"] and '"analysis"' in structured[0]["content"]
    short = build_messages(row, "stepdpo", structured=True, analysis=False)
    assert '"analysis"' not in short[0]["content"]


def test_stepdpo_prompt_without_a_reference_solution_is_a_clear_error() -> None:
    row = {"sample_id": "gsm8k-7-s1", "question": "q?", "steps": ["Step 1: a"], "answer": "3"}
    with pytest.raises(MissingReference, match=r"row gsm8k-7-s1: .*reference solution.*prompt: raystep"):
        build_messages(row, "stepdpo")
    assert build_messages(row, "raystep")  # raystep's own prompt needs none
    rows = [{**row, "solution": "s"}, row, {**row, "solution": "  "}]
    with pytest.raises(MissingReference, match=r"^runs/x/samples: 2 of 3 rows have no reference solution"):
        require_reference(rows, JudgeConfig(prompt="stepdpo"), "runs/x/samples")
    require_reference(rows, JudgeConfig(prompt="raystep"))  # nothing to check


# --- the paper's parser, run as written -----------------------------------------------------------------


class _JsonlWriter:
    """Just enough of the ``jsonlines`` package for the paper's script (not installed here)."""

    def __init__(self, path: str):
        self.fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__

    def __enter__(self) -> _JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

    def write(self, obj: Any) -> None:
        self.fh.write(json.dumps(obj) + "\n")


def paper_step_numbers(replies: list[str], tmp_path: Path, monkeypatch) -> list[int | None]:
    """The step each reply names, by Step-DPO's ``prepare_for_correction.py`` (None: the script drops it)."""
    monkeypatch.setitem(sys.modules, "jsonlines", types.SimpleNamespace(open=lambda p, mode: _JsonlWriter(p)))
    namespace: dict[str, Any] = {"__name__": "stepdpo_prepare_for_correction"}
    source = PAPER / "prepare_for_correction.py.txt"
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    gen = tmp_path / "generated"
    gen.mkdir()
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 6 x 7?\n"
        "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\nLet's think step by step.\nStep 1: "
    )
    completion = "6 x 7 is 6 sevens.\nStep 2: That is 41.\nStep 3: So the answer is \\boxed{41}."
    for i, reply in enumerate(replies):
        item = {
            "gpt4-output": reply,
            "prompt": prompt,
            "completion": completion,
            "gt_output": "6 x 7 = 42. The answer is \\boxed{42}.",
            "prompt_answer": "42",
            "type": "Prealgebra",
            "path": str(i),
        }
        (gen / f"{i:04d}.json").write_text(json.dumps(item))
    out = tmp_path / "continue_from_incorrect.jsonl"
    args = argparse.Namespace(
        prompt="qwen2-boxed-step", save_file=str(out), generated_files=str(gen / "*.json")
    )
    namespace["main"](args)
    found = {int(r["ori_filepath"]): r["step_num"] for r in map(json.loads, out.read_text().splitlines())}
    return [found.get(i) for i in range(len(replies))]


HANDPICKED = [
    # (reply, raystep's first wrong step); the paper reads the first three and drops the rest
    (
        "Before my final decision: step 1 looks neutral.\nFinal Decision:\nStep 1: correct; Step 2: incorrect",
        2,
    ),
    ("FINAL DECISION:\nStep 1 : correct; Step 2 : correct; Step 3 : neutral", 3),
    ("Final Decision:\nStep 1: correct; Step 2: incorrect (41 is wrong); Step 3: incorrect", 2),
    ("Final Decision: Step 1: correct, Step 2: incorrect", 2),  # commas: the paper finds two 'step's
    ("Final Decision:\n**Step 1**: correct; **Step 2**: incorrect", 2),  # bold: '2**' is not an int there
    ("Final Decision:\nStep 1: correct; Step 2: correct; Step 3: correct", 0),  # all correct: dropped there
]


def test_final_decision_parser_agrees_with_the_papers_parser(tmp_path, monkeypatch) -> None:
    replies = [verdict_reply(k, 3, style) for style in DECISION_STYLES for k in (0, 1, 2, 3)]
    replies += [reply for reply, _ in HANDPICKED]
    paper = paper_step_numbers(replies, tmp_path, monkeypatch)
    ours = [parse_final_decision(reply, 3).first_wrong for reply in replies]
    read = sum(p is not None for p in paper)
    assert read == 3 * len(DECISION_STYLES) + 3  # every generated wording with a wrong step, 3 handpicked
    for reply, p, o in zip(replies, paper, ours, strict=True):
        if p is not None:
            assert o == p, reply  # the same step wherever the paper's parser reads one
    assert ours[-len(HANDPICKED) :] == [expected for _, expected in HANDPICKED]
    for style in DECISION_STYLES:  # and what the styles meant to say
        for k in (0, 1, 2, 3):
            verdict = parse_final_decision(verdict_reply(k, 3, style), 3)
            assert verdict.first_wrong == k and verdict.parsed_by == "final_decision"


def test_final_decision_needs_its_marker_and_labels() -> None:
    with pytest.raises(VerdictParseError, match="no 'Final Decision'"):
        parse_final_decision("Step 1: correct; Step 2: incorrect", 2)
    with pytest.raises(VerdictParseError, match="no 'Step k: label'"):
        parse_final_decision("Final Decision: the answer is wrong.", 2)
    # read_verdict falls back to the free-text reader
    assert read_verdict("Step 1: correct; Step 2: incorrect", 2).parsed_by == "text"
    assert read_verdict("Final Decision:\nStep 9: incorrect\nStep 1: neutral", 2).first_wrong == 1


@pytest.mark.parametrize(
    ("reply", "expected", "notes"),
    [
        (
            '{"analysis": "x", "steps": {"step_1": "correct", "step_2": "neutral", "step_3": "incorrect"}, '
            '"first_wrong_step": 2}',
            2,
            {},
        ),
        (
            '{"steps": {"step_1": "correct", "step_2": "correct", "step_3": "correct"}, "first_wrong_step": 0}',
            0,
            {},
        ),
        # the labels decide; a stated step that disagrees is kept
        (
            '{"steps": {"step_1": "correct", "step_2": "incorrect", "step_3": "correct"}, "first_wrong_step": 1}',
            2,
            {"stated_first_wrong_step": 1},
        ),
        (
            '{"steps": {"step_1": "correct", "step_2": "correct", "step_3": "correct"}, "first_wrong_step": 3}',
            0,
            {"stated_first_wrong_step": 3},
        ),
        # a list of labels that stops early, then names a later step: the stated step fills in
        ('{"steps": ["correct"], "first_wrong_step": 3}', 3, {}),
        ('{"steps": ["correct", "neutral"], "first_wrong_step": 2}', 2, {}),
    ],
)
def test_structured_verdicts(reply: str, expected: int, notes: dict[str, Any]) -> None:
    verdict = parse_structured(reply, 3)
    assert verdict.first_wrong == expected and verdict.notes == notes and verdict.parsed_by == "schema"
    assert max(verdict.labels, default=0) <= (expected or 3)  # nothing after the first wrong step


@pytest.mark.parametrize(
    "reply",
    [
        "Step 1: correct",
        '{"steps": ["correct", "maybe"], "first_wrong_step": 0}',
        '{"steps": {"step_1": "correct"}, "first_wrong_step": "2"}',
        '{"steps": {"first": "correct"}, "first_wrong_step": 0}',
        '["correct"]',
        '{"steps": ["corr',
    ],
)
def test_structured_reader_rejects_what_is_not_the_schema(reply: str) -> None:
    with pytest.raises(VerdictParseError):
        parse_structured(reply, 3)


def test_verdict_schema_is_finite_and_inside_the_strict_subset() -> None:
    """Every object closed and fully required, enums instead of free lists and numbers: a reply under it
    always ends, and OpenAI's strict mode accepts it."""
    import jsonschema

    schema = verdict_schema(3)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["analysis", "steps", "first_wrong_step"]
    steps = schema["properties"]["steps"]
    assert steps["required"] == ["step_1", "step_2", "step_3"] and steps["additionalProperties"] is False
    assert schema["properties"]["first_wrong_step"]["enum"] == [0, 1, 2, 3]
    words = json.dumps(schema)
    for unsupported in ("maxLength", "minLength", "maxItems", "minItems", "maximum", "minimum", "pattern"):
        assert unsupported not in words
    assert "analysis" not in verdict_schema(3, analysis=False)["properties"]
    fmt = response_format(2)
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    good = {"analysis": "", "steps": {"step_1": "correct", "step_2": "incorrect"}, "first_wrong_step": 2}
    jsonschema.validate(good, fmt["json_schema"]["schema"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "first_wrong_step": 7}, fmt["json_schema"]["schema"])


def test_structured_mode_off_survives_yaml() -> None:
    from raystep.config import load_config

    assert load_config(None, ["localize.judge.structured=off"]).localize.judge.structured == "off"
    assert load_config(None, ["localize.judge.structured=on"]).localize.judge.structured == "auto"
