"""Rows between stages: JSONL/Parquet round trips, malformed rows named or rejected, the public pair schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raystep.records import (
    PUBLIC_PAIR_FIELDS,
    Rejects,
    RowError,
    append_jsonl,
    check_row,
    read_jsonl,
    read_parquet,
    read_rows,
    to_public_pair,
    write_jsonl,
    write_parquet,
)

PROBLEM = {"id": "p1", "dataset": "gsm8k", "question": "1+1?", "answer": "2"}
SAMPLE = {
    **PROBLEM,
    "sample_id": "p1-0",
    "sample_index": 0,
    "seed": 7,
    "prompt": "Q: 1+1?",
    "response": "Step 1: 1+1=3.\nStep 2: The answer is 3.",
    "steps": ["Step 1: 1+1=3.\n", "Step 2: The answer is 3."],
    "pred": "3",
    "correct": False,
    "grade_status": "ok",
    "num_tokens": 12,
}
LOCALIZED = {**SAMPLE, "first_wrong_step": 1, "localizer": "verifier", "evidence": "{}"}
PAIR = {
    "dataset": "gsm8k",
    "prompt": "1+1?",
    "initial_reason_steps": "Let's think step by step.\nStep 1:",
    "chosen": " 1+1=2.\n",
    "rejected": " 1+1=3.\n",
    "full_chosen": " 1+1=2.\nStep 2: The answer is 2.",
    "full_rejected": " 1+1=3.\nStep 2: The answer is 3.",
    "answer": "2",
    "pair_id": "p1-0-1",
    "problem_id": "p1",
    "step_index": 1,
    "chosen_success_rate": 1.0,
    "ref_chosen_logp": -3.5,
    "ref_rejected_logp": -4.25,
}
ROWS = {"problem": PROBLEM, "sample": SAMPLE, "localized": LOCALIZED, "pair": PAIR}


@pytest.mark.parametrize("kind", list(ROWS))
def test_jsonl_round_trip(tmp_path: Path, kind: str) -> None:
    rows = [dict(ROWS[kind], note=f"row {i} — ünïcode ∑") for i in range(3)]
    path = tmp_path / f"{kind}.jsonl"
    assert write_jsonl(path, rows) == 3
    assert read_jsonl(path, kind) == rows
    assert read_rows(path, kind) == rows
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


@pytest.mark.parametrize("kind", list(ROWS))
def test_parquet_round_trip(tmp_path: Path, kind: str) -> None:
    rows = [dict(ROWS[kind]) for _ in range(3)]
    path = tmp_path / f"{kind}.parquet"
    assert write_parquet(path, rows) == 3
    back = read_parquet(path, kind)
    for got, want in zip(back, rows, strict=True):
        assert {k: (list(v) if isinstance(v, tuple) else v) for k, v in got.items()} == want


def test_parquet_shard_folder_is_read_in_order(tmp_path: Path) -> None:
    for shard in (2, 0, 1):
        write_parquet(tmp_path / "samples" / f"part-{shard:05d}.parquet", [dict(SAMPLE, sample_index=shard)])
    rows = read_rows(tmp_path / "samples", "sample")
    assert [r["sample_index"] for r in rows] == [0, 1, 2]


def test_append_jsonl_accumulates(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    append_jsonl(path, [PROBLEM])
    append_jsonl(path, [dict(PROBLEM, id="p2")])
    assert [r["id"] for r in read_jsonl(path, "problem")] == ["p1", "p2"]


# --- malformed rows: each case fails naming file:line, or is rejected and counted -------------------

MALFORMED = [
    ("bad JSON line", "problem", '{"id": "p2", "question": "x"', "invalid JSON"),
    (
        "missing field",
        "problem",
        json.dumps({k: v for k, v in PROBLEM.items() if k != "answer"}),
        "missing field 'answer'",
    ),
    ("wrong type", "problem", json.dumps(dict(PROBLEM, question=5)), "field 'question' must be str"),
    (
        "wrong type int",
        "sample",
        json.dumps(dict(SAMPLE, sample_index="0")),
        "field 'sample_index' must be int",
    ),
    ("bool as int", "sample", json.dumps(dict(SAMPLE, seed=True)), "got bool"),
    ("steps not strings", "sample", json.dumps(dict(SAMPLE, steps=["a", 1])), "list of strings"),
    ("empty steps", "localized", json.dumps(dict(LOCALIZED, steps=[])), "outside 0..0"),
    ("step out of range", "localized", json.dumps(dict(LOCALIZED, first_wrong_step=5)), "outside 0..2"),
    ("empty chosen", "pair", json.dumps(dict(PAIR, chosen="  \n")), "field 'chosen' is empty"),
    ("empty rejected", "pair", json.dumps(dict(PAIR, rejected="")), "field 'rejected' is empty"),
    ("not an object", "pair", json.dumps(["a", "b"]), "expected a JSON object"),
]


def _file_with_bad_line(tmp_path: Path, kind: str, bad: str) -> Path:
    path = tmp_path / f"{kind}.jsonl"
    good = json.dumps(ROWS[kind])
    path.write_text("\n".join([good, good, bad, good]) + "\n")  # the bad row is line 3
    return path


@pytest.mark.parametrize("case, kind, bad, reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_row_fails_with_file_and_line(
    tmp_path: Path, case: str, kind: str, bad: str, reason: str
) -> None:
    path = _file_with_bad_line(tmp_path, kind, bad)
    with pytest.raises(RowError) as err:
        read_jsonl(path, kind)
    assert str(err.value).startswith(f"{path}:3: ")
    assert reason in str(err.value)


@pytest.mark.parametrize("case, kind, bad, reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_row_goes_to_rejects_and_is_counted(
    tmp_path: Path, case: str, kind: str, bad: str, reason: str
) -> None:
    path = _file_with_bad_line(tmp_path, kind, bad)
    rejects = Rejects(tmp_path / "rejects.jsonl")
    rows = read_jsonl(path, kind, rejects)
    assert len(rows) == 3  # the three good rows, nothing else lost
    assert rejects.count == 1 and sum(rejects.reasons.values()) == 1
    assert not rejects.path.exists()  # written once, by save
    rejects.save()
    kept = read_jsonl(rejects.path)
    assert len(kept) == 1
    assert kept[0]["source"] == str(path) and kept[0]["line"] == 3
    assert reason in kept[0]["reason"]
    assert kept[0]["raw"] == bad  # the original text, to fix and re-feed


def test_parquet_malformed_row_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "pairs.parquet"
    write_parquet(path, [PAIR, dict(PAIR, chosen=" ")])
    with pytest.raises(RowError, match=r"pairs\.parquet:row 2: field 'chosen' is empty"):
        read_parquet(path, "pair")


def test_check_row_names_the_field() -> None:
    with pytest.raises(ValueError, match="missing field 'sample_id'"):
        check_row({k: v for k, v in SAMPLE.items() if k != "sample_id"}, "sample")
    check_row(dict(PROBLEM, level=None, subject=None), "problem")  # optional fields may be null


# --- the public pair schema --------------------------------------------------------------------------


def test_a_math_step_dpo_10k_row_is_read_as_a_pair_and_written_back_in_its_column_order(
    tmp_path: Path,
) -> None:
    """A row as xinlai/Math-Step-DPO-10K publishes it (its eight columns, in its order) is a valid pair
    file for training, a row missing one of them is refused, and raystep writes pairs in that order."""
    published = {
        "dataset": "MATH",
        "prompt": "What is 2 + 3?",
        "initial_reason_steps": "Step 1: We add.\nStep 2:",
        "chosen": " 2 + 3 = 5.",
        "rejected": " 2 + 3 = 6.",
        "full_chosen": " 2 + 3 = 5. The answer is 5.",
        "full_rejected": " 2 + 3 = 6. The answer is 6.",
        "answer": "5",
    }
    path = tmp_path / "public.jsonl"
    path.write_text(json.dumps(published) + "\n")
    (row,) = read_rows(path, kind="pair")
    assert to_public_pair(row) == published and list(to_public_pair(row)) == list(published)
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps({k: v for k, v in published.items() if k != "initial_reason_steps"}) + "\n")
    with pytest.raises(ValueError, match="initial_reason_steps"):
        read_rows(partial, kind="pair")


def test_to_public_pair_is_exact() -> None:
    public = to_public_pair(PAIR)
    assert list(public) == list(PUBLIC_PAIR_FIELDS)  # same names, same order, nothing extra
    assert all(isinstance(v, str) for v in public.values())
    assert (
        public["chosen"] == PAIR["chosen"] and public["initial_reason_steps"] == PAIR["initial_reason_steps"]
    )
    minimal = to_public_pair({"prompt": "q", "initial_reason_steps": "", "chosen": "a", "rejected": "b"})
    assert minimal["full_chosen"] == "" and minimal["answer"] == ""


def test_public_pair_file_reads_unchanged(tmp_path: Path) -> None:
    """A file with only the public fields (as on the hub) validates as pairs and round-trips byte for byte."""
    public = [to_public_pair(dict(PAIR, prompt=f"q{i}")) for i in range(3)]
    path = tmp_path / "public.jsonl"
    write_jsonl(path, public)
    rows = read_jsonl(path, "pair")
    assert rows == public
    again = tmp_path / "again.jsonl"
    write_jsonl(again, [to_public_pair(r) for r in rows])
    assert again.read_bytes() == path.read_bytes()
