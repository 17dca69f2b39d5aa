"""The exact step verifier of the arithmetic world: which step of a solution is the first wrong one.

Registered as ``"arithmetic"`` in ``raystep.stages.localizers.verifier.VERIFIERS``. The question is
parsed back into its chain (start amount, one event per step), so the verifier knows the amount that
must hold after every step. Step k is right when its first computation ``a op b = c``

- uses the event's operator on the right quantities: the amount after step k-1 and the event's number
  (either order for ``+`` and ``*``),
- is arithmetically true (so ``c`` is the amount after step k), and every other computation it states
  is true too,
- and it does not announce a final answer (``\\boxed{...}``) before the last event, nor a wrong one.

A step past the chain's end is right only when it states no computation and at most the right answer.
Prose around the computation is not judged. A solution that stops early without a wrong step (cut off
by the token limit) has no wrong step: the verifier returns 0 and the grader marks it wrong.
"""

from __future__ import annotations

import re

from raystep.synth.world import ASK_PATTERN, EVENT_PATTERNS, START_PATTERN, apply_op

_HEADER = re.compile(r"^\s*Step \d+:")
_COMPUTATION = re.compile(r"(-?\d+)\s*([+\-*/×x])\s*(-?\d+)\s*=\s*(-?\d+)")
_BOXED = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")
_COMMUTATIVE = frozenset({"+", "*"})


class NotASynthQuestion(ValueError):
    """The question is not one the arithmetic world writes; the verifier cannot judge it."""


def parse_question(question: str) -> tuple[int, list[tuple[str, int]]]:
    """``(start, [(op, n), ...])`` from a world question; raises ``NotASynthQuestion`` otherwise."""
    sentences = re.findall(r"[^.?]+[.?]", question.strip())
    sentences = [s.strip() for s in sentences]
    if len(sentences) < 2:
        raise NotASynthQuestion(f"not an arithmetic-world question: {question[:80]!r}")
    start = START_PATTERN.match(sentences[0])
    ask = ASK_PATTERN.match(sentences[-1])
    if not start or not ask:
        raise NotASynthQuestion(f"not an arithmetic-world question: {question[:80]!r}")
    events: list[tuple[str, int]] = []
    for sentence in sentences[1:-1]:
        for pattern, op in EVENT_PATTERNS:
            m = pattern.match(sentence)
            if m:
                events.append((op, int(m.group(1))))
                break
        else:
            raise NotASynthQuestion(f"unknown event sentence {sentence!r}")
    return int(start.group(2)), events


def _normalise_op(op: str) -> str:
    return "*" if op in ("×", "x") else op


def _true(a: int, op: str, b: int, c: int) -> bool:
    try:
        return apply_op(a, op, b) == c
    except ValueError:
        return False


def step_is_right(body: str, k: int, expected: list[int], events: list[tuple[str, int]]) -> bool:
    """Whether step ``k`` (1-based, text without or with its header) is right; see the module doc."""
    body = _HEADER.sub("", body, count=1)
    comps = [(int(a), _normalise_op(op), int(b), int(c)) for a, op, b, c in _COMPUTATION.findall(body)]
    boxed = [int(v) for v in _BOXED.findall(body)]
    n = len(events)
    if any(v != expected[-1] for v in boxed):
        return False
    if k > n:
        return not comps
    if boxed and k < n:
        return False
    if not comps or not all(_true(*comp) for comp in comps):
        return False
    a, op, b, c = comps[0]
    want_op, num = events[k - 1]
    prev = expected[k - 1]
    if op != want_op:
        return False
    operands_ok = (a, b) == (prev, num) or (op in _COMMUTATIVE and (a, b) == (num, prev))
    return operands_ok and c == expected[k]


def first_wrong_step(question: str, steps: list[str]) -> int:
    """The 1-based index of the first wrong step of ``steps`` for ``question``; 0 when none is wrong.

    ``steps`` are the steps of a solution as ``raystep.steps.split_steps`` gives them (with or without
    their ``Step k:`` headers). Raises ``NotASynthQuestion`` for a question from another dataset.
    """
    start, events = parse_question(question)
    expected = [start]
    for op, num in events:
        expected.append(apply_op(expected[-1], op, num))
    for k, body in enumerate(steps, 1):
        if not step_is_right(body, k, expected, events):
            return k
    return 0
