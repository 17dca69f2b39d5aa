"""The story world: two people, transfers between them and sentences that change nothing, small numbers.

Why a second world: in the chain world (``world.py``) a tiny policy's mistakes are mostly arithmetic
(a 135k-parameter model miscomputing ``27 - 15``), capacity errors a preference on one step cannot fix.
Here the arithmetic is small on purpose (amounts stay in ``1..max_value``, 20 by default, operands up to
9, doubling at most), while *reading* the question is the hard part:

- two people hold the item; the question asks about one of them, in its last sentence;
- ``A gives n items to B`` adds ``n`` for B and subtracts it for A, ``A gets n items from B`` the
  reverse: the operation of a step follows from who is asked, not from the verb;
- sentences about the other person alone, or about other items, change nothing for the asked person
  (distractors): their step is ``+ 0``, and a careless reader applies their number.

The worked solution has one step per event sentence, in order: it copies the sentence and states one
computation (``Step k: Ann gives 3 apples to Ben, so 5 + 3 = 8.``; ``Step k: Ann buys 4 pens, so 8 + 0
= 8.``), then ``The answer is \\boxed{N}.``. One step per sentence keeps the copying mechanical (the
next sentence), so what remains hard is the decision each step makes. A solution with a slip
(``solution_with_slip``) makes one reasoning mistake at one step (the wrong operation, a distractor's
number applied, a stale or wrong quantity, an event skipped or repeated, an early answer;
``arithmetic`` exists for comparison) and then carries on correctly, with true arithmetic, from the
amount it reached: what the warm-up policy learns from.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from raystep.synth.world import ITEMS, NAMES, answer_line, apply_op, loose_op

KINDS = ("gain", "loss", "give", "get", "double")
"""Event kinds: ``gain``/``loss`` change the actor's amount; ``give``/``get`` move items between the two
people; ``double`` doubles the actor's amount."""

SENTENCES: dict[str, tuple[str, ...]] = {
    "gain": ("{s} buys {n} {item}.", "{s} finds {n} {item}.", "{s} wins {n} {item}."),
    "loss": ("{s} loses {n} {item}.", "{s} sells {n} {item}."),
    "give": ("{s} gives {n} {item} to {o}.",),
    "get": ("{s} gets {n} {item} from {o}.",),
    "double": ("{s} doubles {poss} {item}.",),
}
"""The question sentence of each kind; a solution step copies it (without the period)."""

SLIPS = ("operation", "quantity", "distractor", "skip", "repeat", "early")
"""Reasoning slips the warm-up data may contain (what Step-DPO should be able to fix)."""
ALL_SLIPS = (*SLIPS, "arithmetic")
"""``arithmetic`` (a miscomputed result) is a capacity error: available for comparison, not by default."""

STORY_SPLITS: dict[str, frozenset[int]] = {
    "test": frozenset({0}),
    "valid": frozenset({1}),
    "train": frozenset({2, 3, 4}),
    "sft": frozenset({5, 6, 7, 8, 9}),
}
"""Question-hash buckets (mod 10): ``valid`` is for choosing settings, never ``test``."""

_WRONG_OP = {"+": "-", "-": "+", "*": "+"}
_POSSESSIVE = {"He": "his", "She": "her"}
_START = re.compile(r"^([A-Z][a-z]+) has (\d+) ([a-z]+)\.$")
_ASK = re.compile(r"^How many ([a-z]+) does ([A-Z][a-z]+) have now\?$")


def _pattern(template: str) -> re.Pattern[str]:
    out = re.escape(template)
    for key, rx in (
        ("s", r"(?P<s>[A-Z][a-z]+)"),
        ("o", r"(?P<o>[A-Z][a-z]+)"),
        ("n", r"(?P<n>\d+)"),
        ("item", r"(?P<item>[a-z]+)"),
        ("poss", r"(?P<poss>his|her)"),
    ):
        out = out.replace(re.escape("{" + key + "}"), rx)
    return re.compile("^" + out + "$")


