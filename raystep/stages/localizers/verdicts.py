"""Reading a judge's verdict: schema JSON, the paper's ``Final Decision`` line, or free text.

Three readers, tried in this order by :func:`read_verdict`:

- ``schema``: the JSON object of :func:`verdict_schema`, what a structured-output request returns
  (OpenAI ``response_format: json_schema``; vLLM behind ``ray.serve.llm`` decodes under the same schema).
  Every reply of a server that enforces the schema parses, whatever the model thinks.
- ``final_decision``: the paper's format, ``Final Decision:\\nStep 1: correct; Step 2: neutral; ...``
  (``data_pipeline/locate_error_by_gpt4.py`` asks for it, ``prepare_for_correction.py`` reads it). It
  reads every wording that parser reads and a few it drops (commas between steps, bold step names).
- ``text``: free text in the shapes judges like (``Step 3: incorrect``, ``**Step 2** - Neutral``, JSON
  lists or objects, prose naming the first incorrect step): the fallback for every prompt and mode.

Neutral counts as an error everywhere (a step that makes no progress is not a step worth keeping), and
the first wrong step is 1-based, 0 when every judged step is correct.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

LABELS = ("correct", "neutral", "incorrect")
WRONG_LABELS = frozenset({"neutral", "incorrect"})


class VerdictParseError(ValueError):
    """A reply that names no step label: retried, then recorded as the row's error (and counted)."""


@dataclass(frozen=True)
class Verdict:
    """A judge's reading of one solution."""

    first_wrong: int
    """1-based first step labelled neutral or incorrect; 0 when none is."""
    labels: dict[int, str]
    """Step number -> label, for the steps the judge labelled (it stops at the first wrong one)."""
    parsed_by: str
    """Which reader understood the reply: ``schema``, ``final_decision`` or ``text``."""
    notes: dict[str, Any] = field(default_factory=dict)
    """What the reply said beyond the labels (a stated first wrong step that disagrees with them)."""


def _first_wrong(labels: dict[int, str]) -> int:
    wrong = sorted(k for k, v in labels.items() if v in WRONG_LABELS)
    return wrong[0] if wrong else 0


# --- structured outputs ------------------------------------------------------------------------------

SCHEMA_NAME = "step_verdicts"


def step_key(k: int) -> str:
    return f"step_{k}"


def verdict_schema(num_steps: int, analysis: bool = True) -> dict[str, Any]:
    """The verdict of one solution as JSON: an optional analysis, a label per step, the first wrong step.

    The steps are fixed keys (``step_1`` .. ``step_S``) and the first wrong step an enum of ``0..S``, so a
    reply under this schema is finite whatever the model does (a free list or integer lets a weak model
    loop until ``max_tokens`` cuts the JSON off). It stays inside the subset every structured-output
    server takes (OpenAI's strict mode: every field required, no extra keys, enums, no length or numeric
    bounds; vLLM's guided decoding takes any of it). Only ``analysis`` is free text: a capable judge
    writes the paper's short analysis there first; ``localize.judge.analysis: false`` drops it.
    """
    label = {"type": "string", "enum": list(LABELS)}
    steps = {
        "type": "object",
        "description": "The decision for each step; only the steps up to the first neutral or incorrect one count.",
        "properties": {step_key(k): label for k in range(1, num_steps + 1)},
        "required": [step_key(k) for k in range(1, num_steps + 1)],
        "additionalProperties": False,
    }
    first = {
        "type": "integer",
        "enum": list(range(num_steps + 1)),
        "description": "The number of the first step judged neutral or incorrect; 0 if all are correct.",
    }
    properties: dict[str, Any] = {}
    if analysis:
        properties["analysis"] = {
            "type": "string",
            "description": "A short step-by-step analysis of the answer (no more than 200 words).",
        }
    properties.update(steps=steps, first_wrong_step=first)
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def response_format(num_steps: int, analysis: bool = True) -> dict[str, Any]:
    """The ``response_format`` of a structured-output chat request for a solution of ``num_steps`` steps."""
    return {
        "type": "json_schema",
        "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": verdict_schema(num_steps, analysis)},
    }


def _schema_labels(steps: Any, num_steps: int) -> dict[int, str] | None:
    """Labels from the schema's ``steps`` (``{"step_k": label}``; a plain list is read too)."""
    if isinstance(steps, list):
        items = list(enumerate(steps, start=1))
    elif isinstance(steps, dict):
        items = []
        for key, value in steps.items():
            m = re.fullmatch(r"step_(\d+)", str(key))
            if not m:
                return None
            items.append((int(m.group(1)), value))
    else:
        return None
    if any(label not in LABELS for _, label in items):
        return None
    return {k: str(label) for k, label in sorted(items) if 1 <= k <= num_steps}


