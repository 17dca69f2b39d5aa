"""The exact step verifier of the arithmetic worlds, and its error taxonomy.

Registered as ``"arithmetic"`` in ``raystep.stages.localizers.verifier.VERIFIERS``. The question is
read back into what a solution must do (``read_question``): the start amount, one ``(op, n)`` per step
(for a story, one per event sentence, with the operation seen from the asked person's side and
``+ 0`` for a sentence that changes nothing), and what a careless reader might do instead (the change a
distractor's verb suggests). Step k is right when its first computation ``a op b = c``

- uses the step's operator on the right quantities: the amount after step k-1 and the event's number
  (either order for ``+`` and ``*``),
- is arithmetically true (so ``c`` is the amount after step k), and every other computation it states
  is true too,
- and it does not announce a final answer (``\\boxed{...}``) before the last step, nor a wrong one.

A step past the chain's end is right only when it states no computation and at most the right answer.
Prose around the computation is not judged. A solution that stops early without a wrong step (cut off
by the token limit) has no wrong step: the verifier returns 0 and the grader marks it wrong.

``diagnose`` names the kind of the first wrong step (``KINDS``), so a policy's failures can be counted
as capacity errors (``arithmetic``: a false computation) or reasoning slips (the wrong operation for the
event, a wrong or stale quantity, the other person's amount followed, a distractor's number applied,
an event skipped or repeated, an early answer, a step past the end): the split the Step-DPO claim turns on.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from raystep.synth.world import ASK_PATTERN, EVENT_PATTERNS, START_PATTERN, apply_op

_HEADER = re.compile(r"^\s*Step \d+:")
_COMPUTATION = re.compile(r"(-?\d+)\s*([+\-*/×x])\s*(-?\d+)\s*=\s*(-?\d+)")
_BOXED = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")
_COMMUTATIVE = frozenset({"+", "*"})

KINDS: dict[str, str] = {
    "arithmetic": "arithmetic",
    "wrong_operation": "reasoning",
    "wrong_quantity": "reasoning",
    "wrong_person": "reasoning",
    "distractor": "reasoning",
    "skipped_event": "reasoning",
    "repeated_event": "reasoning",
    "early_answer": "reasoning",
    "extra_step": "reasoning",
    "no_computation": "format",
    "wrong_answer": "format",
    "unfinished": "format",
    "other": "other",
}
"""Kind of a solution's first wrong step -> its category. ``arithmetic``: a stated computation is false
(what a model lacking capacity gets wrong). ``reasoning``: every computation is true but the step does the
wrong thing (the slips Step-DPO targets). ``format``: no computation where one is due, a final answer that
does not match the amount reached, or no wrong step but no answer (cut off)."""
CATEGORIES = ("arithmetic", "reasoning", "format", "other")


class NotASynthQuestion(ValueError):
    """The question is not one the arithmetic worlds write; the verifier cannot judge it."""


@dataclass(frozen=True)
class Reading:
    """What a question asks for, as the verifier and the taxonomy need it."""

    start: int
    events: list[tuple[str, int]]
    """One ``(op, n)`` per step of a right solution (``("+", 0)`` for a sentence that changes nothing)."""
    naive: list[tuple[str, int] | None] = field(default_factory=list)
    """Per step: for a sentence that changes nothing (a distractor), the change a careless reader would
    apply; None for the others."""
    step_sentences: list[str] = field(default_factory=list)
    """Each step's event sentence (without its period), to tell which event a step read."""
    other: list[tuple[int, str, int]] = field(default_factory=list)
    """Story world, per step: the other person's amount before it and the change it makes to theirs
    (``+ 0`` when none): the step of a reader who follows the wrong person."""
    owner: str = ""
    """Whose amount the question asks for."""
    item: str = ""

    @property
    def expected(self) -> list[int]:
        out = [self.start]
        for op, n in self.events:
            out.append(apply_op(out[-1], op, n))
        return out


