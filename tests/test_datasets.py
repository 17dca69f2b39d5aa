"""Problem loaders on the shipped data, generic files, hub names, and malformed input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raystep.config import DataConfig
from raystep.datasets import (
    DatasetError,
    default_data_dir,
    load_benchmark,
    load_problems,
    to_problem,
)
from raystep.records import Rejects, RowError, check_row, read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _valid(rows: list[dict]) -> None:
    for row in rows:
        check_row(row, "problem")
        assert row["question"].strip() and row["answer"].strip()
    assert len({r["id"] for r in rows}) == len(rows)


# --- the shipped benchmark files ---------------------------------------------------------------------


def test_gsm8k_test_openai_format(shared_data: Path) -> None:
    rows = load_benchmark("gsm8k", shared_data)
    assert len(rows) == 1319
    _valid(rows)
    assert all(re.fullmatch(r"-?\d+", r["answer"]) for r in rows)  # '#### 2,125' -> '2125'
    assert rows[0]["answer"] == "18" and rows[0]["id"] == "gsm8k-test-0" and rows[0]["dataset"] == "gsm8k"
    assert rows[0]["solution"].endswith("#### 18")
    assert sum(r["answer"].startswith("-") for r in rows) == 2


def test_gsm8k_train_split_and_limit(shared_data: Path) -> None:
    rows = load_problems(DataConfig(source="gsm8k", split="train", limit=25), shared_data)
    assert len(rows) == 25 and rows[0]["id"] == "gsm8k-train-0"
    _valid(rows)


def test_gsm8k_stepdpo_format_matches_openai_test(shared_data: Path) -> None:
    stepdpo = load_benchmark("gsm8k-stepdpo", shared_data)
    openai = load_benchmark("gsm8k", shared_data)
    assert len(stepdpo) == 1319
    _valid(stepdpo)
    assert stepdpo[0]["id"] == "GSM8K_0" and stepdpo[0]["dataset"] == "gsm8k"
    assert [r["answer"] for r in stepdpo] == [r["answer"] for r in openai]
    assert [r["solution"] for r in stepdpo] == [r["solution"] for r in openai]


def test_math500(shared_data: Path) -> None:
    rows = load_benchmark("math500", shared_data)
    assert len(rows) == 500
    _valid(rows)
    raw = [
        json.loads(line) for line in (shared_data / "math" / "math500_test.jsonl").read_text().splitlines()
    ]
    assert [r["answer"] for r in rows] == [r["answer"].strip() for r in raw]
    assert [r["id"] for r in rows] == [r["unique_id"] for r in raw]
    assert {r["level"] for r in rows} == {1, 2, 3, 4, 5}
    assert len({r["subject"] for r in rows}) == 7
    assert load_benchmark("math500", shared_data, limit=7) == rows[:7]


def test_full_math_format_takes_the_gold_from_the_solution(tmp_path: Path) -> None:
    """Hendrycks MATH records (problem, level 'Level N', type, solution) have no answer field."""
    records = [
        {"problem": "What is $1+1$?", "level": "Level 1", "type": "Algebra", "solution": "$1+1=\\boxed{2}$."},
        {
            "problem": "Simplify.",
            "level": "Level ?",
            "type": "Geometry",
            "solution": "First \\boxed{3}, no: $\\boxed{\\frac{\\sqrt{3}}{2}}$",
        },
    ]
    (tmp_path / "math").mkdir()
    (tmp_path / "math" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = load_benchmark("math", tmp_path)
    assert [r["answer"] for r in rows] == ["2", "\\frac{\\sqrt{3}}{2}"]
    assert rows[0]["level"] == 1 and "level" not in rows[1]
    assert rows[0]["subject"] == "Algebra" and rows[0]["dataset"] == "math"
    assert rows[0]["id"] == "math-test-0"


def test_unknown_benchmark_and_source(shared_data: Path) -> None:
    with pytest.raises(DatasetError, match="unknown benchmark 'aime'"):
        load_benchmark("aime", shared_data)
    with pytest.raises(DatasetError, match="unknown data.source 'nope'"):
        load_problems(DataConfig(source="nope"), shared_data)
    with pytest.raises(DatasetError, match="needs data.path"):
        load_problems(DataConfig(source="jsonl"), shared_data)
    with pytest.raises(DatasetError, match="does not exist"):
        load_problems(DataConfig(source="jsonl", path=str(shared_data / "missing.jsonl")), shared_data)
    with pytest.raises(DatasetError, match="needs data.hub_name"):
        load_problems(DataConfig(source="hub"), shared_data)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_data: Path) -> None:
    monkeypatch.setenv("RAYSTEP_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv("RAYSTEP_DATA", str(tmp_path / "missing"))
    assert default_data_dir() is None
    monkeypatch.setenv("RAYSTEP_DATA", str(shared_data))
    assert len(load_problems(DataConfig(source="math500", split="test", limit=2))) == 2


# --- generic files -------------------------------------------------------------------------------------


def test_generic_jsonl_with_column_map(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        "".join(json.dumps({"q": f"What is {i}+1?", "gold": i + 1, "uid": f"u{i}"}) + "\n" for i in range(4))
    )
    data = DataConfig(
        source="jsonl", path=str(path), column_map={"question": "q", "answer": "gold", "id": "uid"}
    )
    rows = load_problems(data)
    assert [r["answer"] for r in rows] == ["1", "2", "3", "4"]  # integers are accepted as answers
    assert rows[2] == {"id": "u2", "dataset": "mine", "question": "What is 2+1?", "answer": "3"}


def test_generic_parquet_and_json_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    table = pa.Table.from_pylist(
        [{"problem": "p1", "answer": "1", "level": 3}, {"problem": "p2", "answer": "2"}]
    )
    pq.write_table(table, folder / "a.parquet")
    (folder / "b.json").write_text(json.dumps([{"question": "p3", "answer": "#### 3,000"}]))
    rows = load_problems(DataConfig(source="parquet", path=str(folder)))
    assert [r["question"] for r in rows] == ["p1", "p2", "p3"]
    assert rows[0]["level"] == 3 and "level" not in rows[1]
    assert rows[2]["answer"] == "3000"  # a '####' answer is a worked GSM8K-style solution
    assert [r["id"] for r in rows] == ["set-0", "set-1", "set-2"]


def test_to_problem_formats() -> None:
    stepdpo = to_problem(
        {"idx": "GSM8K_3", "instruction": "Q?", "output": "x\n#### 1,5", "answer": ["1,5"]}, "gsm8k", 3
    )
    assert stepdpo == {
        "id": "GSM8K_3",
        "dataset": "gsm8k",
        "question": "Q?",
        "answer": "15",
        "solution": "x\n#### 1,5",
    }
    openai = to_problem({"question": "Q?", "answer": "a\n#### 7"}, "gsm8k", 0, id_prefix="gsm8k-train")
    assert openai["answer"] == "7" and openai["solution"] == "a\n#### 7" and openai["id"] == "gsm8k-train-0"


# --- malformed input: file and line, or rejects and counted ---------------------------------------------

MALFORMED = [
    ("bad JSON line", '{"question": "x", "answer": ', "invalid JSON"),
    ("missing question", json.dumps({"answer": "1"}), "missing field 'question'"),
    ("missing answer", json.dumps({"question": "q"}), "missing field 'answer'"),
    (
        "no boxed in solution",
        json.dumps({"problem": "q", "solution": "no answer here"}),
        "no \\boxed{} answer",
    ),
    (
        "question wrong type",
        json.dumps({"question": ["q"], "answer": "1"}),
        "field 'question' must be a string",
    ),
    (
        "answer wrong type",
        json.dumps({"question": "q", "answer": {"v": 1}}),
        "field 'answer' must be a string",
    ),
    ("answer bool", json.dumps({"question": "q", "answer": True}), "field 'answer' must be a string"),
    ("level wrong type", json.dumps({"question": "q", "answer": "1", "level": [1]}), "field 'level'"),
    ("empty question", json.dumps({"question": "  ", "answer": "1"}), "field 'question' is empty"),
    ("empty answer", json.dumps({"question": "q", "answer": " "}), "empty answer"),
    ("empty answer list", json.dumps({"instruction": "q", "answer": []}), "empty list"),
    ("not an object", json.dumps([1, 2]), "expected an object"),
    ("duplicate id", json.dumps({"id": "a", "question": "q", "answer": "1"}), "duplicate id 'a'"),
]


def _generic_file(tmp_path: Path, bad: str) -> Path:
    path = tmp_path / "problems.jsonl"
    good = [json.dumps({"id": f"g{i}", "question": f"q{i}", "answer": str(i)}) for i in range(3)]
    lines = [good[0], json.dumps({"id": "a", "question": "q", "answer": "1"}), "", good[1], bad, good[2]]
    path.write_text("\n".join(lines) + "\n")  # the bad record is on line 5 (a blank line 3 is skipped)
    return path


@pytest.mark.parametrize("case, bad, reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_record_fails_with_file_and_line(tmp_path: Path, case: str, bad: str, reason: str) -> None:
    path = _generic_file(tmp_path, bad)
    with pytest.raises(RowError) as err:
        load_problems(DataConfig(source="jsonl", path=str(path)))
    assert str(err.value).startswith(f"{path}:5: ")
    assert reason in str(err.value)


@pytest.mark.parametrize("case, bad, reason", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_record_goes_to_rejects(tmp_path: Path, case: str, bad: str, reason: str) -> None:
    path = _generic_file(tmp_path, bad)
    rejects = Rejects(tmp_path / "problems" / "rejects.jsonl")
    rows = load_problems(DataConfig(source="jsonl", path=str(path), rejects=True), rejects=rejects)
    assert [r["id"] for r in rows] == ["g0", "a", "g1", "g2"]  # every good row kept
    assert rejects.count == 1
    rejects.save()
    kept = read_jsonl(rejects.path)
    assert (kept[0]["source"], kept[0]["line"]) == (str(path), 5)
    assert reason in kept[0]["reason"]


def test_rejects_do_not_count_against_limit(tmp_path: Path) -> None:
    path = _generic_file(tmp_path, "{broken")
    rejects = Rejects(tmp_path / "rejects.jsonl")
    rows = load_problems(DataConfig(source="jsonl", path=str(path), limit=3), rejects=rejects)
    assert [r["id"] for r in rows] == ["g0", "a", "g1"] and rejects.count == 0
    rows = load_problems(DataConfig(source="jsonl", path=str(path), limit=4), rejects=rejects)
    assert [r["id"] for r in rows] == ["g0", "a", "g1", "g2"] and rejects.count == 1


def test_parquet_malformed_row_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"question": "q", "answer": "1"}, {"question": "", "answer": "2"}]), path
    )
    with pytest.raises(RowError, match=r"p\.parquet:row 2: field 'question' is empty"):
        load_problems(DataConfig(source="parquet", path=str(path)))


def test_malformed_json_array_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n{"question": "q", "answer": "1"},\n{"question": }\n]')
    with pytest.raises(RowError, match=r"bad\.json:3: invalid JSON"):
        load_problems(DataConfig(source="json", path=str(path)))


# --- hub names --------------------------------------------------------------------------------------------


def test_hub_name_through_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``datasets.load_dataset`` for real, on a local dataset folder (the hub itself is out of reach here)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "my-hub-set"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "".join(json.dumps({"problem": f"p{i}", "solution": f"so \\boxed{{{i}}}"}) + "\n" for i in range(3))
    )
    rows = load_problems(DataConfig(source="hub", hub_name=str(folder), split="train"))
    assert [r["answer"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["dataset"] == "my-hub-set"


def test_unreachable_hub_name_says_what_to_do(tmp_path: Path) -> None:
    code = (
        "from raystep.config import DataConfig\n"
        "from raystep.datasets import load_problems, DatasetError\n"
        "try:\n"
        "    load_problems(DataConfig(source='hub', hub_name='someone/not-here', split='test'))\n"
        "except DatasetError as exc:\n"
        "    print('ERR', exc)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "ERR cannot load hub dataset 'someone/not-here'" in out.stdout, out.stderr[-2000:]
    assert "set data.path" in out.stdout


def test_synth_source_is_delegated() -> None:
    rows = load_problems(DataConfig(source="synth", split="train", limit=3))
    assert len(rows) == 3
    _valid(rows)


def test_a_generated_source_plugs_in_by_name(monkeypatch):
    """A world registers its problem generator by name; loading data never imports it otherwise."""
    from raystep import datasets

    monkeypatch.setattr(datasets, "GENERATED_SOURCES", dict(datasets.GENERATED_SOURCES))
    with pytest.raises(ValueError, match="must look like 'module:function'"):
        datasets.register_source("mine", "json.dumps")
    datasets.register_source("mine", "raystep.synth.world:load_problems")  # the built-in world, renamed
    mine = datasets.load_problems(DataConfig(source="mine", limit=3))
    synth = datasets.load_problems(DataConfig(source="synth", limit=3))
    assert [r["question"] for r in mine] == [r["question"] for r in synth] and len(mine) == 3


def test_a_generated_source_that_repeats_an_id_is_refused(monkeypatch):
    """Ids are the units of resume: a generator that makes one twice fails at that row, naming both."""
    import types

    from raystep import datasets

    world = types.ModuleType("repeating_world")
    world.problems = lambda data: ({"id": f"p{i % 3}", "question": "q", "answer": "1"} for i in range(5))
    monkeypatch.setitem(sys.modules, "repeating_world", world)
    monkeypatch.setattr(datasets, "GENERATED_SOURCES", dict(datasets.GENERATED_SOURCES))
    datasets.register_source("repeating", "repeating_world:problems")
    rows = datasets.iter_problems(DataConfig(source="repeating"))
    assert [next(rows)["id"] for _ in range(3)] == ["p0", "p1", "p2"]
    with pytest.raises(DatasetError, match="'repeating' made the id 'p0' twice"):
        next(rows)
