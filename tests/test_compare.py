"""Paired comparison of two evaluations, and the statistics under it, against numbers worked out by hand."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from raystep.cli import main as cli_main
from raystep.evaluate.compare import CompareError, compare
from raystep.evaluate.report import summarize, write_report
from raystep.evaluate.stats import majority_vote, mcnemar_exact, pass_at_k, wilson_interval
from raystep.records import write_jsonl

# --- statistics -------------------------------------------------------------------------------


def test_wilson_interval_matches_closed_forms() -> None:
    z2 = 1.959963984540054**2
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(z2 / (10 + z2), abs=1e-12)  # the zero-successes closed form
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(10 / (10 + z2), abs=1e-12)
    lo, hi = wilson_interval(5, 10)
    assert (lo + hi) / 2 == pytest.approx(0.5) and lo == pytest.approx(0.2365931, abs=1e-6)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mcnemar_exact_is_the_two_sided_binomial_tail() -> None:
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    # brute force over every outcome at least as extreme, for a range of tables
    for b in range(0, 12):
        for c in range(0, 12):
            n = b + c
            if n == 0:
                continue
            observed = abs(b - c)
            p = sum(math.comb(n, i) for i in range(n + 1) if abs(2 * i - n) >= observed) / 2**n
            assert mcnemar_exact(b, c) == pytest.approx(min(1.0, p), abs=1e-12), (b, c)


def test_pass_at_k_and_majority_vote() -> None:
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    assert majority_vote(["3", "4", "3", None], [True, False, True, False]) is True
    assert majority_vote(["4", "4", "3", None], [False, False, True, False]) is False
    assert majority_vote([None, None], [False, False]) is False
    # a tie goes to the answer seen first
    assert majority_vote(["4", "3", "3", "4"], [False, True, True, False]) is False


# --- compare --------------------------------------------------------------------------------


def _rows(right: set[int], n: int, levels: bool = True, gold_shift: int = 0) -> list[dict]:
    rows = []
    for i in range(n):
        gold = str(i + gold_shift)
        rows.append(
            {
                "id": f"p{i}",
                "sample": 0,
                "benchmark": "math500",
                "gold": gold,
                "pred": gold if i in right else "wrong",
                "correct": i in right,
                "grade_status": "ok",
                "subject": "Algebra" if i % 2 else "Geometry",
                "level": (i % 3) + 1 if levels else None,
                "error": None,
            }
        )
    return rows


def _eval_folder(root: Path, name: str, rows: list[dict], benchmark: str = "math500") -> Path:
    folder = root / name / benchmark
    write_jsonl(folder / "samples.jsonl", rows)
    write_report(folder, summarize(rows, {"benchmark": benchmark, "model": name, "k": 1}))
    return folder


def test_compare_gives_the_exact_mcnemar_p_value_and_level_deltas(tmp_path: Path) -> None:
    # 30 items: both right on 0..14, only A on 15..19 (5), only B on 20..27 (8), neither on 28, 29.
    a_right = set(range(0, 20))
    b_right = set(range(0, 15)) | set(range(20, 28))
    a = _eval_folder(tmp_path, "base", _rows(a_right, 30))
    b = _eval_folder(tmp_path, "stepdpo", _rows(b_right, 30))
    out = tmp_path / "cmp"
    result = compare(a, b, out)

    o = result["overall"]
    assert (o["both_correct"], o["only_a"], o["only_b"], o["neither"]) == (15, 5, 8, 2)
    # two-sided exact binomial: 2 * sum_{i<=5} C(13, i) / 2^13 = 2 * 2380 / 8192
    assert o["mcnemar_p"] == pytest.approx(4760 / 8192, abs=1e-12)
    assert o["accuracy_a"] == pytest.approx(20 / 30) and o["accuracy_b"] == pytest.approx(23 / 30)
    assert o["delta"] == pytest.approx(3 / 30)

    # per level, counted by hand: level = i % 3 + 1
    for level in (1, 2, 3):
        ids = [i for i in range(30) if i % 3 + 1 == level]
        only_a = sum(1 for i in ids if i in a_right and i not in b_right)
        only_b = sum(1 for i in ids if i in b_right and i not in a_right)
        s = result["by_level"][str(level)]
        assert (s["n"], s["only_a"], s["only_b"]) == (len(ids), only_a, only_b)
        assert s["delta"] == pytest.approx((only_b - only_a) / len(ids))
        assert s["mcnemar_p"] == pytest.approx(mcnemar_exact(only_a, only_b))
    assert set(result["by_subject"]) == {"Algebra", "Geometry"}

    with (out / "paired.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 30
    assert sum(1 for r in table if r["a_correct"] == "True" and r["b_correct"] == "False") == 5
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "compare.md").read_text()
    assert "McNemar p = 0.5811" in md and "| **A right** | 15 | 5 |" in md
    assert json.loads((out / "compare.json").read_text())["overall"]["only_b"] == 8


def test_compare_cli_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _eval_folder(tmp_path, "base", _rows({0, 1}, 6, levels=False))
    b = _eval_folder(tmp_path, "new", _rows({0, 2, 3, 4, 5}, 6, levels=False))
    assert cli_main(["compare", str(a), str(b), "--out", str(tmp_path / "c")]) == 0
    assert "McNemar exact p = 0.375" in capsys.readouterr().out  # b=1, c=4: 2 * (1 + 5) / 32
    assert (tmp_path / "c" / "compare.md").exists()

    other = _eval_folder(tmp_path, "x", _rows({0}, 6), benchmark="gsm8k")
    with pytest.raises(CompareError, match="benchmark"):
        compare(a, other)
    shifted = _eval_folder(tmp_path, "y", _rows({0}, 6, gold_shift=1))
    with pytest.raises(CompareError, match="different golds"):
        compare(a, shifted)
    with pytest.raises(CompareError, match="no samples.jsonl"):
        compare(a, tmp_path / "missing")