def parse_question(question: str) -> tuple[int, list[tuple[str, int]]]:
    """``(start, [(op, n), ...])`` of a question from either world; raises ``NotASynthQuestion``."""
    r = read_question(question)
    return r.start, r.events


def read_question(question: str) -> Reading:
    """The ``Reading`` of a chain-world or story-world question."""
    from raystep.synth.story import NO_CHANGE, NotAStory, parse_story

    try:
        story = parse_story(question)
    except NotAStory:
        return _read_chain(question)
    try:
        chain = story.chain()
        story.values()
    except ValueError as exc:
        raise NotASynthQuestion(f"story question with impossible arithmetic: {exc}") from None
    naive: list[tuple[str, int] | None] = [None] * len(chain)
    for i, change in story.distractors():
        naive[i] = change
    them = 1 - story.asked
    amounts = story.amounts()
    other = [(amounts[i][them], *(story.effect(e, them) or NO_CHANGE)) for i, e in enumerate(story.events)]
    return Reading(
        start=story.start,
        events=chain,
        naive=naive,
        other=other,
        step_sentences=[story.sentence(e)[:-1] for e in story.events],
        owner=story.people[story.asked][0],
        item=story.item,
    )


def _read_chain(question: str) -> Reading:
    sentences = [s.strip() for s in re.findall(r"[^.?]+[.?]", question.strip())]
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
    return Reading(
        start=int(start.group(2)),
        events=events,
        step_sentences=[s[:-1] for s in sentences[1:-1]],
        owner=start.group(1),
        item=start.group(3),
    )


def _normalise_op(op: str) -> str:
    return "*" if op in ("×", "x") else op


def _true(a: int, op: str, b: int, c: int) -> bool:
    try:
        return apply_op(a, op, b) == c
    except ValueError:
        return False


def _computations(body: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), _normalise_op(op), int(b), int(c)) for a, op, b, c in _COMPUTATION.findall(body)]


def _applies(a: int, op: str, b: int, want: tuple[int, str, int]) -> bool:
    """Whether ``a op b`` is the computation ``want`` (either operand order for ``+`` and ``*``)."""
    wa, wop, wb = want
    return op == wop and ((a, b) == (wa, wb) or (op in _COMMUTATIVE and (a, b) == (wb, wa)))


def step_is_right(body: str, k: int, expected: list[int], events: list[tuple[str, int]]) -> bool:
    """Whether step ``k`` (1-based, text without or with its header) is right; see the module doc."""
    body = _HEADER.sub("", body, count=1)
    comps = _computations(body)
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
    return _applies(a, op, b, (expected[k - 1], want_op, num)) and c == expected[k]


def first_wrong_step(question: str, steps: list[str]) -> int:
    """The 1-based index of the first wrong step of ``steps`` for ``question``; 0 when none is wrong.

    ``steps`` are the steps of a solution as ``raystep.steps.split_steps`` gives them (with or without
    their ``Step k:`` headers). Raises ``NotASynthQuestion`` for a question from another dataset.
    """
    reading = read_question(question)
    return _first_wrong(reading, steps, reading.expected)


def _first_wrong(reading: Reading, steps: list[str], expected: list[int]) -> int:
    for k, body in enumerate(steps, 1):
        if not step_is_right(body, k, expected, reading.events):
            return k
    return 0


