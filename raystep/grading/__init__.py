"""Grading: pull the final answer out of a response and judge it against the gold answer.

``extract`` finds the answer (regexes and a brace scanner, linear in the text); ``equivalence`` tries
cheap exact paths (normalised strings, exact numbers) in the calling process; ``pool`` hands the rest
to ``math-verify`` in worker processes (``worker``) under a hard per-item deadline, so nothing hangs.
"""

from raystep.grading.equivalence import fast_verdict
from raystep.grading.extract import METHODS, extract_answer, gold_answer, last_boxed
from raystep.grading.pool import STATUSES, Grader, GradingError, Verdict, grade_responses

__all__ = [
    "METHODS",
    "STATUSES",
    "Grader",
    "GradingError",
    "Verdict",
    "extract_answer",
    "fast_verdict",
    "gold_answer",
    "grade_responses",
    "last_boxed",
]
