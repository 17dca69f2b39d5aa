"""The story world (``raystep.synth.story``), the verifier's taxonomy on it, and the gold steps."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from raystep.config import load_config
from raystep.steps import STEP_PRIMER, split_steps
from raystep.synth import verify
from raystep.synth.gold import ood_pairs, reference_continuation, reference_step
from raystep.synth.policy import completion_text, is_well_formed
from raystep.synth.story import (
    ALL_SLIPS,
    KINDS,
    SLIPS,
    StorySpec,
    effective_slip,
    parse_story,
    sample_story,
    solution_with_slip,
)
from raystep.synth.world import apply_op, generate, load_problems

SLIP_KIND = {
    "operation": "wrong_operation",
    "quantity": "wrong_quantity",
    "distractor": "distractor",
    "skip": "skipped_event",
    "repeat": "repeated_event",
    "early": "early_answer",
    "arithmetic": "arithmetic",
}

specs = st.builds(
    lambda lo, extra, distractors, kinds: StorySpec(
        min_steps=lo, max_steps=lo + extra, max_distractors=distractors, kinds=tuple(sorted(kinds))
    ),
    st.integers(1, 3),
    st.integers(0, 2),
    st.integers(0, 3),
    st.sets(st.sampled_from(KINDS), min_size=1).filter(lambda ks: ks - {"double"}),
)


def _amounts_by_hand(p) -> list[tuple[int, int]]:
    """Both people's amounts after every sentence, worked out from the sentences' words alone."""
    cur = list(p.starts)
    out = [tuple(cur)]
    for e in p.events:
        if e.item == p.item:
            other = 1 - e.actor
            if e.kind == "gain":
                cur[e.actor] += e.n
            elif e.kind == "loss":
                cur[e.actor] -= e.n
            elif e.kind == "double":
                cur[e.actor] *= 2
            elif e.kind == "give":
                cur[e.actor], cur[other] = cur[e.actor] - e.n, cur[other] + e.n
            else:
                cur[e.actor], cur[other] = cur[e.actor] + e.n, cur[other] - e.n
        out.append(tuple(cur))
    return out


@settings(max_examples=150, deadline=None)
@given(spec=specs, seed=st.integers(0, 10**6))
def test_stories_respect_their_knobs_and_read_back(spec, seed):
    p = sample_story(random.Random(seed), spec)
    changes = len(p.relevant())
    assert spec.min_steps <= changes <= spec.max_steps
    assert p.num_steps == len(p.events) and p.num_steps - changes <= spec.max_distractors
    assert all(e.kind in spec.kinds for e in p.events)
    by_hand = _amounts_by_hand(p)
    assert by_hand == p.amounts()
    assert all(1 <= a <= spec.max_value for pair in by_hand for a in pair)
    assert p.answer == by_hand[-1][p.asked]
    assert parse_story(p.question) == p
    reading = verify.read_question(p.question)
    assert reading.expected == p.values() and len(reading.events) == p.num_steps


@settings(max_examples=100, deadline=None)
@given(spec=specs, seed=st.integers(0, 10**6))
def test_solution_states_one_true_step_per_event_that_changes_the_asked_amount(spec, seed):
    p = sample_story(random.Random(seed), spec)
    text = p.solution()
    parts = split_steps(STEP_PRIMER + completion_text(text))
    assert len(parts) == p.num_steps
    values = p.values()
    by_hand = _amounts_by_hand(p)
    for k in range(1, len(parts) + 1):
        a, op, b, c = re.search(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)", parts.body(k)).groups()
        assert int(a) == values[k - 1] and apply_op(int(a), op, int(b)) == int(c) == values[k]
        assert int(c) == by_hand[k][p.asked]  # one step per sentence, in order
        assert parts.body(k).startswith(" " + p.sentence(p.events[k - 1])[:-1] + ", so ")
        if k - 1 not in p.relevant():
            assert (op, b) == ("+", "0")
    assert text.endswith(f"\\boxed{{{p.answer}}}.")
    assert is_well_formed(STEP_PRIMER + completion_text(text))
    assert verify.first_wrong_step(p.question, list(parts.steps)) == 0
    assert verify.diagnose(p.question, list(parts.steps), answer_correct=True).kind is None


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 10**6), data=st.data())
def test_taxonomy_names_an_injected_slip_at_its_step(seed, data):
    p = sample_story(random.Random(seed), StorySpec(max_distractors=3))
    k = data.draw(st.integers(1, p.num_steps), label="k")
    kind = data.draw(st.sampled_from(ALL_SLIPS), label="kind")
    made = effective_slip(p, k, kind)
    text = solution_with_slip(p, k, kind, random.Random(seed))
    steps = list(split_steps(text).steps)
    d = verify.diagnose(p.question, steps, answer_correct=False)
    # the slip's category is always found; an early answer shows on the step before the one it skips
    assert d.category == ("arithmetic" if made == "arithmetic" else "reasoning"), (text, d)
    sentences = [p.sentence(e) for e in p.events]
    # with no two sentences alike the step's prose says which event it read: exact kind and step
    assume(len(set(sentences)) == len(sentences))
    expected = {SLIP_KIND[made]}
    reading = verify.read_question(p.question)
    if made == "quantity" and reading.other[k - 1][1:] == reading.events[k - 1]:
        expected.add("wrong_person")  # the other person's amount, and the same change for both: either
    assert d.first_wrong_step == (k - 1 if made == "early" else k), text
    assert d.kind in expected, text


def test_slips_fall_back_only_where_the_step_cannot_show_them():
    p = next(
        q
        for q in generate(StorySpec(min_steps=3, max_steps=3, max_distractors=2), 300, 0)
        if len(q.distractors()) == 2 and len({c for c in q.chain()}) == q.num_steps - 1
    )
    noise = [i + 1 for i, _ in p.distractors()]
    change = [k for k in range(1, p.num_steps + 1) if k not in noise]
    assert p.slip_steps("distractor") == noise
    assert p.slip_steps("operation") == change
    assert effective_slip(p, noise[0], "operation") == "distractor"
    assert effective_slip(p, change[0], "distractor") == "operation"
    assert 1 not in p.slip_steps("repeat") and 1 not in p.slip_steps("early")
    assert p.num_steps not in p.slip_steps("skip")
    for kind in ALL_SLIPS:
        for k in p.slip_steps(kind):
            assert effective_slip(p, k, kind) == kind
    with pytest.raises(ValueError, match="unknown slip"):
        solution_with_slip(p, 1, "typo", random.Random(0))


def test_step_kinds_by_hand():
    q = (
        "Ann has 7 apples. Ben has 5 apples. Ann gives 2 apples to Ben. Ann buys 3 pens. "
        "Ben loses 4 apples. Ben finds 6 apples. How many apples does Ben have now?"
    )
    r = verify.read_question(q)
    assert r.start == 5 and r.events == [("+", 2), ("+", 0), ("-", 4), ("+", 6)]
    assert r.expected == [5, 7, 7, 3, 9] and r.naive == [None, ("+", 3), None, None]
    assert r.other == [(7, "-", 2), (5, "+", 0), (5, "+", 0), (5, "+", 0)]

    def kind(*steps: str) -> str:
        return verify.diagnose(q, list(split_steps("".join(steps)).steps), answer_correct=False).kind

    good1 = "Step 1: Ann gives 2 apples to Ben, so 5 + 2 = 7.\n"
    good2 = "Step 2: Ann buys 3 pens, so 7 + 0 = 7.\n"
    good3 = "Step 3: Ben loses 4 apples, so 7 - 4 = 3.\n"
    assert kind("Step 1: Ann gives 2 apples to Ben, so 5 - 2 = 3.\n") == "wrong_operation"
    assert kind("Step 1: Ann gives 2 apples to Ben, so 5 + 0 = 5.\n") == "wrong_operation"
    assert kind("Step 1: Ann gives 2 apples to Ben, so 5 + 2 = 8.\n") == "arithmetic"
    assert kind("Step 1: Ann gives 2 apples to Ben, so 7 + 2 = 9.\n") == "wrong_quantity"
    # Ann's amount and Ann's side of the transfer: the question's subject misread
    assert kind("Step 1: Ann gives 2 apples to Ben, so 7 - 2 = 5.\n") == "wrong_person"
    assert kind(good1, "Step 2: Ann buys 3 pens, so 5 + 0 = 5.\n") == "wrong_person"
    assert kind(good1, "Step 2: Ann buys 3 pens, so 7 + 3 = 10.\n") == "distractor"
    assert kind(good1, "Step 2: Ben loses 4 apples, so 7 - 4 = 3.\n") == "skipped_event"
    assert kind(good1, good2, "Step 3: Ann gives 2 apples to Ben, so 7 + 2 = 9.\n") == "repeated_event"
    assert kind(good1, good2, good3.rstrip() + "\nThe answer is \\boxed{3}.") == "early_answer"
    last = "Step 4: Ben finds 6 apples, so 3 + 6 = 9.\n"
    assert kind(good1, good2, good3, last + "The answer is \\boxed{8}.") == "wrong_answer"
    assert kind(good1, good2, good3, last) == "unfinished"
    assert kind(good1, "Step 2: I do not know.\n") == "no_computation"
    # prose silent: the computation alone says which event was read
    assert kind(good1, "Step 2: So 7 - 4 = 3.\n") == "skipped_event"
    assert kind(good1, good2, "Step 3: So 7 + 2 = 9.\n") == "repeated_event"
    assert verify.KINDS["arithmetic"] == "arithmetic" and verify.KINDS["distractor"] == "reasoning"


def test_tally_counts_kinds_and_categories_of_wrong_answers_only():
    diagnoses = [
        verify.Diagnosis(1, "arithmetic"),
        verify.Diagnosis(2, "wrong_operation"),
        verify.Diagnosis(2, "distractor"),
        verify.Diagnosis(0, None),
        verify.Diagnosis(3, "unfinished"),
    ]
    t = verify.tally(diagnoses)
    assert t["wrong"] == 4
    assert t["kinds"] == {"arithmetic": 1, "wrong_operation": 1, "distractor": 1, "unfinished": 1}
    assert t["categories"] == {"arithmetic": 1, "reasoning": 2, "format": 1, "other": 0}
    assert t["arithmetic_share"] == 0.25 and t["reasoning_share"] == 0.5


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), data=st.data())
def test_gold_steps_are_right_and_worded_unlike_the_policy(seed, data):
    p = sample_story(random.Random(seed), StorySpec())
    k = data.draw(st.integers(1, p.num_steps), label="k")
    reading = verify.read_question(p.question)
    own = split_steps(p.solution())
    gold_text = own.prefix(k) + reference_continuation(reading, k)
    steps = list(split_steps(gold_text).steps)
    assert verify.first_wrong_step(p.question, steps) == 0
    assert gold_text.endswith(f"\\boxed{{{p.answer}}}.")
    assert reference_step(reading, k).startswith(" Since ")
    assert reference_step(reading, k) != own.body(k)


def test_ood_pairs_keep_prefix_and_rejected_and_write_the_chosen_step():
    p = generate(StorySpec(min_steps=3, max_steps=3), 1, 0)[0]
    wrong = solution_with_slip(p, 2, "operation", random.Random(0))
    parts = split_steps(wrong)
    row = {
        "prompt": p.question,
        "initial_reason_steps": parts.prefix(2),
        "chosen": split_steps(p.solution()).body(2),
        "rejected": parts.body(2),
        "full_chosen": "x",
        "full_rejected": "y",
        "step_index": 2,
        "pair_id": "a",
    }
    out = ood_pairs([row, {**row, "step_index": 9, "pair_id": "b"}])
    assert len(out) == 1
    g = out[0]
    assert g["initial_reason_steps"] == row["initial_reason_steps"] and g["rejected"] == row["rejected"]
    assert g["chosen"] == reference_step(verify.read_question(p.question), 2) != row["chosen"]
    assert g["pair_id"] == "a-ood"
    steps = list(split_steps(g["initial_reason_steps"] + g["full_chosen"]).steps)
    assert verify.first_wrong_step(p.question, steps) == 0


def test_story_splits_include_valid_and_never_share_a_question():
    spec = StorySpec()
    questions = {
        s: {q.question for q in generate(spec, 300, 0, s)} for s in ("sft", "train", "valid", "test")
    }
    names = list(questions)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not questions[a] & questions[b], (a, b)


def test_config_selects_the_world_and_its_knobs():
    assert load_config(None, []).data.synth.world == "chain"  # the demo's world unless chosen
    story = ["data.source=synth", "data.synth.world=story", "data.split=valid", "data.limit=10"]
    cfg = load_config(None, [*story, "data.synth.max_distractors=0"])
    rows = load_problems(cfg.data)
    assert len(rows) == 10
    for r in rows:
        p = parse_story(r["question"])
        assert len(p.relevant()) == p.num_steps == r["level"]  # no distractors
    chain = load_config(None, ["data.source=synth", "data.synth.world=chain", "data.split=valid"])
    with pytest.raises(ValueError, match="must be one of test, train, sft, got .valid."):
        load_problems(chain.data)
    with pytest.raises(ValueError, match="hidden_size / num_heads"):
        load_config(None, ["data.synth.policy.hidden_size=64", "data.synth.policy.num_heads=4"])


def test_default_slips_are_reasoning_only():
    assert "arithmetic" not in SLIPS and set(SLIPS) < set(ALL_SLIPS)
    assert StorySpec().slips == SLIPS