def step_kind(body: str, k: int, reading: Reading) -> str:
    """The kind (a key of ``KINDS``) of a step the verifier marks wrong; see ``KINDS``.

    A false computation -> ``arithmetic`` first: a capacity error counts as one whatever else the step
    does. Otherwise the event sentence the step copies says which event it read (a later one:
    ``skipped_event``; an earlier one: ``repeated_event``); when it read step k's own event (or the prose
    is silent) the computation decides: a distractor's suggested change applied (``distractor``), the
    other person's amount and change (``wrong_person``: the question's subject misread), the right
    operands with another operation or a change read as none (``wrong_operation``), another
    event's change (only when the prose is silent), or the right change applied to another amount
    (``wrong_quantity``).
    """
    body = _HEADER.sub("", body, count=1)
    comps = _computations(body)
    boxed = [int(v) for v in _BOXED.findall(body)]
    expected = reading.expected
    n = len(reading.events)
    if comps and not all(_true(*comp) for comp in comps):
        return "arithmetic"
    if k > n:
        return "extra_step" if comps else "wrong_answer"
    if not comps:
        return "early_answer" if boxed else "no_computation"  # boxed before any computation of step k
    a, op, b, _ = comps[0]
    prev = expected[k - 1]
    want_op, num = reading.events[k - 1]
    if _applies(a, op, b, (prev, want_op, num)):
        return "early_answer" if boxed and k < n else "wrong_answer"
    read = _sentence_read(body, reading)
    if read is not None and read != k:
        return "skipped_event" if read > k else "repeated_event"
    naive = reading.naive[k - 1] if reading.naive else None
    if naive is not None and _applies(a, op, b, (prev, *naive)):
        return "distractor"
    if reading.other and a != prev and _applies(a, op, b, reading.other[k - 1]):
        return "wrong_person"
    if (a, b) == (prev, num) or (op in _COMMUTATIVE and (a, b) == (num, prev)):
        return "wrong_operation"
    if naive is None and _applies(a, op, b, (prev, "+", 0)):
        return "wrong_operation"  # a change read as no change
    if read is None:  # the prose does not say which event the step read: the computation may
        if any(_applies(a, op, b, (prev, o, m)) for o, m in reading.events[k:]):
            return "skipped_event"
        if any(_applies(a, op, b, (prev, o, m)) for o, m in reading.events[: k - 1]):
            return "repeated_event"
    if op == want_op and (b == num or (op in _COMMUTATIVE and a == num)):
        return "wrong_quantity"
    if op == want_op and a == prev:
        return "wrong_quantity"
    return "other"


def _sentence_read(body: str, reading: Reading) -> int | None:
    """Which step's event sentence the step's prose copies (1-based); None when it copies none, or
    several (identical sentences are ambiguous)."""
    hits = [j for j, s in enumerate(reading.step_sentences, 1) if s and s in body]
    return hits[0] if len(hits) == 1 else None


@dataclass(frozen=True)
class Diagnosis:
    """Why a solution is wrong: its first wrong step (0: none), that step's kind and category."""

    first_wrong_step: int
    kind: str | None
    """None when the solution is right."""

    @property
    def category(self) -> str | None:
        return KINDS[self.kind] if self.kind else None


def diagnose(question: str, steps: list[str], answer_correct: bool) -> Diagnosis:
    """The first wrong step of a graded solution and, for a wrong answer, that step's kind.

    ``answer_correct`` is the grader's verdict. A right answer has no kind (a wrong step that still
    reaches it is reported by ``first_wrong_step`` only); a wrong answer with no wrong step stopped
    before its answer (``unfinished``).
    """
    reading = read_question(question)
    k = _first_wrong(reading, steps, reading.expected)
    if answer_correct:
        return Diagnosis(k, None)
    if k == 0:
        return Diagnosis(0, "unfinished")
    return Diagnosis(k, step_kind(steps[k - 1], k, reading))


def tally(diagnoses: Iterable[Diagnosis]) -> dict[str, object]:
    """Counts of kinds and categories over the diagnoses of wrong answers (right ones have no kind)."""
    wrong = [d for d in diagnoses if d.kind]
    kinds = Counter(d.kind for d in wrong)
    cats = Counter(d.category for d in wrong)
    total = len(wrong)
    return {
        "wrong": total,
        "kinds": {k: kinds[k] for k in KINDS if kinds[k]},
        "categories": {c: cats[c] for c in CATEGORIES},
        "arithmetic_share": cats["arithmetic"] / total if total else 0.0,
        "reasoning_share": cats["reasoning"] / total if total else 0.0,
    }
