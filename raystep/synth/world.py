"""The built-in arithmetic world: seeded multi-step word problems whose every step can be checked exactly.

A problem is a chain: a starting amount, then one event per step (buys / finds more, gives away / loses,
has n times as many, keeps one of n equal groups). Its worked solution states one computation per step
in Step-DPO's format (``Step k: ... a op b = c items.``) and ends with ``The answer is \\boxed{N}.``, so
``raystep.synth.verify`` can find the first wrong step of any solution and the demo can run the whole
Step-DPO loop without a judge, a GPU or a download.

Problems are split three ways by a hash of the question text (``sft`` for the policy's warm-up,
``train`` for collecting pairs, ``test`` held out for evaluation), so the splits never share a question
whatever the seeds and sizes.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

if TYPE_CHECKING:
    from raystep.config import DataConfig
    from raystep.synth.story import StorySpec

Split = Literal["sft", "train", "test", "valid"]
SPLIT_BUCKETS: dict[str, frozenset[int]] = {
    "test": frozenset({0}),
    "train": frozenset({1, 2, 3}),
    "sft": frozenset({4, 5, 6, 7, 8, 9}),
}
"""Question-hash buckets (mod 10) of each split: disjoint by construction. The chain world has no
``valid`` split (its three are kept as they were, so its published numbers stay reproducible)."""

OPERATORS = ("+", "-", "*", "/")
NAMES = (
    ("Ann", "She"),
    ("Ben", "He"),
    ("Cara", "She"),
    ("Dan", "He"),
    ("Eva", "She"),
    ("Finn", "He"),
    ("Gina", "She"),
    ("Hugo", "He"),
    ("Ivy", "She"),
    ("Jack", "He"),
    ("Kate", "She"),
    ("Leo", "He"),
)
ITEMS = ("apples", "pens", "coins", "cards", "books", "shells", "stamps", "marbles", "beads", "stickers")

# One question sentence and one solution phrase per event; ``{n}`` is the event's number.
EVENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "+": (
        ("buys {n} more", "buys {n} more"),
        ("finds {n} more", "finds {n} more"),
        ("gets {n} more", "gets {n} more"),
    ),
    "-": (("gives away {n}", "gives away {n}"), ("loses {n}", "loses {n}"), ("sells {n}", "sells {n}")),
    "*": (("now has {n} times as many", "has {n} times as many"),),
    "/": (("splits them into {n} equal groups and keeps one", "keeps one of {n} groups"),),
}
EVENT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile("^(?:He|She) " + re.escape(q).replace(r"\{n\}", r"(\d+)") + r"\.$"), op)
    for op, variants in EVENTS.items()
    for q, _ in variants
)
START_PATTERN = re.compile(r"^([A-Z][a-z]+) has (\d+) ([a-z]+)\.$")
ASK_PATTERN = re.compile(r"^How many ([a-z]+) does ([A-Z][a-z]+) have now\?$")


@dataclass(frozen=True)
class WorldSpec:
    """The world's knobs: chain length, operand sizes, operators."""

    min_steps: int = 2
    max_steps: int = 3
    min_operand: int = 2
    max_operand: int = 9
    max_factor: int = 3
    """Largest multiplier / divisor for ``*`` and ``/``."""
    max_value: int = 40
    """Running amounts stay in ``[1, max_value]``: small numbers keep a tiny model's arithmetic learnable."""
    operators: tuple[str, ...] = ("+", "-", "*")

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if not 1 <= self.min_operand <= self.max_operand:
            raise ValueError(
                f"need 1 <= min_operand <= max_operand, got {self.min_operand}, {self.max_operand}"
            )
        if self.max_factor < 2:
            raise ValueError(f"max_factor must be >= 2, got {self.max_factor}")
        if self.max_value < 2 * self.max_operand:
            raise ValueError(f"max_value ({self.max_value}) must be >= 2 * max_operand ({self.max_operand})")
        bad = [op for op in self.operators if op not in OPERATORS]
        if bad or not self.operators:
            raise ValueError(f"operators must be a non-empty subset of {OPERATORS}, got {self.operators}")
        if not _chains_exist(self):
            raise ValueError(
                f"no chain of {self.min_steps} steps fits these knobs (operators {self.operators}, "
                f"operands {self.min_operand}..{self.max_operand}, amounts 1..{self.max_value}): "
                "widen the operand range, raise max_value, add operators or lower min_steps"
            )

    @property
    def splits(self) -> dict[str, frozenset[int]]:
        return SPLIT_BUCKETS

    @property
    def slips(self) -> tuple[str, ...]:
        """The mistakes the warm-up data may contain by default."""
        return MISTAKES

    def sample(self, rng: random.Random) -> Problem:
        return sample_problem(rng, self)


AnySpec = Union[WorldSpec, "StorySpec"]
"""A world: the chain world's ``WorldSpec`` or the story world's ``StorySpec``."""


@dataclass(frozen=True)
class Event:
    op: str
    n: int
    variant: int