PATTERNS: tuple[tuple[re.Pattern[str], str, int], ...] = tuple(
    (_pattern(t), kind, variant) for kind, ts in SENTENCES.items() for variant, t in enumerate(ts)
)


@dataclass(frozen=True)
class StorySpec:
    """The story world's knobs."""

    min_steps: int = 2
    """Fewest events that change the asked person's amount."""
    max_steps: int = 3
    max_distractors: int = 2
    """Sentences that change nothing for the asked person: 0..this many per question (each is a step
    too, so a solution has up to ``max_steps + max_distractors`` steps)."""
    min_operand: int = 2
    max_operand: int = 9
    max_value: int = 20
    """Every amount (both people's) stays in ``[1, max_value]``: small facts a tiny model masters."""
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if not 1 <= self.min_operand <= self.max_operand:
            raise ValueError(
                f"need 1 <= min_operand <= max_operand, got {self.min_operand}, {self.max_operand}"
            )
        if self.max_distractors < 0:
            raise ValueError(f"max_distractors must be >= 0, got {self.max_distractors}")
        if self.max_value < 2 * self.max_operand + 2:
            raise ValueError(
                f"max_value ({self.max_value}) must be >= 2 * max_operand + 2 ({2 * self.max_operand + 2}) "
                "so a transfer always fits"
            )
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not set(self.kinds) - {"double"}:
            raise ValueError(
                f"kinds must be a subset of {KINDS} with at least one kind besides 'double', got {self.kinds}"
            )

    @property
    def splits(self) -> dict[str, frozenset[int]]:
        return STORY_SPLITS

    @property
    def slips(self) -> tuple[str, ...]:
        """The slips the warm-up data may contain by default: reasoning only, never arithmetic."""
        return SLIPS

    def sample(self, rng: random.Random) -> StoryProblem:
        return sample_story(rng, self)


@dataclass(frozen=True)
class StoryEvent:
    kind: str
    actor: int
    """0 or 1: who the sentence's subject is (the other person is ``1 - actor``)."""
    n: int
    item: str
    variant: int = 0


@dataclass(frozen=True)
class StoryProblem:
    """Two people, their start amounts, the events in question order, and who is asked."""

    people: tuple[tuple[str, str], tuple[str, str]]
    """``((name, pronoun), (name, pronoun))``."""
    item: str
    starts: tuple[int, int]
    asked: int
    events: tuple[StoryEvent, ...] = field(default_factory=tuple)

    # -- derived ------------------------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        """One step per event sentence."""
        return len(self.events)

    def solution(self) -> str:
        return solution(self)

    def with_slip(self, k: int, kind: str, rng: random.Random) -> str:
        return solution_with_slip(self, k, kind, rng)

    def slip_steps(self, kind: str) -> list[int]:
        """The steps (1-based) where slip ``kind`` can show (see ``effective_slip``)."""
        return [k for k in range(1, self.num_steps + 1) if effective_slip(self, k, kind) == kind]

    def random_slip(self, rng: random.Random, kinds: tuple[str, ...]) -> str:
        """A solution with one slip: the kind first, then a step that can show it (uniform over kinds,
        not over the fallbacks ``effective_slip`` makes)."""
        kind = rng.choice(kinds)
        return self.with_slip(rng.choice(self.slip_steps(kind) or range(1, self.num_steps + 1)), kind, rng)

    def effect(self, e: StoryEvent, person: int | None = None) -> tuple[str, int] | None:
        """``(op, n)`` the event applies to ``person``'s amount of the item (default: the asked one);
        None when it changes nothing for that person."""
        who = self.asked if person is None else person
        if e.item != self.item:
            return None
        if e.kind == "gain" and e.actor == who:
            return ("+", e.n)
        if e.kind == "loss" and e.actor == who:
            return ("-", e.n)
        if e.kind == "double" and e.actor == who:
            return ("*", 2)
        if e.kind in ("give", "get"):
            sign = "-" if (e.kind == "give") == (e.actor == who) else "+"
            return (sign, e.n)
        return None

    def relevant(self) -> list[int]:
        """Indices (into ``events``) of the events that change the asked person's amount."""
        return [i for i, e in enumerate(self.events) if self.effect(e) is not None]

    def chain(self) -> list[tuple[str, int]]:
        """``[(op, n), ...]`` of the solution's steps, one per event; a distractor's is ``("+", 0)``."""
        return [self.effect(e) or NO_CHANGE for e in self.events]

    @property
    def start(self) -> int:
        return self.starts[self.asked]

    def values(self) -> list[int]:
        """The asked person's amount before the first step and after each one."""
        out = [self.start]
        for op, n in self.chain():
            out.append(apply_op(out[-1], op, n))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]

    def amounts(self) -> list[tuple[int, int]]:
        """Both people's amounts before the first event and after each event (in question order)."""
        cur = list(self.starts)
        out = [tuple(cur)]
        for e in self.events:
            for who in (0, 1):
                eff = self.effect(e, who)
                if eff is not None:
                    cur[who] = apply_op(cur[who], *eff)
            out.append(tuple(cur))
        return out  # type: ignore[return-value]

    def sentence(self, e: StoryEvent) -> str:
        name, pronoun = self.people[e.actor]
        return SENTENCES[e.kind][e.variant].format(
            s=name, o=self.people[1 - e.actor][0], n=e.n, item=e.item, poss=_POSSESSIVE[pronoun]
        )

    @property
    def question(self) -> str:
        parts = [f"{self.people[p][0]} has {self.starts[p]} {self.item}." for p in (0, 1)]
        parts += [self.sentence(e) for e in self.events]
        parts.append(f"How many {self.item} does {self.people[self.asked][0]} have now?")
        return " ".join(parts)

    def distractors(self) -> list[tuple[int, tuple[str, int]]]:
        """``(index, (op, n))`` of each event that changes nothing for the asked person, with the change a
        careless reader would make (its own verb read as the asked person's)."""
        return [(i, naive_effect(e)) for i, e in enumerate(self.events) if self.effect(e) is None]


