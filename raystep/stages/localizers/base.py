"""One interface for every way of finding the first wrong step, and ways to combine several.

A localizer takes wrong samples (rows with ``question``, ``answer`` (the gold), ``steps``) and returns,
for each, the same row plus ``first_wrong_step`` (1-based, 0 when it found none), ``localizer`` (its
name), ``evidence`` (a JSON string: what it saw, so a label can be audited) and ``error`` (None, or why
no label could be given). A localizer never drops a row and never raises for one bad row: the row keeps
its error and the caller counts it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

Combine = Literal["first", "agree", "vote"]


@runtime_checkable
class Localizer(Protocol):
    """Finds the first wrong step of each row; see the module docstring for the row contract."""

    name: str

    def locate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


def labelled(
    row: dict[str, Any], name: str, step: int, evidence: dict[str, Any], error: str | None = None
) -> dict[str, Any]:
    """The out row: the input row plus the four localizer columns (evidence serialised once, here)."""
    return {
        **row,
        "first_wrong_step": int(step),
        "localizer": name,
        "evidence": json.dumps(evidence, ensure_ascii=False, default=str),
        "error": error,
    }


def check_step(step: int, num_steps: int) -> int:
    """A located step must name a step of the solution (or 0 for none); anything else is a bug upstream."""
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= num_steps:
        raise ValueError(f"first wrong step {step!r} is outside 0..{num_steps}")
    return step


class CombinedLocalizer:
    """Several localizers over the same rows, reduced to one label per row.

    ``first``: the first method that gave a label (later methods are fallbacks when it errored).
    ``agree``: a label only where every method gave the same one; otherwise the row keeps an error
    ``disagree: ...`` (kept and counted, so rectify skips it and nothing is lost).
    ``vote``: the most common label among the methods that answered; ties go to the earliest step,
    the conservative choice (an earlier prefix that is still correct is never used as wrong).
    """

    def __init__(self, localizers: Sequence[Localizer], combine: Combine = "first"):
        if not localizers:
            raise ValueError("CombinedLocalizer needs at least one localizer")
        if combine not in ("first", "agree", "vote"):
            raise ValueError(f"unknown combine rule {combine!r}; use first, agree or vote")
        self.localizers = list(localizers)
        self.combine = combine
        self.name = "+".join(loc.name for loc in self.localizers) + f":{combine}"

    def locate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        per_method = [loc.locate(rows) for loc in self.localizers]
        for loc, out in zip(self.localizers, per_method, strict=True):
            if len(out) != len(rows):
                raise RuntimeError(f"localizer {loc.name} returned {len(out)} rows for {len(rows)}")
        return [self.reduce(row, [out[i] for out in per_method]) for i, row in enumerate(rows)]

    def reduce(self, row: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
        """One row's label from each method's result (in ``localizers`` order), by the rule."""
        evidence: dict[str, Any] = {"combine": self.combine, "methods": {}}
        answered: list[tuple[str, int]] = []
        errors: list[str] = []
        for loc, res in zip(self.localizers, results, strict=True):
            evidence["methods"][loc.name] = {
                "first_wrong_step": res["first_wrong_step"],
                "error": res.get("error"),
                "evidence": json.loads(res["evidence"]) if res.get("evidence") else None,
            }
            if res.get("error"):
                errors.append(f"{loc.name}: {res['error']}")
            else:
                answered.append((loc.name, int(res["first_wrong_step"])))
        if not answered:
            return labelled(row, self.name, 0, evidence, "; ".join(errors) or "no localizer answered")
        if self.combine == "first":
            return labelled(row, self.name, answered[0][1], evidence)
        if self.combine == "agree":
            steps = {step for _, step in answered}
            if errors or len(steps) != 1:
                detail = ", ".join(f"{name}={step}" for name, step in answered) + "".join(
                    f", {e}" for e in errors
                )
                return labelled(row, self.name, 0, evidence, f"disagree: {detail}")
            return labelled(row, self.name, answered[0][1], evidence)
        counts = Counter(step for _, step in answered)
        best = max(counts.values())
        winner = min(step for step, c in counts.items() if c == best)
        evidence["votes"] = {str(k): v for k, v in sorted(counts.items())}
        return labelled(row, self.name, winner, evidence)


def combine_localizers(localizers: Sequence[Localizer], combine: Combine = "first") -> Localizer:
    """One localizer as is, several behind the combination rule."""
    if len(localizers) == 1:
        return localizers[0]
    return CombinedLocalizer(localizers, combine)


def locate_safely(localizer: Localizer, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``localizer.locate`` that never loses a row: an exception becomes every row's error."""
    try:
        out = localizer.locate(rows)
        if len(out) != len(rows):
            raise RuntimeError(f"{localizer.name} returned {len(out)} rows for {len(rows)}")
        return out
    except Exception as exc:
        error = f"localizer failed: {type(exc).__name__}: {exc}"
        return [labelled(r, getattr(localizer, "name", "?"), 0, {}, error) for r in rows]
