"""Grading: answer extraction, agreement on MATH500 / GSM8K, wrong answers, adversarial inputs, Ray actors.

Everything here runs the real math-verify in real worker processes; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from raystep.grading import (
    Grader,
    GradingError,
    extract_answer,
    fast_verdict,
    gold_answer,
    grade_responses,
    last_boxed,
)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def math500(shared_data: Path) -> list[dict]:
    rows = _read(shared_data / "math" / "math500_test.jsonl")
    assert len(rows) == 500
    return rows


@pytest.fixture(scope="module")
def gsm8k_test(shared_data: Path) -> list[dict]:
    rows = _read(shared_data / "gsm8k" / "test.jsonl")
    assert len(rows) == 1319
    return rows


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout_s=30.0) as g:  # generous: a loaded CI machine must not time out
        yield g


# ---------------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, answer, method",
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}", "boxed"),
        (
            "\\boxed{1} then \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}",
            "\\left( 3, \\frac{\\pi}{2} \\right)",
            "boxed",
        ),
        ("nested \\boxed{\\sqrt{\\frac{a}{b}}} end", "\\sqrt{\\frac{a}{b}}", "boxed"),
        ("\\fbox{42}", "42", "boxed"),
        ("escaped \\boxed{\\{1,2\\}}", "\\{1,2\\}", "boxed"),
        ("\\boxed{7} and a truncated \\boxed{\\frac{1}{", "7", "boxed"),
        ("\\boxed 5$", "5", "boxed"),
        ("Step 2: 3+4=7. The answer is 7.", "7", "answer_is"),
        ("The answer is: $\\frac{3}{4}$.\n", "\\frac{3}{4}", "answer_is"),
        ("the final answer is 3.5. Done", "3.5", "answer_is"),
        ("Final Answer: 42", "42", "answer_is"),
        ("Final Answer: The final answer is $-7$. I hope it is correct.", "-7", "answer_is"),
        ("She makes 9 * 2 = $<<9*2=18>>18.\n#### 1,018", "1018", "gsm8k"),
        ("first 12, then 1,250 apples", "1250", "last_number"),
        ("value <<3*4=12>>12 then -3.5", "-3.5", "last_number"),
        ("no digits at all", None, "none"),
        ("", None, "none"),
    ],
)
def test_extract_answer(text: str, answer: str | None, method: str) -> None:
    assert extract_answer(text) == (answer, method)


def test_unbalanced_boxed_only_is_not_an_answer() -> None:
    assert last_boxed("\\boxed{\\frac{1}{2}") is None
    assert extract_answer("x \\boxed{\\frac{1}{2") == ("2", "last_number")


@pytest.mark.timeout(120)  # linear time is seconds here; a quadratic scan of 2 MB would take hours
def test_extraction_finishes_on_enormous_text_and_still_finds_the_answer() -> None:
    unclosed = "\\boxed{" * 50_000 + "1" + "x" * 2_000_000  # 50,000 boxes that never close
    assert extract_answer(unclosed) == ("1", "last_number")
    buried = "x" * 2_000_000 + " \\boxed{42} " + "y" * 100
    assert extract_answer(buried) == ("42", "boxed")


@pytest.mark.parametrize(
    "dataset, raw, gold",
    [
        ("gsm8k", "Janet sells 16 eggs.\n#### 2,125", "2125"),
        ("gsm8k", " -3 ", "-3"),
        ("gsm8k-stepdpo", "1,000", "1000"),
        ("math500", " \\frac{1}{2} ", "\\frac{1}{2}"),
        ("math", "So the answer is $\\boxed{\\dfrac{3}{5}}$.", "\\dfrac{3}{5}"),
    ],
)
def test_gold_answer(dataset: str, raw: str, gold: str) -> None:
    assert gold_answer(dataset, raw) == gold


def test_fast_verdict_settles_only_what_is_exact() -> None:
    assert fast_verdict("1,234", "1234") is True
    assert fast_verdict("0.5", "\\frac12") is True
    assert fast_verdict("\\dfrac{1}{2}", "0.5") is True
    assert fast_verdict("18 dollars", "18") is True
    assert fast_verdict("17", "18") is False
    assert fast_verdict("0.333333", "\\frac{1}{3}") is None  # math-verify's rounding decides
    assert fast_verdict("x = 10,\\!080", "10,\\!080") is True  # math-verify reads this one as a tuple
    assert fast_verdict("x=4", "3") is False
    assert fast_verdict("x=3", "x=3") is True
    assert fast_verdict("x+1", "3") is None
    assert fast_verdict("9^{9^{9^9}}", "3") is None  # never evaluated in the caller


# ---------------------------------------------------------------------------------------------------
# agreement on the shipped data
# ---------------------------------------------------------------------------------------------------


def test_math500_solutions_agree_with_answers(grader: Grader, math500: list[dict]) -> None:
    golds = [gold_answer("math500", r["answer"]) for r in math500]
    verdicts = grader.grade([r["solution"] for r in math500], golds)
    wrong = [(r["unique_id"], v) for r, v in zip(math500, verdicts, strict=True) if not v.correct]
    assert wrong == []
    assert all(v.status == "ok" and v.method == "boxed" for v in verdicts)


@pytest.mark.slow
def test_math500_agreement_through_math_verify_alone(math500: list[dict]) -> None:
    """The same 500 with the exact fast path off: every verdict comes from math-verify in a worker."""
    with Grader(workers=2, timeout_s=10.0, fast_path=False) as g:
        verdicts = g.grade([r["solution"] for r in math500], [r["answer"] for r in math500])
        assert g.stats["math_verify"] == 500 and g.stats["fast_path"] == 0
    assert [r["unique_id"] for r, v in zip(math500, verdicts, strict=True) if not v.correct] == []


def test_gsm8k_worked_answers_agree_with_their_gold(grader: Grader, gsm8k_test: list[dict]) -> None:
    golds = [gold_answer("gsm8k", r["answer"]) for r in gsm8k_test]
    assert all(re.fullmatch(r"-?\d+", g) for g in golds)
    assert sum("," in r["answer"].rsplit("####", 1)[1] for r in gsm8k_test) == 14  # commas are handled
    verdicts = grader.grade([r["answer"] for r in gsm8k_test], golds)
    assert [i for i, v in enumerate(verdicts) if not v.correct] == []
    assert {v.method for v in verdicts} == {"gsm8k"}


def test_gsm8k_agreement_through_math_verify_alone(gsm8k_test: list[dict]) -> None:
    golds = [gold_answer("gsm8k", r["answer"]) for r in gsm8k_test]
    verdicts = grade_responses([r["answer"] for r in gsm8k_test], golds, workers=2, timeout_s=10.0)
    assert all(v.correct for v in verdicts)
    with Grader(workers=2, timeout_s=10.0, fast_path=False) as g:
        verdicts = g.grade([r["answer"] for r in gsm8k_test[:300]], golds[:300])
        assert g.stats["math_verify"] == 300
    assert all(v.correct for v in verdicts)


def test_gsm8k_wrong_numbers_are_wrong(grader: Grader, gsm8k_test: list[dict]) -> None:
    golds = [gold_answer("gsm8k", r["answer"]) for r in gsm8k_test]
    shifted = golds[1:] + golds[:1]
    verdicts = grader.grade([r["answer"] for r in gsm8k_test], shifted)
    for gold, other, v in zip(golds, shifted, verdicts, strict=True):
        assert v.correct == (int(gold) == int(other))
    off_by_one = grader.grade([f"The answer is {int(g) + 1}." for g in golds], golds)
    assert not any(v.correct for v in off_by_one)


@pytest.mark.slow
def test_math500_wrong_answers_are_wrong(math500: list[dict]) -> None:
    grader = Grader(workers=2, timeout_s=60.0, inner_timeout_s=20)  # a loaded CI machine must not time out
    answers = [r["answer"] for r in math500]
    plus_one = grader.grade([f"The final answer is $\\boxed{{{a} + 1}}$." for a in answers], answers)
    assert [a for a, v in zip(answers, plus_one, strict=True) if v.correct] == []
    assert all(v.status == "ok" for v in plus_one)
    # each solution against the next problem's answer: right only where the two answers coincide
    shifted = answers[1:] + answers[:1]
    verdicts = grader.grade([r["solution"] for r in math500], shifted)
    for own, other, v in zip(answers, shifted, verdicts, strict=True):
        if v.correct:
            assert re.sub(r"^[a-z]\s*=\s*", "", other) == own
    assert sum(v.correct for v in verdicts) <= 5
    grader.close()


EQUIVALENT = [
    ("The answer is $\\boxed{0.5}$", "\\frac12"),
    ("\\boxed{x=3}", "3"),
    ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{C}", "\\text{(C)}"),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("\\boxed{\\frac{\\sqrt3}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{x^2+2x+1}", "(x+1)^2"),
    ("\\boxed{[1,2)}", "[1,2)"),
    ("The answer is 18 dollars.", "18"),
]
NOT_EQUIVALENT = [
    ("\\boxed{0.51}", "\\frac12"),
    ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{x^2+2x}", "(x+1)^2"),
    ("\\boxed{(1,2)}", "[1,2)"),
    ("\\boxed{\\sqrt{7}}", "\\sqrt{8}"),
]


def test_equivalent_forms(grader: Grader) -> None:
    verdicts = grader.grade([r for r, _ in EQUIVALENT], [g for _, g in EQUIVALENT])
    assert [v.correct for v in verdicts] == [True] * len(EQUIVALENT), verdicts
    verdicts = grader.grade([r for r, _ in NOT_EQUIVALENT], [g for _, g in NOT_EQUIVALENT])
    assert [v.correct for v in verdicts] == [False] * len(NOT_EQUIVALENT), verdicts
    assert all(v.status == "ok" for v in verdicts)


def test_verdict_keeps_answer_and_method(grader: Grader) -> None:
    v = grader.grade(["so it is 12, and the answer is unknown to me. Then 5"], ["5"])[0]
    assert (v.correct, v.pred, v.method) == (False, "unknown to me", "answer_is")
    none = grader.grade(["I cannot solve this."], ["5"])[0]
    assert (none.correct, none.pred, none.method, none.status) == (False, None, "none", "unparsable")
    fallback = grader.grade(["first 3 then 5"], ["5"])[0]
    assert (fallback.correct, fallback.pred, fallback.method) == (True, "5", "last_number")
    assert grader.stats["method_last_number"] >= 1 and grader.stats["method_none"] >= 1
    assert json.loads(json.dumps(fallback.to_dict()))["method"] == "last_number"


# ---------------------------------------------------------------------------------------------------
# adversarial inputs: counted, wrong, never hanging
# ---------------------------------------------------------------------------------------------------

ADVERSARIAL = [
    ("\\boxed{9^{9^{9^9}}}", "3"),
    ("\\boxed{2^{2^{40}}}", "1"),
    ("\\boxed{100000000!}", "1"),
    ("\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}", "1"),
    ("\\boxed{" + "1+" * 20000 + "1}", "3"),
    ("\\boxed{" + "x" * 2_000_000 + "}", "3"),
]


@pytest.mark.slow
def test_adversarial_answers_finish_within_their_limit() -> None:
    timeout_s = 3.0
    with Grader(workers=2, timeout_s=timeout_s) as g:
        start = time.monotonic()
        verdicts = g.grade([r for r, _ in ADVERSARIAL], [a for _, a in ADVERSARIAL])
        wall = time.monotonic() - start
        assert not any(v.correct for v in verdicts)
        assert all(v.status in ("timeout", "unparsable") for v in verdicts), verdicts
        assert g.stats["timeout"] >= 3
        assert g.stats["timeout"] + g.stats["unparsable"] == len(ADVERSARIAL)
        # three items per worker at most, each stopped by its deadline, plus worker restarts
        assert wall < 3 * timeout_s + 30
        assert g.grade(["\\boxed{2\\sqrt{2}}"], ["\\sqrt{8}"])[0].correct  # still works


def test_outer_deadline_kills_and_replaces_a_stuck_worker() -> None:
    """math-verify's own alarm set far beyond the parent's deadline: only the parent can stop the item."""
    with Grader(workers=1, timeout_s=1.0, inner_timeout_s=60) as g:
        g.grade(["\\boxed{2x}"], ["x+x"])  # through a worker (not the exact path)
        old_pid = g._pool[0].proc.pid
        start = time.monotonic()
        v = g.grade(["\\boxed{9^{9^{9}}}"], ["3"])[0]
        assert time.monotonic() - start < 10
        assert (v.correct, v.status, v.pred) == (False, "timeout", "9^{9^{9}}")
        assert "no verdict within 1.0s" in v.detail
        assert g.stats["restarts"] == 1 and g.stats["timeout"] == 1
        assert not _alive(old_pid)
        assert g.grade(["\\boxed{2y}"], ["y+y"])[0].correct  # the replacement worker grades
        pids = [w.proc.pid for w in g._pool]
    assert not any(_alive(p) for p in pids)  # close() leaves nothing behind


def test_a_killed_worker_is_replaced(grader: Grader) -> None:
    grader.grade(["\\boxed{2x}"], ["x+x"])
    restarts = grader.stats["restarts"]
    victim = grader._pool[0].proc
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    verdicts = grader.grade(["\\boxed{2x}", "\\boxed{\\sqrt{8}}", "\\boxed{3y}"], ["x+x", "2\\sqrt{2}", "2y"])
    assert [v.correct for v in verdicts] == [True, True, False]
    assert grader.stats["restarts"] == restarts + 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_bad_calls_are_clear() -> None:
    with pytest.raises(ValueError, match="2 responses but 1 golds"):
        grade_responses(["1", "2"], ["1"])
    g = Grader(workers=1)
    g.close()
    with pytest.raises(GradingError, match="closed"):
        g.grade(["\\boxed{1}"], ["1"])


# ---------------------------------------------------------------------------------------------------
# outside a main thread: thread pools and Ray actors
# ---------------------------------------------------------------------------------------------------


def test_grader_works_from_threads() -> None:
    with Grader(workers=2, timeout_s=5.0) as g:
        with ThreadPoolExecutor(2) as pool:
            results = list(
                pool.map(lambda x: g.grade([f"\\boxed{{{x}+y}}"], [f"y+{x}"])[0].correct, range(6))
            )
    assert results == [True] * 6


@pytest.mark.slow
def test_grader_inside_a_ray_actor(ray_local) -> None:
    ray = ray_local

    @ray.remote(num_cpus=0, max_concurrency=2)
    class GradingActor:
        def __init__(self) -> None:
            self.grader = Grader(workers=2, timeout_s=3.0)

        def in_main_thread(self) -> bool:
            return threading.current_thread() is threading.main_thread()

        def math_verify_directly(self) -> str:
            from math_verify import parse

            try:
                parse("$x=1$", raise_on_error=True)
            except ValueError as exc:
                return str(exc)
            return "no error"

        def grade(self, responses: list[str], golds: list[str]) -> list[dict]:
            return [v.to_dict() for v in self.grader.grade(responses, golds)]

        def close(self) -> None:
            self.grader.close()

    actor = GradingActor.remote()
    try:
        assert ray.get(actor.in_main_thread.remote()) is False
        assert "threaded environment" in ray.get(actor.math_verify_directly.remote())
        out = ray.get(
            actor.grade.remote(
                ["\\boxed{x=3}", "\\boxed{2\\sqrt{2}}", "\\boxed{9^{9^{9^9}}}", "nothing"],
                ["3", "\\sqrt{8}", "3", "1"],
            )
        )
        assert [o["correct"] for o in out] == [True, True, False, False]
        assert [o["status"] for o in out] == ["ok", "ok", "timeout", "unparsable"]
        ray.get(actor.close.remote())
    finally:
        ray.kill(actor)


def test_workers_of_a_finished_thread_are_replaced() -> None:
    """Workers outlive the caller's thread (on Linux a worker dies with the thread that started it)."""
    with Grader(workers=1, timeout_s=30.0) as g:
        t = threading.Thread(target=lambda: g.grade(["\\boxed{2x}"], ["x+x"]))
        t.start()
        t.join()
        assert g.grade(["\\boxed{3y}"], ["y+y+y"])[0].correct
        assert g.grade(["\\boxed{4y}"], ["y+y+y"])[0].correct is False
        assert g.stats["restarts"] == 0  # workers are started from the grader's own thread


