"""The pairs as the page holds them: a compact columnar index, preview chunks and detail chunks.

The browser filters and sorts the *index* only: one small integer (or a dictionary code) per pair and
column, loaded with the page. The texts live in chunk files loaded on demand: *preview* chunks (the
pair id and the first characters of both steps, for the rows on screen) and *detail* chunks (every
text of a pair, for the pair that is opened). Detail chunks keep each distinct string once (pairs of
one sample share question, prefix and localizer replies; a full solution is stored without the step
it starts with), so 100,000 pairs cost a few dozen bytes of index per pair plus their texts, once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from raystep.report.load import pair_key
from raystep.stages.localize import method_results

PREVIEW_CHARS = 90
"""Characters of each step shown in the table row (the full text is one click away)."""

_STEP_HEADER = re.compile(r"Step (\d+):")


def step_of(row: dict[str, Any]) -> int:
    """The pair's step k: ``step_index``, else the last ``Step k:`` header of the prefix (public data)."""
    if isinstance(row.get("step_index"), int):
        return int(row["step_index"])
    found = _STEP_HEADER.findall(row.get("initial_reason_steps") or "")
    return int(found[-1]) if found else 0


def verdicts_of(localized_row: dict[str, Any]) -> list[dict[str, Any]]:
    """Each localizer's verdict on a sample, with the judge's reply and the rollout probes when present."""
    try:
        results = method_results(localized_row)
    except (ValueError, TypeError):
        return [
            {
                "method": str(localized_row.get("localizer") or "?"),
                "k": localized_row.get("first_wrong_step"),
                "error": "evidence is not valid JSON",
            }
        ]
    out = []
    for name, res in results.items():
        ev = res.get("evidence") or {}
        verdict: dict[str, Any] = {
            "method": name,
            "k": res.get("first_wrong_step"),
            "error": res.get("error"),
        }
        if isinstance(ev, dict):
            if ev.get("reply") is not None:
                verdict["reply"] = str(ev["reply"])
            if ev.get("labels"):
                verdict["labels"] = ev["labels"]
            if ev.get("probes"):
                verdict["probes"] = ev["probes"]
            if ev.get("model"):
                verdict["model"] = str(ev["model"])
        out.append(verdict)
    return out


def agreement_code(verdicts: list[dict[str, Any]]) -> int:
    """0: one method (or fewer than two answered), 1: all answering methods agree, 2: they disagree."""
    answered = [v["k"] for v in verdicts if not v.get("error")]
    if len(verdicts) < 2 or len(answered) < 2:
        return 0
    return 1 if len(set(answered)) == 1 else 2


@dataclass
class Codes:
    """A dictionary column: strings to small integers, in first-seen order (-1 for none)."""

    values: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def code(self, value: Any) -> int:
        if value is None or value == "":
            return -1
        key = str(value)
        if key not in self.index:
            self.index[key] = len(self.values)
            self.values.append(key)
        return self.index[key]