@dataclass(frozen=True)
class Problem:
    """One chain problem; everything else (question, solution, answer) is derived from it."""

    name: str
    pronoun: str
    items: str
    start: int
    events: tuple[Event, ...] = field(default_factory=tuple)

    def values(self) -> list[int]:
        """The running amount before the first event and after each one."""
        out = [self.start]
        for e in self.events:
            out.append(apply_op(out[-1], e.op, e.n))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]

    @property
    def num_steps(self) -> int:
        return len(self.events)

    def solution(self) -> str:
        return solution(self)

    def with_slip(self, k: int, kind: str, rng: random.Random) -> str:
        return solution_with_mistake(self, k, kind, rng)

    def slip_steps(self, kind: str) -> list[int]:
        """Every step can show every mistake of this world."""
        return list(range(1, len(self.events) + 1))

    def random_slip(self, rng: random.Random, kinds: tuple[str, ...]) -> str:
        """A solution with one slip at a random step, of a random kind: the step drawn first, then the kind
        (the order of the first warm-ups, so the demo's warm-up data and its published numbers stay)."""
        return solution_with_mistake(self, rng.randint(1, len(self.events)), rng.choice(kinds), rng)

    @property
    def question(self) -> str:
        parts = [f"{self.name} has {self.start} {self.items}."]
        parts += [f"{self.pronoun} {EVENTS[e.op][e.variant][0].format(n=e.n)}." for e in self.events]
        parts.append(f"How many {self.items} does {self.name} have now?")
        return " ".join(parts)


def apply_op(a: int, op: str, b: int) -> int:
    """Exact integer arithmetic; ``/`` must divide evenly."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0 or a % b:
            raise ValueError(f"{a} / {b} is not an exact division")
        return a // b
    raise ValueError(f"unknown operator {op!r}")


def step_text(problem: Problem, k: int, a: int, op: str, b: int, c: int) -> str:
    """Step k's body (after ``Step k:``): the event in words, then the one computation it states."""
    e = problem.events[k - 1]
    words = EVENTS[e.op][e.variant][1].format(n=e.n)
    return f" {problem.pronoun} {words}, so {a} {op} {b} = {c}."


def answer_line(value: int) -> str:
    return f"The answer is \\boxed{{{value}}}."


def solution(problem: Problem) -> str:
    """The correct worked solution: ``Step 1: ...\\nStep 2: ...\\nThe answer is \\boxed{N}.``"""
    vals = problem.values()
    lines = [
        f"Step {k}:" + step_text(problem, k, vals[k - 1], e.op, e.n, vals[k])
        for k, e in enumerate(problem.events, 1)
    ]
    return "\n".join(lines) + "\n" + answer_line(vals[-1])


MISTAKES = ("arithmetic", "operator", "operand")
"""Plausible slips a solver makes: a miscomputed result (off by 1, 2 or 10), the wrong operation for the
event, or a wrong number (another number of the question, or the right one off by one)."""

_WRONG_OP = {"+": "-", "-": "+", "*": "+", "/": "*"}


def solution_with_mistake(problem: Problem, k: int, kind: str, rng: random.Random) -> str:
    """A worked solution whose step ``k`` (1-based) makes mistake ``kind``; later steps carry on correctly
    from the wrong amount, as a real solver would, so the final answer is (almost always) wrong too."""
    if not 1 <= k <= len(problem.events):
        raise ValueError(f"step {k} is outside 1..{len(problem.events)}")
    if kind not in MISTAKES:
        raise ValueError(f"unknown mistake {kind!r}; known: {', '.join(MISTAKES)}")
    value = problem.start
    lines = []
    for i, e in enumerate(problem.events, 1):
        a, op, b = value, e.op, e.n
        if i == k and kind == "operator":
            op = _WRONG_OP[e.op]
        if i == k and kind == "operand":
            others = {
                num for num in [problem.start, *(x.n for x in problem.events), e.n - 1, e.n + 1] if num > 0
            }
            others.discard(e.n)
            b = rng.choice(sorted(others))
        c = loose_op(a, op, b)
        if i == k and kind == "arithmetic":
            c += rng.choice((-10, -2, -1, 1, 2, 10))
        lines.append(f"Step {i}:" + step_text(problem, i, a, op, b, c))
        value = c
    return "\n".join(lines) + "\n" + answer_line(value)