NO_CHANGE = ("+", 0)
"""The computation of a step whose sentence changes nothing for the asked person."""


def naive_effect(e: StoryEvent) -> tuple[str, int]:
    """The change an event's verb suggests, read as if it were about the asked person's item."""
    if e.kind == "double":
        return ("*", 2)
    return ("+" if e.kind in ("gain", "get") else "-", e.n)


def step_text(problem: StoryProblem, event: StoryEvent, a: int, op: str, b: int, c: int) -> str:
    """A step body: the event's sentence, then its one computation."""
    return f" {problem.sentence(event)[:-1]}, so {a} {op} {b} = {c}."


def solution(problem: StoryProblem) -> str:
    """The correct worked solution."""
    return _render(problem, _plan(problem), {})


def _plan(problem: StoryProblem) -> list[tuple[int, str, int]]:
    """The correct steps as ``(event index, op, operand)``."""
    return [(i, *change) for i, change in enumerate(problem.chain())]


def _render(
    problem: StoryProblem, plan: list[tuple[int, str, int]], overrides: dict[int, dict[str, int]]
) -> str:
    """Steps from a plan; ``overrides[j]`` replaces step j's left operand (``a``) or adds to its result
    (``delta``). Arithmetic is exact (``loose_op``) unless a ``delta`` says otherwise."""
    value = problem.start
    lines = []
    for j, (i, op, b) in enumerate(plan, 1):
        a = overrides.get(j, {}).get("a", value)
        c = loose_op(a, op, b) + overrides.get(j, {}).get("delta", 0)
        lines.append(f"Step {j}:" + step_text(problem, problem.events[i], a, op, b, c))
        value = c
    return "\n".join(lines) + "\n" + answer_line(value)


