"""A tiny exact checker for localizer tests: steps of the form ``a + b = c``.

Its own module with no test-only imports, so Ray workers can import it by path
(``tests.checkers:sum_checker`` from the repo root, ``checkers:sum_checker`` where pytest put
``tests/`` on the path).
"""

from __future__ import annotations

import re

_SUM = re.compile(r"(-?\d+)\s*\+\s*(-?\d+)\s*=\s*(-?\d+)")


def sum_checker(question: str, steps: list[str]) -> int:
    """First step whose ``a + b = c`` is false (or that states none); 0 when all hold."""
    for k, step in enumerate(steps, 1):
        m = _SUM.search(step)
        if not m or int(m.group(1)) + int(m.group(2)) != int(m.group(3)):
            return k
    return 0


_ARITH = re.compile(r"(-?\d+)\s*([+*])\s*(-?\d+)\s*=\s*(-?\d+)")


def arithmetic_checker(question: str, steps: list[str]) -> int:
    """First step that is neither a true ``a + b = c`` / ``a * b = c`` nor a ``\\boxed{}`` answer; 0 when
    all hold (the taught solution of ``tests/test_collect_rectify.py`` passes, a derailed one does not)."""
    for k, step in enumerate(steps, 1):
        m = _ARITH.search(step)
        if m:
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            if (a + b if op == "+" else a * b) != c:
                return k
        elif "\\boxed{" not in step:
            return k
    return 0