class Strings:
    """A chunk's string table: each distinct text stored once, referenced by position."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.index: dict[str, int] = {}

    def ref(self, text: Any) -> int:
        if text is None:
            return -1
        text = str(text)
        if text not in self.index:
            self.index[text] = len(self.values)
            self.values.append(text)
        return self.index[text]


def _rate(value: Any) -> int:
    return -1 if value is None else int(round(1000 * float(value)))


@dataclass
class PairTables:
    index: dict[str, Any]
    previews: list[list[list[Any]]]
    details: list[dict[str, Any]]


def build_pair_tables(
    pairs: list[dict[str, Any]],
    problems: dict[str, dict[str, Any]],
    verdicts: dict[str, list[dict[str, Any]]],
    reference: dict[str, tuple[float, float]],
    preview_chunk: int = 250,
    detail_chunk: int = 200,
) -> PairTables:
    """Index columns plus preview and detail chunks, pairs in ``pair_id`` order (as ``pairs.jsonl``)."""
    rows = sorted(pairs, key=lambda r: (str(r.get("pair_id") or ""), pair_key(r)))
    ds, lvl, subj, loc = Codes(), Codes(), Codes(), Codes()
    cols: dict[str, list[Any]] = {
        name: []
        for name in (
            "ds",
            "lvl",
            "subj",
            "k",
            "loc",
            "agree",
            "rate",
            "crate",
            "plen",
            "rlen",
            "clen",
            "margin",
        )
    }
    verdict_json: dict[str, str] = {}  # one serialisation per sample, shared by its pairs
    previews: list[list[list[Any]]] = []
    details: list[dict[str, Any]] = []
    strings = Strings()
    detail_rows: list[list[Any]] = []
    for i, row in enumerate(rows):
        problem = problems.get(str(row.get("problem_id") or ""), {})
        sample_id = str(row.get("sample_id") or "")
        sample_verdicts = verdicts.get(sample_id, [])
        if sample_verdicts and sample_id not in verdict_json:
            verdict_json[sample_id] = json.dumps(sample_verdicts, ensure_ascii=False)
        ref = reference.get(pair_key(row))
        prompt, prefix = row.get("prompt") or "", row.get("initial_reason_steps") or ""
        chosen, rejected = row.get("chosen") or "", row.get("rejected") or ""
        cols["ds"].append(ds.code(row.get("dataset") or problem.get("dataset")))
        cols["lvl"].append(lvl.code(problem.get("level")))
        cols["subj"].append(subj.code(problem.get("subject")))
        cols["k"].append(step_of(row))
        cols["loc"].append(loc.code(row.get("localizer")))
        cols["agree"].append(agreement_code(sample_verdicts))
        cols["rate"].append(_rate(row.get("rectify_success_rate")))
        cols["crate"].append(_rate(row.get("chosen_success_rate")))
        cols["plen"].append(len(prompt) + len(prefix))
        cols["rlen"].append(len(rejected))
        cols["clen"].append(len(chosen))
        cols["margin"].append(None if ref is None else round(ref[0] - ref[1], 4))

        if i % preview_chunk == 0:
            previews.append([])
        previews[-1].append(
            [str(row.get("pair_id") or f"#{i}"), rejected[:PREVIEW_CHARS], chosen[:PREVIEW_CHARS]]
        )
        detail_rows.append(
            [
                str(row.get("pair_id") or f"#{i}"),
                strings.ref(prompt),
                strings.ref(prefix),
                strings.ref(rejected),
                strings.ref(chosen),
                strings.ref(_tail(row.get("full_rejected"), rejected)),
                strings.ref(_tail(row.get("full_chosen"), chosen)),
                strings.ref(row.get("answer")),
                strings.ref(row.get("problem_id")),
                strings.ref(row.get("sample_id")),
                strings.ref(verdict_json[sample_id]) if sample_verdicts else -1,
                None if ref is None else ref[0],
                None if ref is None else ref[1],
                strings.ref(row.get("policy_model")),
                strings.ref(row.get("sampling")),
                _starts(row.get("full_rejected"), rejected) | 2 * _starts(row.get("full_chosen"), chosen),
            ]
        )
        if len(detail_rows) == detail_chunk:
            details.append({"s": strings.values, "r": detail_rows})
            strings, detail_rows = Strings(), []
    if detail_rows:
        details.append({"s": strings.values, "r": detail_rows})
    levels = sorted(range(len(lvl.values)), key=lambda c: _level_key(lvl.values[c]))
    index = {
        "n": len(rows),
        "cols": cols,
        "dicts": {"ds": ds.values, "lvl": lvl.values, "subj": subj.values, "loc": loc.values},
        "level_order": levels,
        "preview_chunk": preview_chunk,
        "detail_chunk": detail_chunk,
        "has_reference": any(m is not None for m in cols["margin"]),
    }
    return PairTables(index, previews, details)


def _starts(full: Any, step: str) -> int:
    return int(bool(step) and isinstance(full, str) and full.startswith(step))


def _tail(full: Any, step: str) -> Any:
    """A full solution without its first step when it starts with it (the step is stored already)."""
    return full[len(step) :] if _starts(full, step) else full


def _level_key(level: str) -> tuple[int, float, str]:
    digits = re.findall(r"\d+", level)
    return (0, float(digits[0]), level) if digits else (1, 0.0, level)