def parse_structured(text: str, num_steps: int) -> Verdict:
    """A schema reply. The labels decide (up to the first wrong one); the stated first wrong step only fills
    in when they name no wrong step and stop short of it, and a disagreement is kept in ``notes``."""
    try:
        obj = json.loads(text, strict=False)  # a raw control character inside a string is still JSON to us
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise VerdictParseError(f"not schema JSON: {str(text)[:120]!r}") from exc
    if not isinstance(obj, dict):
        raise VerdictParseError(f"not a JSON object: {str(text)[:120]!r}")
    labels, stated = _schema_labels(obj.get("steps"), num_steps), obj.get("first_wrong_step")
    if labels is None:
        raise VerdictParseError(f"'steps' does not label steps {'/'.join(LABELS)}: {str(text)[:120]!r}")
    if isinstance(stated, bool) or not isinstance(stated, int):
        raise VerdictParseError(f"'first_wrong_step' is not an integer: {str(text)[:120]!r}")
    first = _first_wrong(labels)
    if first:  # the judge stops at the first wrong step: labels after it do not count
        labels = {k: v for k, v in labels.items() if k <= first}
    elif 1 <= stated <= num_steps and stated > max(labels, default=0):
        first = stated
        labels[stated] = "incorrect"
    notes = {} if stated == first else {"stated_first_wrong_step": stated}
    return Verdict(first, labels, "schema", notes)


# --- the paper's Final Decision ------------------------------------------------------------------------

_DECISION = re.compile(r"(?:final|summary)\s+decision", re.I)
_DECISION_ITEM = re.compile(
    r"\bstep\s*\**\s*#?(\d+)\s*\**\s*(?:[:\-\u2013\u2014=]|\bis\b)?\s*\**\s*(incorrect|neutral|correct)\b",
    re.I,
)


def parse_final_decision(text: str, num_steps: int) -> Verdict:
    """The labels after the last ``Final Decision`` (or ``Summary Decision``), as the paper reads them.

    The paper's parser (``prepare_for_correction.py``) takes the text after the last ``final decision``
    and after ``summary decision:``, finds the first ``neutral`` or ``incorrect`` there and reads the
    step number written just before it; a reply with neither is dropped. This reads each
    ``Step k: label`` item of that segment, so it gives the same step on every reply the paper's parser
    reads, and also reads all-correct decisions (first wrong step 0) and comma-separated lists.
    """
    marks = list(_DECISION.finditer(text))
    if not marks:
        raise VerdictParseError("no 'Final Decision' in the reply")
    segment = text[marks[-1].end() :]
    labels: dict[int, str] = {}
    for m in _DECISION_ITEM.finditer(segment):
        step = int(m.group(1))
        if 1 <= step <= num_steps:
            labels.setdefault(step, m.group(2).lower())
    if not labels:
        raise VerdictParseError(f"no 'Step k: label' after 'Final Decision': {segment[:120]!r}")
    return Verdict(_first_wrong(labels), labels, "final_decision")


# --- free text -----------------------------------------------------------------------------------------

_NEGATED = re.compile(r"\b(?:not|isn't|is not|n't)\s+(?:fully\s+|entirely\s+)?correct\b", re.I)
_LABEL_WORD = re.compile(
    r"\b(incorrect(?:ly)?|wrong(?:ly)?|erroneous|errors?|invalid|neutral|correct(?:ly)?|right|valid)\b"
    r"|([\u2713\u2717\u2714\u2718\u274c\u2705])",
    re.I,
)
_LABEL_MAP = {
    "incorrect": "incorrect",
    "wrong": "incorrect",
    "erroneous": "incorrect",
    "error": "incorrect",
    "invalid": "incorrect",
    "neutral": "neutral",
    "correct": "correct",
    "right": "correct",
    "valid": "correct",
    "\u2713": "correct",
    "\u2714": "correct",
    "\u2705": "correct",
    "\u2717": "incorrect",
    "\u2718": "incorrect",
    "\u274c": "incorrect",
}
_STEP_MENTION = re.compile(r"\bstep\s*\**\s*#?\s*(\d+)\b", re.I)
_ALL_CORRECT = re.compile(
    r"\b(?:all|every)\s+(?:the\s+)?steps?\s+(?:are|is)\s+correct\b|\bno\s+(?:incorrect|wrong)\s+steps?\b",
    re.I,
)
_FIRST_WRONG = re.compile(
    r"first\s+(?:incorrect|wrong|erroneous)\s+step\s*(?:is|:)?\s*(?:step\s*)?\**\s*(\d+|none|-1)", re.I
)


