"""Grading throughput over MATH500 in several answer forms, and adversarial answers against their limit.

    python benchmarks/bench_grading.py [--workers 2] [--timeout 5] [--limit 500]

Part 1 grades every MATH500 answer written in several forms (boxed, "The answer is", equivalent
alternative forms such as ``0.5`` for ``\\frac12``) with ``--workers`` math-verify processes, once with the
exact fast path and once through math-verify alone, and prints answers/s and agreement. Part 2 grades
adversarial answers (huge powers, deep nesting, enormous strings): it prints how many hit their time
limit and each one's time against the limit, with math-verify's own alarms on (the default) and with
only the parent's outer deadline (alarms set beyond it), so both safety nets are shown to hold.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raystep.datasets import default_data_dir, load_benchmark  # noqa: E402
from raystep.grading import Grader, Verdict  # noqa: E402

_INT = re.compile(r"^-?\d+$")
_THOUSANDS = re.compile(r"^(\\\$)?\d{1,3}(?:,(?:\\!)?\s*\d{3})+$")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
_SQRT = re.compile(r"\\sqrt\{(\d+)\}")


def alternative_form(answer: str) -> str:
    """An equivalent answer written differently, the way models vary their output."""
    a = answer.strip()
    if _INT.match(a):
        return f"{a}.0"
    if _THOUSANDS.match(a):
        return re.sub(r"[^\d]", "", a)  # 10,\!080 -> 10080
    m = _FRAC.match(a)
    if m:
        sign, num, den = m.groups()
        value = int(num) / int(den)
        if len(f"{value:.10g}") <= 8:  # a terminating decimal: 0.5, 0.375
            return f"{sign}{value:.10g}"
        return f"{sign}{num}/{den}"
    alt = _SQRT.sub(r"(\1)^{1/2}", a)
    alt = alt.replace("\\dfrac", "\\frac").replace("\\frac", "\\dfrac")
    alt = alt.replace("\\left", "").replace("\\right", "")
    return alt if alt != a else f"{a} "


def assigned_form(answer: str) -> str:
    """``x = answer``: models often box an assignment; left as is where it would change the meaning."""
    if any(t in answer for t in ("\\text", "=", "\\in")):
        return answer
    return f"x = {answer}"


FORMS = {
    "boxed": lambda a: f"Step 1: ...\nStep 2: So the final answer is $\\boxed{{{a}}}$.",
    "answer_is": lambda a: f"Step 1: ...\nThe answer is: ${a}$.",
    "alternative": lambda a: f"Therefore the result is $\\boxed{{{alternative_form(a)}}}$.",
    "assigned": lambda a: f"Step 3: Hence $\\boxed{{{assigned_form(a)}}}$.",
}

ADVERSARIAL: list[tuple[str, str, str]] = [
    ("power tower 9^9^9^9", "\\boxed{9^{9^{9^9}}}", "3"),
    ("power 9^9^9", "\\boxed{9^{9^{9}}}", "3"),
    ("power 2^(2^40)", "\\boxed{2^{2^{40}}}", "1"),
    ("10^10^10^10 - 1", "\\boxed{10^{10^{10^{10}}} - 1}", "5"),
    ("factorial 10^8!", "\\boxed{100000000!}", "1"),
    ("nested parens x3000", "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}", "1"),
    ("nested fracs x200", "\\boxed{" + "\\frac{1}{" * 200 + "2" + "}" * 200 + "}", "1"),
    ("sum of 20k ones", "\\boxed{" + "1+" * 20000 + "1}", "3"),
    ("50k-char symbol soup", "\\boxed{" + "xy" * 25000 + "}", "3"),
    ("2M-char string", "\\boxed{" + "x" * 2_000_000 + "}", "3"),
    ("10MB unboxed digits", "7" * 10_000_000, "7"),
]


def _warm(grader: Grader) -> None:
    """Start the worker processes outside the timing: a pair the fast path cannot settle reaches them."""
    grader.grade(["\\boxed{2x}"] * grader.workers, ["x+x"] * grader.workers)


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.1f} answers/s" if seconds > 0 else "        inf answers/s"


def bench_forms(problems: list[dict], workers: int, timeout_s: float) -> None:
    golds = [p["answer"] for p in problems]
    print(
        f"== MATH500: {len(problems)} answers per form, {workers} worker processes, limit {timeout_s}s per answer"
    )
    print(f"{'form':<12} {'path':<18} {'rate':>20} {'correct':>9} {'timeouts':>9} {'math-verify':>12}")
    for fast in (True, False):
        with Grader(workers=workers, timeout_s=timeout_s, fast_path=fast) as grader:
            _warm(grader)
            for name, render in FORMS.items():
                responses = [render(a) for a in golds]
                before = dict(grader.stats)
                start = time.perf_counter()
                verdicts = grader.grade(responses, golds)
                seconds = time.perf_counter() - start
                correct = sum(v.correct for v in verdicts)
                timeouts = sum(v.status == "timeout" for v in verdicts)
                via_mv = grader.stats["math_verify"] - before["math_verify"]
                path = "exact + math-verify" if fast else "math-verify only"
                print(
                    f"{name:<12} {path:<18} {_rate(len(verdicts), seconds):>20} "
                    f"{correct:>5}/{len(verdicts):<3} {timeouts:>9} {via_mv:>12}"
                )
                if correct != len(verdicts):
                    bad = [(g, v) for g, v in zip(golds, verdicts, strict=True) if not v.correct][:3]
                    print(f"   disagreements (first 3): {bad}")
    print()


def _adversarial_run(label: str, grader: Grader, timeout_s: float) -> None:
    print(f"-- {label}")
    responses = [r for _, r, _ in ADVERSARIAL]
    golds = [g for _, _, g in ADVERSARIAL]
    start = time.perf_counter()
    verdicts: list[Verdict] = grader.grade(responses, golds)
    wall = time.perf_counter() - start
    for (name, _, _), v in zip(ADVERSARIAL, verdicts, strict=True):
        within = "yes" if v.seconds <= timeout_s + 0.25 else "NO"
        print(
            f"   {name:<22} {v.status:<10} correct={str(v.correct):<5} "
            f"{v.seconds:6.2f}s of {timeout_s:.1f}s  within={within}  {v.detail[:48]}"
        )
    hit = sum(v.status == "timeout" for v in verdicts)
    worst = max(v.seconds for v in verdicts)
    print(
        f"   {hit}/{len(verdicts)} hit their time limit; none graded correct: {not any(v.correct for v in verdicts)}; "
        f"slowest item {worst:.2f}s vs limit {timeout_s:.1f}s; whole batch {wall:.2f}s wall; "
        f"workers replaced {grader.stats['restarts']}"
    )


def bench_adversarial(workers: int, timeout_s: float) -> None:
    print(
        f"== adversarial answers: {len(ADVERSARIAL)} items, {workers} worker processes, limit {timeout_s}s per item"
    )
    with Grader(workers=workers, timeout_s=timeout_s) as grader:
        _warm(grader)
        _adversarial_run(
            f"math-verify's own alarms at {grader.inner_timeout}s, outer deadline {timeout_s}s",
            grader,
            timeout_s,
        )
    with Grader(workers=workers, timeout_s=timeout_s, inner_timeout_s=600) as grader:
        _warm(grader)
        _adversarial_run(f"outer deadline only ({timeout_s}s; alarms at 600s)", grader, timeout_s)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5.0, help="per-answer limit in seconds")
    parser.add_argument("--limit", type=int, default=None, help="MATH500 problems to use (default all 500)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    problems = load_benchmark("math500", data_dir, limit=args.limit)
    bench_forms(problems, args.workers, args.timeout)
    bench_adversarial(args.workers, args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