def _operands(spec: WorldSpec, op: str, value: int) -> range | list[int]:
    """The numbers event ``op`` may use from amount ``value`` so the amount stays in ``1..max_value``."""
    if op == "+":
        return range(spec.min_operand, min(spec.max_operand, spec.max_value - value) + 1)
    if op == "-":
        return range(spec.min_operand, min(spec.max_operand, value - 1) + 1)
    if op == "*":
        return range(2, min(spec.max_factor, spec.max_value // value) + 1)
    return [d for d in range(2, spec.max_factor + 1) if value % d == 0]


def _successors(spec: WorldSpec, value: int) -> set[int]:
    """Every amount one event can lead to from ``value``."""
    return {apply_op(value, op, n) for op in spec.operators for n in _operands(spec, op, value)}


def _chains_exist(spec: WorldSpec) -> bool:
    """Whether some start admits ``min_steps`` events: without one, sampling would draw forever."""
    amounts = set(range(spec.min_operand, spec.max_operand + 1))
    for _ in range(spec.min_steps):
        amounts = {nxt for v in amounts for nxt in _successors(spec, v)}
        if not amounts:
            return False
    return True


def loose_op(a: int, op: str, b: int) -> int:
    """Like ``apply_op`` but a non-exact division rounds down (a continuation after a slip may hit one)."""
    return a // b if op == "/" and b else apply_op(a, op, b)


def _bucket(question: str) -> int:
    return int(hashlib.sha1(question.encode()).hexdigest()[:8], 16) % 10


def _pick_event(rng: random.Random, spec: WorldSpec, value: int) -> Event | None:
    ops = list(spec.operators)
    rng.shuffle(ops)
    for op in ops:
        variant = rng.randrange(len(EVENTS[op]))
        numbers = _operands(spec, op, value)
        if numbers:
            return Event(op, rng.choice(numbers), variant)
    return None


def sample_problem(rng: random.Random, spec: WorldSpec) -> Problem:
    """One random chain; an event that cannot keep the amount in range is drawn again.

    ``WorldSpec`` checks that chains exist, so every draw has a chance; the cap is a guard against knobs
    that make them vanishingly rare, so a bad spec is an error and never a hang.
    """
    for _ in range(100_000):
        name, pronoun = rng.choice(NAMES)
        items = rng.choice(ITEMS)
        start = rng.randint(spec.min_operand, spec.max_operand)
        events: list[Event] = []
        value = start
        for _ in range(rng.randint(spec.min_steps, spec.max_steps)):
            event = _pick_event(rng, spec, value)
            if event is None:
                break
            events.append(event)
            value = apply_op(value, event.op, event.n)
        else:
            return Problem(name, pronoun, items, start, tuple(events))
    raise ValueError(f"100000 draws found no chain for {spec}: widen the knobs")


def generate(spec: AnySpec, count: int, seed: int = 0, split: Split = "train") -> list[Any]:
    """``count`` distinct problems of ``split``; the same (spec, count, seed, split) gives the same list.

    ``spec`` is a ``WorldSpec`` (the chain world) or a ``story.StorySpec``: anything with ``sample(rng)``
    and ``splits``.
    """
    if split not in spec.splits:
        raise ValueError(f"unknown split {split!r} for this world; known: {', '.join(spec.splits)}")
    rng = random.Random(f"raystep-synth:{seed}:{split}")
    buckets = spec.splits[split]
    seen: set[str] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 200 * count + 10_000:
            raise ValueError(
                f"the world is too small for {count} distinct {split!r} problems (got {len(out)}): "
                "widen the operand range or the number of steps"
            )
        p = spec.sample(rng)
        q = p.question
        if q in seen or _bucket(q) not in buckets:
            continue
        seen.add(q)
        out.append(p)
    return out


def problem_row(p: Any, split: str, index: int, seed: int) -> dict:
    """The pipeline's problem row: ``id, dataset="synth", question, answer`` plus the worked solution."""
    return {
        "id": f"synth-{split}-{seed}-{index:05d}",
        "dataset": "synth",
        "question": p.question,
        "answer": str(p.answer),
        "solution": p.solution(),
        "level": p.num_steps,
    }


def spec_from_config(data: DataConfig) -> AnySpec:
    """The world ``data.synth.world`` names, with its knobs (a knob left empty keeps the world's default)."""
    s = data.synth
    shared = {
        k: getattr(s, k)
        for k in ("min_steps", "max_steps", "min_operand", "max_operand", "max_value")
        if getattr(s, k) is not None
    }
    if s.world == "story":
        from raystep.synth.story import StorySpec

        return StorySpec(**shared, max_distractors=s.max_distractors, kinds=tuple(s.kinds))
    return WorldSpec(**shared, max_factor=s.max_factor, operators=tuple(s.operators))


def load_problems(data: DataConfig) -> list[dict]:
    """Problem rows for ``data.source: synth``: ``data.split`` (sft | train | test, and ``valid`` in the
    story world), ``data.synth`` knobs.

    ``data.limit`` caps the count (default ``data.synth.num_problems``).
    """
    spec = spec_from_config(data)
    split = data.split if data.split in spec.splits else None
    if split is None:
        raise ValueError(
            f"data.split for source 'synth' (world {data.synth.world!r}) must be one of "
            f"{', '.join(spec.splits)}, got {data.split!r}"
        )
    count = data.limit or data.synth.num_problems
    seed = data.synth.seed
    return [problem_row(p, split, i, seed) for i, p in enumerate(generate(spec, count, seed, split))]
