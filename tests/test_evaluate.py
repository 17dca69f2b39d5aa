"""``raystep eval`` against real HTTP endpoints: a FAKE scripted server (tests/fake_answers_server.py,
a real local HTTP server whose "model" is a lookup table) for exact numbers, and the CPU Serve app with
the tiny model end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_answers_server import FakeAnswersServer

from raystep.cli import main as cli_main
from raystep.datasets import load_benchmark
from raystep.errors import ROWS_FAILED
from raystep.evaluate.samples import read_log, repair_tail
from raystep.records import RowError

REPO = Path(__file__).resolve().parents[1]
SAMPLE_FIELDS = {
    "id", "sample", "benchmark", "dataset", "subject", "level", "question", "prompt", "gold", "response",
    "pred", "extract_method", "correct", "grade_status", "prompt_tokens", "completion_tokens",
    "finish_reason", "latency_s", "attempts", "error", "model",
}  # fmt: skip


def scripted(problems: list[dict]) -> tuple[dict[str, str], set[str], set[str]]:
    """Right for even indexes, a wrong number for i % 4 == 1, no answer at all for i % 4 == 3."""
    answers, right, unparsable = {}, set(), set()
    for i, p in enumerate(problems):
        if i % 2 == 0:
            answers[p["question"]] = f"We work it out.\nThe answer is $\\boxed{{{p['answer']}}}$."
            right.add(p["id"])
        elif i % 4 == 1:
            answers[p["question"]] = "A guess.\n\\boxed{987654321}"
        else:
            answers[p["question"]] = "I cannot decide."
            unparsable.add(p["id"])
    return answers, right, unparsable


def eval_args(url: str, out: Path, *extra: str) -> list[str]:
    return ["eval", "--base-url", url, "--model", "fake", "--out", str(out), "--no-progress", *extra]


def check_folder(folder: Path, n_items: int) -> tuple[dict, list[dict]]:
    """Every output file exists and is well-formed; return (summary, rows)."""
    rows = read_log(folder / "samples.jsonl")
    assert len(rows) == n_items
    assert len({(r["id"], r["sample"]) for r in rows}) == n_items
    for row in rows:
        assert set(row) == SAMPLE_FIELDS, set(row) ^ SAMPLE_FIELDS
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["samples"] == n_items
    report = (folder / "report.md").read_text()
    assert "95% Wilson CI" in report and "unparsable" in report
    assert summary["plots"] and all((folder / p).read_bytes()[:4] == b"\x89PNG" for p in summary["plots"])
    for plot in summary["plots"]:
        assert f"]({plot})" in report
    assert json.loads((folder / "settings.json").read_text())["model"] == summary["model"]
    return summary, rows


def test_known_answers_give_exactly_the_expected_accuracy(shared_data: Path, tmp_path: Path) -> None:
    gsm = load_benchmark("gsm8k", shared_data, limit=12)
    math = load_benchmark("math500", shared_data, limit=12)
    answers, right, unparsable = scripted(gsm)
    more = scripted(math)
    answers.update(more[0])
    right |= more[1]
    unparsable |= more[2]
    with FakeAnswersServer(answers) as server:
        rc = cli_main(eval_args(server.base_url, tmp_path, "--benchmarks", "gsm8k,math500", "--limit", "12"))
    assert rc == 0
    for name, problems in (("gsm8k", gsm), ("math500", math)):
        summary, rows = check_folder(tmp_path / name, len(problems))
        n_right = sum(1 for p in problems if p["id"] in right)
        assert summary["problems"] == len(problems)
        assert summary["accuracy"] == pytest.approx(n_right / len(problems))  # exactly the even items
        assert {r["id"] for r in rows if r["correct"]} == {p["id"] for p in problems if p["id"] in right}
        assert summary["counts"]["unparsable"] == sum(1 for p in problems if p["id"] in unparsable)
        assert summary["counts"]["request_errors"] == 0
        lo, hi = summary["ci95"]
        assert lo < summary["accuracy"] < hi
        assert all(r["latency_s"] is not None and r["attempts"] == 1 for r in rows)
    # MATH500 per level and subject, recounted from the problems themselves
    summary = json.loads((tmp_path / "math500" / "summary.json").read_text())
    for level in {p["level"] for p in math}:
        ids = [p["id"] for p in math if p["level"] == level]
        bucket = summary["by_level"][str(level)]
        assert bucket["n"] == len(ids)
        assert bucket["accuracy"] == pytest.approx(sum(i in right for i in ids) / len(ids))
    assert sum(b["n"] for b in summary["by_subject"].values()) == len(math)
    assert (tmp_path / "math500" / "accuracy_by_level.png").exists()
    overview = json.loads((tmp_path / "summary.json").read_text())
    assert set(overview["benchmarks"]) == {"gsm8k", "math500"}


def test_chat_api_and_k_samples_give_maj_and_pass_at_k(shared_data: Path, tmp_path: Path) -> None:
    problems = load_benchmark("gsm8k", shared_data, limit=4)
    wrong = "\\boxed{987654321}"
    answers = {}
    for i, p in enumerate(problems):
        good = f"\\boxed{{{p['answer']}}}"
        # seeds 0, 1, 2: problem 0 majority right; 1 one right (pass only); 2 none; 3 all right
        answers[p["question"]] = [[good, good, wrong], [wrong, good, wrong], [wrong] * 3, [good] * 3][i]
    with FakeAnswersServer(answers) as server:
        args = eval_args(server.base_url, tmp_path, "--benchmarks", "gsm8k", "--limit", "4", "--api", "chat")
        assert cli_main([*args, "--k", "3", "--temperature", "0.7"]) == 0
        assert all(r["path"].endswith("/chat/completions") for r in server.requests)
        assert sorted(r["body"]["seed"] for r in server.requests) == [0] * 4 + [1] * 4 + [2] * 4
    summary, rows = check_folder(tmp_path / "gsm8k", 12)
    assert summary["maj_at_k"]["accuracy"] == pytest.approx(2 / 4)
    assert summary["pass_at_k"]["accuracy"] == pytest.approx(3 / 4)
    assert summary["accuracy"] == pytest.approx((2 + 1 + 0 + 3) / 12)  # pass@1 = mean over samples
    assert "maj@3" in (tmp_path / "gsm8k" / "report.md").read_text()


def test_failed_requests_are_retried_then_kept_with_their_error_and_redone_on_rerun(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = load_benchmark("gsm8k", shared_data, limit=4)
    answers = {p["question"]: f"\\boxed{{{p['answer']}}}" for p in problems}
    flaky, broken = problems[1]["question"], problems[2]["question"]
    args = eval_args("", tmp_path, "--benchmarks", "gsm8k", "--limit", "4", "--set", "eval.max_retries=2")
    with FakeAnswersServer(answers, fail_times={flaky: 2, broken: 10}) as server:
        args[2] = server.base_url
        assert (
            cli_main(args) == ROWS_FAILED
        )  # an item still failing makes the command fail, after writing everything
        assert server.count(flaky) == 3 and server.count(broken) == 3
    summary, rows = check_folder(tmp_path / "gsm8k", 4)
    by_id = {r["id"]: r for r in rows}
    assert by_id[problems[1]["id"]]["attempts"] == 3 and by_id[problems[1]["id"]]["correct"]
    failed = by_id[problems[2]["id"]]
    assert failed["response"] is None and "503" in failed["error"] and not failed["correct"]
    assert summary["counts"]["request_errors"] == 1 and summary["accuracy"] == pytest.approx(3 / 4)

    with FakeAnswersServer(answers) as healthy:  # the endpoint recovered: only the failed item is asked again
        args[2] = healthy.base_url
        assert cli_main(args) == 0
        assert [r["question"] for r in healthy.requests] == [broken]
    summary, rows = check_folder(tmp_path / "gsm8k", 4)
    assert summary["accuracy"] == 1.0 and summary["counts"]["request_errors"] == 0

    capsys.readouterr()
    assert cli_main([*args, "--template", "alpaca"]) == 2  # answers from another template are not mixed in
    assert "other settings (template: 'qwen2-boxed' -> 'alpaca')" in capsys.readouterr().err


def test_interrupted_then_rerun_ends_with_each_item_exactly_once(shared_data: Path, tmp_path: Path) -> None:
    n = 24
    problems = load_benchmark("gsm8k", shared_data, limit=n)
    answers = {p["question"]: f"\\boxed{{{p['answer']}}}" for p in problems}
    log = tmp_path / "gsm8k" / "samples.jsonl"
    with FakeAnswersServer(answers, delay_s=0.15) as server:
        args = eval_args(
            server.base_url, tmp_path, "--benchmarks", "gsm8k", "--limit", str(n), "--concurrency", "2"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "raystep.cli", *args], env=env, cwd=REPO)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 6):
                assert proc.poll() is None, "the evaluation ended before it could be interrupted"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        before = read_log(log)
        assert 6 <= len(before) < n
        with log.open("a") as fh:  # as if killed in the middle of writing a line
            fh.write('{"id": "gsm8k-trunc')
        asked_before = len(server.requests)

        assert cli_main(args) == 0
        asked_again = [r["question"] for r in server.requests[asked_before:]]
    answered_before = {r["question"] for r in before}
    assert not answered_before & set(asked_again), "a rerun must skip answers already written"
    assert len(asked_again) == n - len(before)
    _, rows = check_folder(tmp_path / "gsm8k", n)
    assert [r["id"] for r in rows] == [p["id"] for p in problems]  # benchmark order, each once
    kept = {r["id"]: r for r in rows}
    assert all(kept[r["id"]] == r for r in before)  # what was written survives unchanged
    assert all(r["correct"] for r in rows)


def test_a_malformed_line_inside_the_log_names_file_and_line(tmp_path: Path) -> None:
    log = tmp_path / "samples.jsonl"
    log.write_text('{"id": "a", "sample": 0}\nnot json\n{"id": "b", "sample": 0}\n')
    with pytest.raises(RowError, match=r"samples.jsonl:2"):
        read_log(log)
    log.write_text('{"id": "a", "sample": 0}\n{"id": "b", "sam')  # a torn tail is tolerated
    assert [r["id"] for r in read_log(log)] == ["a"]
    repair_tail(log)  # and cut off before appending, so the next row starts on its own line
    assert log.read_text() == '{"id": "a", "sample": 0}\n'
    log.write_text('{"id": "a", "sample": 0}')  # complete, only the newline is missing: kept
    repair_tail(log)
    assert log.read_text() == '{"id": "a", "sample": 0}\n'


@pytest.mark.slow
def test_ray_data_path_gives_the_same_outputs(
    shared_data: Path, tmp_path: Path, ray_local, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = load_benchmark("gsm8k", shared_data, limit=8)
    answers, right, _ = scripted(problems)
    with FakeAnswersServer(answers) as server:
        flags = ("--benchmarks", "gsm8k", "--limit", "8")
        assert cli_main(eval_args(server.base_url, tmp_path / "async", *flags)) == 0
        assert cli_main(eval_args(server.base_url, tmp_path / "rd", *flags, "--ray-data")) == 0
        assert len(server.requests) == 16
    a, rows_a = check_folder(tmp_path / "async" / "gsm8k", 8)
    b, rows_b = check_folder(tmp_path / "rd" / "gsm8k", 8)
    assert b["engine"] == "ray-data-http" and a["engine"] == "openai-async"
    assert b["accuracy"] == a["accuracy"] == pytest.approx(len(right) / 8)
    strip = ("latency_s", "attempts")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows_b] == [
        {k: v for k, v in r.items() if k not in strip} for r in rows_a
    ]

    # a request that exhausts Ray's retries stops the job with a clear error; a rerun resumes
    broken = problems[3]["question"]
    out = tmp_path / "rd-fail"
    flags = ("--benchmarks", "gsm8k", "--limit", "8", "--ray-data", "--set", "eval.max_retries=0")
    with FakeAnswersServer(answers, fail_times={broken: 100}) as failing:
        assert cli_main(eval_args(failing.base_url, out, *flags)) == 2
    err = capsys.readouterr().err
    assert "Ray Data evaluation stopped" in err
    kept = read_log(out / "gsm8k" / "samples.jsonl") if (out / "gsm8k" / "samples.jsonl").exists() else []
    # what was flushed before the stop (possibly nothing) is what the error reports, each item once,
    # and never the broken one
    assert f"stopped after {len(kept)} of 8 answers" in err
    assert len({r["id"] for r in kept}) == len(kept) < 8
    assert {r["question"] for r in kept} <= {p["question"] for p in problems} - {broken}
    with FakeAnswersServer(answers) as healthy:
        assert cli_main(eval_args(healthy.base_url, out, *flags)) == 0
        assert len(healthy.requests) == 8 - len(kept)
    check_folder(out / "gsm8k", 8)