def effective_slip(problem: StoryProblem, k: int, kind: str) -> str:
    """The slip ``solution_with_slip`` makes at step k for ``kind``: the kind itself where the step can
    show it, else ``operation`` (or, on a distractor's step, ``distractor``).

    ``operation`` needs a step that changes the amount; ``distractor`` a step that does not; ``skip`` a
    later step whose change differs; ``repeat`` and ``early`` an earlier step; ``quantity`` a stale
    amount (an earlier one, or the other person's start) that differs from the current one.
    """
    n = problem.num_steps
    chain = problem.chain()
    no_change = chain[k - 1] == NO_CHANGE
    if kind in ("operation", "distractor"):
        return "distractor" if no_change else "operation"
    if kind == "skip" and (k >= n or chain[k] == chain[k - 1]):
        return effective_slip(problem, k, "operation")
    if kind in ("repeat", "early") and k < 2:
        return effective_slip(problem, k, "operation")
    if kind == "repeat" and chain[k - 2] == chain[k - 1]:
        return effective_slip(problem, k, "operation")
    if kind == "quantity" and not _stale(problem, k):
        return effective_slip(problem, k, "operation")
    return kind


def _stale(problem: StoryProblem, k: int) -> list[int]:
    """Amounts a careless reader may take for the amount before step k: an earlier one, the other
    person's start."""
    values = problem.values()
    stale = {*values[: k - 1], problem.starts[1 - problem.asked]} - {values[k - 1]}
    return sorted(v for v in stale if v > 0)


def solution_with_slip(problem: StoryProblem, k: int, kind: str, rng: random.Random) -> str:
    """A worked solution whose step ``k`` (1-based) makes slip ``kind``.

    Later steps carry on correctly from the amount reached (as a real solver would). A slip step k
    cannot show falls back to the wrong operation (``effective_slip``), which every step can show.
    """
    n = problem.num_steps
    if not 1 <= k <= n:
        raise ValueError(f"step {k} is outside 1..{n}")
    if kind not in ALL_SLIPS:
        raise ValueError(f"unknown slip {kind!r}; known: {', '.join(ALL_SLIPS)}")
    plan = _plan(problem)
    kind = effective_slip(problem, k, kind)
    i, op, b = plan[k - 1]
    if kind == "distractor":
        plan[k - 1] = (i, *naive_effect(problem.events[i]))
    elif kind == "operation":
        plan[k - 1] = (i, _WRONG_OP[op], b)
    elif kind == "skip":
        return _render(problem, plan[: k - 1] + plan[k:], {})
    elif kind == "repeat":
        return _render(problem, [*plan[: k - 1], plan[k - 2], *plan[k - 1 :]], {})
    elif kind == "early":
        return _render(problem, plan[: k - 1], {})
    elif kind == "quantity":
        return _render(problem, plan, {k: {"a": rng.choice(_stale(problem, k))}})
    elif kind == "arithmetic":
        return _render(problem, plan, {k: {"delta": rng.choice((-2, -1, 1, 2))}})
    return _render(problem, plan, {})


# -- sampling -------------------------------------------------------------------------------------


def _operands(spec: StorySpec, kind: str, actor_amount: int, other_amount: int) -> list[int]:
    """Numbers an event may use so both amounts stay in ``1..max_value``."""
    lo, hi, top = spec.min_operand, spec.max_operand, spec.max_value
    if kind == "gain":
        return list(range(lo, min(hi, top - actor_amount) + 1))
    if kind == "loss":
        return list(range(lo, min(hi, actor_amount - 1) + 1))
    if kind == "give":
        return list(range(lo, min(hi, actor_amount - 1, top - other_amount) + 1))
    if kind == "get":
        return list(range(lo, min(hi, other_amount - 1, top - actor_amount) + 1))
    return [2] if 2 * actor_amount <= top else []


def _try_event(
    rng: random.Random,
    spec: StorySpec,
    cur: list[int],
    kinds: list[str],
    actors: list[int],
    item: str,
    involve: int | None = None,
) -> StoryEvent | None:
    """A feasible event of one of ``kinds`` by one of ``actors``, drawn at random (None: none fits).

    With ``involve``, only events that change that person's amount (their own, or a transfer either way).
    """
    options = [
        (k, a) for k in kinds for a in actors if involve is None or a == involve or k in ("give", "get")
    ]
    rng.shuffle(options)
    for kind, actor in options:
        numbers = _operands(spec, kind, cur[actor], cur[1 - actor])
        if numbers:
            return StoryEvent(kind, actor, rng.choice(numbers), item, rng.randrange(len(SENTENCES[kind])))
    return None