def test_a_stuck_worker_dies_with_its_parent(tmp_path: Path) -> None:
    """Kill -9 the grading process while its worker is stuck in a C call: the worker must not linger."""
    script = (
        "from raystep.grading import Grader\n"
        "g = Grader(workers=1, timeout_s=600, inner_timeout_s=600)\n"
        "g.grade(['\\\\boxed{2x}'], ['x+x'])\n"
        "print(g._pool[0].proc.pid, flush=True)\n"
        "g.grade(['\\\\boxed{9^{9^{9}}}'], ['3'])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        worker = int(parent.stdout.readline())  # type: ignore[union-attr]
        time.sleep(1.0)  # the worker is now inside the huge power
        assert _alive(worker)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


def test_an_item_whose_worker_dies_is_retried_once() -> None:
    with Grader(workers=1, timeout_s=4.0, inner_timeout_s=60) as g:
        g.grade(["\\boxed{2x}"], ["x+x"])  # the worker is up
        first = g._pool[0].proc
        killer = threading.Timer(1.0, lambda: os.kill(first.pid, signal.SIGKILL))
        killer.start()
        verdicts = g.grade(["\\boxed{9^{9^{9}}}", "\\boxed{2\\sqrt{2}}"], ["3", "\\sqrt{8}"])
        killer.join()
        # the stuck item was retried on a fresh worker (not graded 'error'), then hit the deadline there
        assert (verdicts[0].status, verdicts[0].detail) == ("timeout", "no verdict within 4.0s")
        assert verdicts[1].correct
        assert g.stats["restarts"] == 2 and g.stats["error"] == 0
