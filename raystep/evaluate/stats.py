"""Small, exact statistics for evaluation reports: Wilson intervals, McNemar, maj@k and pass@k, and
Student-t intervals over seeds.

The first four are written out by hand because each is a few lines and the numbers must be exactly the
textbook ones; the t quantile comes from scipy (``scipy.stats.t.ppf``), right for any degrees of freedom.
The tests check all of them against values computed independently.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054
"""The two-sided 95% normal quantile."""


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion.

    Preferred over the normal interval because it stays inside [0, 1] and behaves at 0% and 100%,
    which small per-level MATH buckets hit. ``successes`` may be fractional (a mean over k samples).
    """
    if n <= 0:
        return (0.0, 0.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    ``b``: items right in A and wrong in B; ``c``: the reverse. Under the null each discordant item is
    a fair coin, so the p-value is the two-sided binomial tail ``min(1, 2 * P[X <= min(b, c)])`` with
    ``X ~ Binomial(b + c, 1/2)``. Exact, because evaluation deltas often rest on few discordant items.
    """
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021)."""
    if not 0 <= c <= n:
        raise ValueError(f"correct count {c} outside 0..{n}")
    if k > n:
        raise ValueError(f"k={k} exceeds the {n} samples drawn")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(preds: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """maj@k for one problem: is the most frequent extracted answer a correct one?

    Samples without an answer do not vote. Ties go to the answer seen first (a fixed, documented rule,
    so the number is reproducible). The answer's correctness is taken from the grader's verdict of a
    sample that gave it, since math-verify decides equivalence, not string identity.
    """
    if len(preds) != len(correct):
        raise ValueError("preds and correct differ in length")
    votes = Counter(p for p in preds if p is not None and p != "")
    if not votes:
        return False
    best = max(votes.values())
    winner = next(p for p in preds if p is not None and p != "" and votes[p] == best)
    return any(ok for p, ok in zip(preds, correct, strict=True) if p == winner)


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    from scipy.stats import t

    return float(t.ppf(q, df))


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and two-sided Student-t interval over independent runs (seeds).

    ``half = t_{(1+level)/2, n-1} * sd / sqrt(n)`` with the sample standard deviation; one value has no
    interval (``low = high = mean``, ``half = None``).
    """
    if not values:
        raise ValueError("no values")
    n = len(values)
    m = math.fsum(values) / n
    if n < 2:
        return {"mean": m, "low": m, "high": m, "half": None, "sd": None, "n": n}
    sd = math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": m, "low": m - half, "high": m + half, "half": half, "sd": sd, "n": n}


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """``b - a`` paired by run (same seed, same pairs): the mean difference with its t-interval.

    Pairing removes what the two methods share in a seed (its data, its problems), so the interval is
    on the methods' difference alone. ``excludes_zero`` says whether the interval separates them.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length: {len(a)} and {len(b)}")
    out = mean_interval([y - x for x, y in zip(a, b, strict=True)], level)
    out["excludes_zero"] = out["half"] is not None and (out["low"] > 0 or out["high"] < 0)
    return out