def _norm_label(value: Any) -> str | None:
    if isinstance(value, bool):
        return "correct" if value else "incorrect"
    if isinstance(value, (int, float)):
        return {1: "correct", 0: "neutral", -1: "incorrect"}.get(int(value))
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _NEGATED.search(text):
        return "incorrect"
    m = _LABEL_WORD.search(text)
    if not m:
        return None
    word = (m.group(1) or m.group(2)).lower()
    return _LABEL_MAP.get(word) or _LABEL_MAP[re.sub(r"(?:ly|s)$", "", word)]


def _labels_from_json(obj: Any) -> dict[int, str] | None:
    """Labels from the JSON shapes judges like to produce; None when the shape is not one of them."""
    if isinstance(obj, dict):
        for key in ("steps", "verdicts", "labels", "judgements", "judgments", "results"):
            if key in obj:
                return _labels_from_json(obj[key])
        labels: dict[int, str] = {}
        for key, value in obj.items():
            m = re.fullmatch(r"\s*(?:step\s*)?(\d+)\s*", str(key), re.I)
            label = _norm_label(
                value.get("label", value.get("verdict")) if isinstance(value, dict) else value
            )
            if m and label:
                labels[int(m.group(1))] = label
        return labels or None
    if isinstance(obj, list):
        labels = {}
        for i, item in enumerate(obj, start=1):
            if isinstance(item, dict):
                step = item.get("step", item.get("index", i))
                raw = next(
                    (item[k] for k in ("label", "verdict", "judgement", "judgment", "result") if k in item),
                    None,
                )
                label = _norm_label(raw)
                try:
                    step = int(re.sub(r"\D", "", str(step)) or i)
                except ValueError:
                    step = i
            else:
                step, label = i, _norm_label(item)
            if label:
                labels.setdefault(step, label)
        return labels or None
    return None


def _json_candidates(text: str) -> list[Any]:
    blocks = re.findall(r"```(?:json)?\s*(.*?)```", text, re.S)
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if starts:
        s = min(starts)
        e = max(text.rfind("]"), text.rfind("}"))
        if e > s:
            blocks.append(text[s : e + 1])
    out = []
    for block in blocks:
        try:
            out.append(json.loads(block))
        except (json.JSONDecodeError, ValueError):
            continue
    return out


def parse_verdicts(text: str, num_steps: int) -> tuple[int, dict[int, str]]:
    """(first wrong step, labels) from a free-text reply; first wrong is 1-based, 0 when none.

    Neutral counts as wrong. Raises ``VerdictParseError`` when the reply labels no step at all and does
    not say that every step is correct.
    """
    labels: dict[int, str] = {}
    for obj in _json_candidates(text):
        found = _labels_from_json(obj)
        if found:
            labels = found
            break
    if not labels:
        mentions = list(_STEP_MENTION.finditer(text))
        for i, m in enumerate(mentions):
            end = mentions[i + 1].start() if i + 1 < len(mentions) else len(text)
            segment = text[m.end() : end]
            # a label belongs to its step's line: stop at the first blank line
            segment = re.split(r"\n\s*\n", segment, maxsplit=1)[0]
            label = _norm_label(segment)
            step = int(m.group(1))
            if label and 1 <= step <= num_steps:
                labels.setdefault(step, label)
    labels = {k: v for k, v in labels.items() if 1 <= k <= num_steps}
    wrong = sorted(k for k, v in labels.items() if v in WRONG_LABELS)
    if wrong:
        return wrong[0], labels
    first = _FIRST_WRONG.search(text)
    if first and first.group(1).isdigit() and 1 <= int(first.group(1)) <= num_steps:
        step = int(first.group(1))
        labels.setdefault(step, "incorrect")
        return step, labels
    if labels or _ALL_CORRECT.search(text) or (first and not first.group(1).isdigit()):
        return 0, labels
    raise VerdictParseError(f"no step verdict found in reply: {text[:200]!r}")


# --- all readers ---------------------------------------------------------------------------------------


def read_verdict(text: str, num_steps: int, structured: bool = False) -> Verdict:
    """The verdict of a reply: schema JSON first when it was requested, then ``Final Decision``, then
    free text. A structured request answered in free text (a server that ignored ``response_format``)
    still parses; ``VerdictParseError`` only when no reader understands the reply."""
    if structured:
        try:
            return parse_structured(text, num_steps)
        except VerdictParseError:
            pass
    try:
        return parse_final_decision(text, num_steps)
    except VerdictParseError:
        pass
    first, labels = parse_verdicts(text, num_steps)
    return Verdict(first, labels, "text")