def sample_story(rng: random.Random, spec: StorySpec) -> StoryProblem:
    """One random story: ``min_steps..max_steps`` events for the asked person, distractors among them."""
    solo = [k for k in spec.kinds if k in ("gain", "loss", "double")]
    countable = [k for k in spec.kinds if k != "double"]
    for _ in range(10_000):
        i, j = rng.sample(range(len(NAMES)), 2)
        people = (NAMES[i], NAMES[j])
        item, other_item = rng.sample(ITEMS, 2)
        asked = rng.randrange(2)
        cur = [rng.randint(spec.min_operand, spec.max_value - spec.min_operand) for _ in range(2)]
        starts = (cur[0], cur[1])
        slots = ["step"] * rng.randint(spec.min_steps, spec.max_steps)
        slots += ["noise"] * rng.randint(0, spec.max_distractors)
        rng.shuffle(slots)
        events: list[StoryEvent] = []
        for slot in slots:
            if slot == "step":  # a transfer changes both people: either may be its subject
                event = _try_event(rng, spec, cur, list(spec.kinds), [asked, 1 - asked], item, asked)
            elif solo and rng.random() < 0.5:  # the other person alone
                event = _try_event(rng, spec, cur, solo, [1 - asked], item)
            else:  # other items: nothing to track, any number will do
                kind = rng.choice(countable)
                actor = asked if kind in ("gain", "loss") else rng.randrange(2)
                n = rng.randint(spec.min_operand, spec.max_operand)
                event = StoryEvent(kind, actor, n, other_item, rng.randrange(len(SENTENCES[kind])))
            if event is None:
                break
            events.append(event)
            if event.item == item:
                for who in (0, 1):
                    eff = StoryProblem(people, item, starts, asked).effect(event, who)
                    if eff is not None:
                        cur[who] = apply_op(cur[who], *eff)
        else:
            problem = StoryProblem(people, item, starts, asked, tuple(events))
            if spec.min_steps <= len(problem.relevant()) <= spec.max_steps:
                return problem
    raise ValueError(f"10000 draws found no story for {spec}: widen the knobs")


# -- reading a question back ----------------------------------------------------------------------


class NotAStory(ValueError):
    """The text is not a question the story world writes."""


def parse_story(question: str) -> StoryProblem:
    """The ``StoryProblem`` a story question was written from (inverse of ``StoryProblem.question``)."""
    sentences = [s.strip() for s in re.findall(r"[^.?]+[.?]", question.strip())]
    if len(sentences) < 3:
        raise NotAStory(f"not a story-world question: {question[:80]!r}")
    first, second, ask = _START.match(sentences[0]), _START.match(sentences[1]), _ASK.match(sentences[-1])
    if not (first and second and ask) or not first.group(3) == second.group(3) == ask.group(1):
        raise NotAStory(f"not a story-world question: {question[:80]!r}")
    names = [first.group(1), second.group(1)]
    if names[0] == names[1] or ask.group(2) not in names:
        raise NotAStory(f"not a story-world question: {question[:80]!r}")
    pronouns = {n: p for n, p in NAMES}
    people = tuple((n, pronouns.get(n, "She")) for n in names)
    events = []
    for sentence in sentences[2:-1]:
        for pattern, kind, variant in PATTERNS:
            m = pattern.match(sentence)
            if m and m.group("s") in names:
                actor = names.index(m.group("s"))
                n = int(m.group("n")) if "n" in m.groupdict() else 2
                events.append(StoryEvent(kind, actor, n, m.group("item"), variant))
                break
        else:
            raise NotAStory(f"unknown event sentence {sentence!r}")
    return StoryProblem(
        people,  # type: ignore[arg-type]
        first.group(3),
        (int(first.group(2)), int(second.group(2))),
        names.index(ask.group(2)),
        tuple(events),
    )
