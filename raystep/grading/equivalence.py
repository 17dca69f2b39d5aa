"""Exact paths to a verdict in the calling process (no sympy, bounded work): normalised string equality
and exact numbers. ``None`` means "not decided here": the pool asks math-verify."""

from __future__ import annotations

import re
from fractions import Fraction

_FAST_MAX_CHARS = 200
_SPACING = re.compile(r"\\[!,;: ]|\\quad|\\qquad|\s+")
_LEFT_RIGHT = re.compile(r"\\left|\\right")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
_FRAC_SHORT = re.compile(r"^(-?)\\[dt]?frac(\d)(\d)$")
_PLAIN_NUMBER = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)$")
_SLASH = re.compile(r"^(-?\d+)/(\d+)$")
_ASSIGNED = re.compile(r"^\s*[A-Za-z]\s*=\s*([^=<>]+)$")
_WITH_UNIT = re.compile(r"^\\?\$?(-?\d[\d,]*(?:\.\d+)?)\s*(?:\\?%|[A-Za-z][A-Za-z .]*)?$")


def _normalise(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s.strip("$")
    s = s.replace("\\$", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _LEFT_RIGHT.sub("", s)
    s = _SPACING.sub("", s)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    return s.rstrip(".")


def _as_number(s: str) -> Fraction | None:
    """An exact rational for plain numbers, ``a/b`` and ``\\frac{a}{b}``; None for anything else."""
    if len(s) > 60:
        return None
    try:
        if _PLAIN_NUMBER.match(s):
            return Fraction(s)
        m = _SLASH.match(s)
        if m and int(m.group(2)) != 0:
            return Fraction(int(m.group(1)), int(m.group(2)))
        m = _FRAC.match(s) or _FRAC_SHORT.match(s)
        if m and int(m.group(3)) != 0:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def fast_verdict(pred: str, gold: str) -> bool | None:
    """True/False when exact string or number comparison settles it; None when math-verify must decide.

    Unequal integers are conclusive; other unequal numbers are not (math-verify rounds floats).
    """
    if len(pred) > _FAST_MAX_CHARS or len(gold) > _FAST_MAX_CHARS:
        return None
    if "=" not in gold:
        assigned = _ASSIGNED.match(pred)
        if assigned:  # "x = 5" against "5": the value is what counts (math-verify agrees)
            pred = assigned.group(1)
    p, g = _normalise(pred), _normalise(gold)
    if p and p == g:
        return True
    gn = _as_number(g)
    if gn is None:
        return None
    pn = _as_number(p)
    if pn is None:
        m = _WITH_UNIT.match(pred.strip())
        if m:
            pn = _as_number(m.group(1).replace(",", ""))
    if pn is None:
        return None
    if pn == gn:
        return True
    if pn.denominator == 1 and gn.denominator == 1:
        return False
    return None
