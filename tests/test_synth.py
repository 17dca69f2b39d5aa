"""The arithmetic world, its exact step verifier, and the tiny policy's warm-up."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystep.config import SynthPolicyConfig, load_config
from raystep.steps import STEP_PRIMER, split_steps
from raystep.synth import verify
from raystep.synth.policy import (
    PolicySettings,
    completion_text,
    ensure_policy,
    evaluate_policy,
    is_well_formed,
    prompt_for,
    settings_from_config,
    warmup_examples,
)
from raystep.synth.world import (
    MISTAKES,
    WorldSpec,
    apply_op,
    generate,
    load_problems,
    solution,
    solution_with_mistake,
)

SPEC = WorldSpec()
NUMBER = re.compile(r"\d+")


# ---- the world ---------------------------------------------------------------------------------------


def test_generation_is_deterministic_by_seed_and_split():
    a = [p.question for p in generate(SPEC, 40, seed=3, split="train")]
    b = [p.question for p in generate(SPEC, 40, seed=3, split="train")]
    c = [p.question for p in generate(SPEC, 40, seed=4, split="train")]
    assert a == b
    assert a != c
    assert len(set(a)) == 40


def test_splits_never_share_a_question():
    questions = {
        s: {p.question for p in generate(SPEC, 300, seed=0, split=s)} for s in ("sft", "train", "test")
    }
    assert not questions["sft"] & questions["train"]
    assert not questions["sft"] & questions["test"]
    assert not questions["train"] & questions["test"]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    min_steps=st.integers(1, 3),
    extra_steps=st.integers(0, 2),
    max_operand=st.integers(5, 40),
    ops=st.sets(st.sampled_from(["+", "-", "*", "/"]), min_size=1),
)
def test_knobs_bound_the_problems(seed, min_steps, extra_steps, max_operand, ops):
    knobs = dict(
        min_steps=min_steps,
        max_steps=min_steps + extra_steps,
        min_operand=2,
        max_operand=max_operand,
        max_value=4 * max_operand,
        operators=tuple(sorted(ops)),
    )
    if not _brute_force_chain_exists(**knobs):
        with pytest.raises(ValueError, match="no chain of"):
            WorldSpec(**knobs)
        return
    spec = WorldSpec(**knobs)
    for p in generate(spec, 5, seed=seed, split="train"):
        assert spec.min_steps <= len(p.events) <= spec.max_steps
        assert spec.min_operand <= p.start <= spec.max_operand
        for e in p.events:
            assert e.op in ops
            if e.op in "+-":
                assert spec.min_operand <= e.n <= spec.max_operand
            else:
                assert 2 <= e.n <= spec.max_factor
        assert all(1 <= v <= spec.max_value for v in p.values())


def _brute_force_chain_exists(min_steps, min_operand, max_operand, max_value, operators, **_) -> bool:
    """Depth-first over every (operator, operand) the knobs allow: an independent check of WorldSpec's."""

    def moves(v):
        for op in operators:
            for n in range(1, max_value + 1):
                if op in "+-" and not min_operand <= n <= max_operand:
                    continue
                if op in "*/" and not 2 <= n <= 3:
                    continue
                if op == "/" and v % n:
                    continue
                w = {"+": v + n, "-": v - n, "*": v * n, "/": v // n}[op]
                if 1 <= w <= max_value:
                    yield w

    def extend(v, left):
        return left == 0 or any(extend(w, left - 1) for w in set(moves(v)))

    return any(extend(v, min_steps) for v in range(min_operand, max_operand + 1))


def test_bad_knobs_are_clear_errors():
    with pytest.raises(ValueError, match="min_steps"):
        WorldSpec(min_steps=3, max_steps=2)
    with pytest.raises(ValueError, match="operators"):
        WorldSpec(operators=("^",))
    # Three halvings from at most 5 cannot stay >= 1: sampling would otherwise draw forever.
    with pytest.raises(ValueError, match="no chain of 3 steps"):
        WorldSpec(min_steps=3, max_steps=3, max_operand=5, max_value=20, operators=("/",))
    with pytest.raises(ValueError, match="no chain of 3 steps"):
        WorldSpec(min_steps=3, max_steps=3, max_operand=5, max_value=20, operators=("-",))


def test_solution_states_one_true_computation_per_step_and_the_answer():
    for p in generate(SPEC, 50, seed=1, split="test"):
        text = solution(p)
        parts = split_steps(STEP_PRIMER + completion_text(text))
        assert parts.style == "header"
        assert len(parts) == len(p.events)
        assert parts.preamble == "Let's think step by step.\n"
        for k in range(1, len(parts) + 1):
            a, op, b, c = re.search(r"(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)", parts.body(k)).groups()
            assert apply_op(int(a), op, int(b)) == int(c) == p.values()[k]
        assert text.endswith(f"The answer is \\boxed{{{p.answer}}}.")
        assert is_well_formed(STEP_PRIMER + completion_text(text))


def test_load_problems_reads_the_config_section():
    cfg = load_config(
        None,
        [
            "data.source=synth",
            "data.split=test",
            "data.limit=12",
            "data.synth.world=chain",
            "data.synth.seed=7",
            "data.synth.max_steps=2",
        ],
    )
    rows = load_problems(cfg.data)
    assert len(rows) == 12
    assert {r["dataset"] for r in rows} == {"synth"}
    assert len({r["id"] for r in rows}) == 12
    assert all(r["level"] <= 2 for r in rows)
    assert rows == load_problems(cfg.data)
    for r in rows:
        assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}.")
    with pytest.raises(ValueError, match="data.split"):
        load_problems(load_config(None, ["data.source=synth", "data.split=validation"]).data)


# ---- the exact verifier ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 100_000), data=st.data())
def test_first_wrong_step_finds_an_injected_mistake_exactly(seed, data):
    p = generate(WorldSpec(min_steps=1, max_steps=4, operators=("+", "-", "*", "/")), 1, seed=seed)[0]
    k = data.draw(st.integers(1, len(p.events)), label="k")
    kind = data.draw(st.sampled_from(MISTAKES), label="kind")
    text = solution_with_mistake(p, k, kind, random.Random(seed))
    steps = list(split_steps(text).steps)
    assert verify.first_wrong_step(p.question, steps) == k
    # bodies without their headers are judged the same way
    bodies = [split_steps(text).body(i) for i in range(1, len(steps) + 1)]
    assert verify.first_wrong_step(p.question, bodies) == k


def test_first_wrong_step_is_zero_on_correct_and_cut_off_solutions():
    for p in generate(SPEC, 50, seed=2):
        steps = list(split_steps(solution(p)).steps)
        assert verify.first_wrong_step(p.question, steps) == 0
        # a solution cut off before its answer has no wrong step yet (the grader marks it wrong)
        assert verify.first_wrong_step(p.question, steps[:-1]) == 0


def test_first_wrong_step_catches_premature_answers_extra_steps_and_missing_computations():
    p = generate(WorldSpec(min_steps=3, max_steps=3), 1, seed=5)[0]
    steps = list(split_steps(solution(p)).steps)
    v = p.values()
    early = steps[0].rstrip("\n") + f"\nThe answer is \\boxed{{{v[1]}}}."
    assert verify.first_wrong_step(p.question, [early]) == 1
    assert verify.first_wrong_step(p.question, steps[:2] + ["Step 3: I am not sure.\n"]) == 3
    extra = [*steps, f"Step 4: So {v[-1]} + 1 = {v[-1] + 1}.\n"]
    assert verify.first_wrong_step(p.question, extra) == 4
    wrong_final = steps[:-1] + [steps[-1].replace(f"\\boxed{{{v[-1]}}}", f"\\boxed{{{v[-1] + 1}}}")]
    assert verify.first_wrong_step(p.question, wrong_final) == 3
    # commutative operands in the other order are right
    swapped = steps[0]
    m = re.search(r"(\d+) ([+*]) (\d+) =", swapped)
    if m:
        swapped = swapped.replace(m.group(0), f"{m.group(3)} {m.group(2)} {m.group(1)} =")
        assert verify.first_wrong_step(p.question, [swapped, *steps[1:]]) == 0


def test_first_wrong_step_rejects_foreign_questions():
    with pytest.raises(verify.NotASynthQuestion):
        verify.first_wrong_step("Natalia sold clips to 48 of her friends in April.", ["Step 1: 48 / 2 = 24."])


# ---- the policy --------------------------------------------------------------------------------------


def test_warmup_data_mixes_correct_and_mistaken_solutions():
    s = PolicySettings(SynthPolicyConfig(num_examples=400, slip_rate=0.3))
    examples = warmup_examples(s)
    assert examples == warmup_examples(s)
    wrong = sum(1 for *_, w in examples if w)
    assert 0.2 < wrong / len(examples) < 0.4
    for prompt, completion, _ in examples[:20]:
        assert prompt.startswith("Question: ") and prompt.endswith("\nAnswer:")
        assert completion.startswith(" " + STEP_PRIMER)
        assert prompt + completion.split("Step 1:")[0] + "Step 1:" == prompt_for(prompt[10:-8], "plain")
        assert is_well_formed(completion[1:])


def test_chain_warmup_data_is_the_published_demos():
    """The chain world's warm-up data is byte for byte what the demo's published numbers were measured
    with (digest taken from main before the story world landed): the story world must not move it."""
    import hashlib

    examples = warmup_examples(PolicySettings(SynthPolicyConfig(num_examples=400)))
    digest = hashlib.sha256(json.dumps(examples).encode()).hexdigest()[:16]
    assert (digest, sum(1 for *_, w in examples if w)) == ("93c7383c2691c4e8", 132)


def test_policy_settings_are_the_runs_policy_section_and_any_change_retrains():
    base = load_config(None, ["data.source=synth"])
    settings = settings_from_config(base)
    assert settings.policy == base.data.synth.policy and settings.seed == base.data.synth.seed
    prints = {settings.fingerprint()}
    for item in (
        "data.synth.policy.steps=7",
        "data.synth.policy.torch_threads=2",
        "data.synth.seed=1",
        "data.synth.max_steps=4",
        "data.synth.world=story",
    ):
        prints.add(settings_from_config(load_config(None, ["data.source=synth", item])).fingerprint())
    assert len(prints) == 6
    assert json.dumps(settings.as_dict())  # what warmup.json records


@pytest.mark.slow
def test_short_warmup_learns_the_step_format_and_is_cached(tmp_path):
    quick = PolicySettings(SynthPolicyConfig(num_examples=800, steps=200))
    folder, stats = ensure_policy(tmp_path / "policy", quick, progress=False)
    assert stats["cached"] is False
    assert stats["final_loss"] < stats["loss_curve"][0] / 2
    for name in ("config.json", "model.safetensors", "tokenizer.json", "warmup.json"):
        assert (folder / name).exists(), name
    rows = load_problems(load_config(None, ["data.source=synth", "data.split=test", "data.limit=24"]).data)
    result = evaluate_policy(folder, rows, template="plain")
    assert result["well_formed"] > 0.5, result["responses"][:3]
    assert len(result["responses"]) == 24

    # the diagnosis, and the transfer table for a "trained" model that is the policy itself: the same
    # weights sampled with the same seed at the same failure points give the policy's own rates
    from raystep.synth import diagnose

    with contextlib.redirect_stdout(io.StringIO()) as out:
        diagnose.main(
            [
                str(folder),
                "--problems",
                "12",
                "--resample",
                "2",
                "--set",
                "data.synth.world=chain",
                "--trained",
                str(folder),
            ]
        )
    table = out.getvalue()
    assert "greedy accuracy" in table and "samples each, same seed" in table, table
    policy_row, trained_row = (
        line
        for line in table.splitlines()
        if line.startswith("| the policy") or line.startswith(f"| {folder}")
    )
    assert policy_row.split("|")[2:] == trained_row.split("|")[2:]

    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    again, stats2 = ensure_policy(folder, quick, progress=False)
    assert stats2["cached"] is True
    assert (again / "model.safetensors").stat().st_mtime_ns == mtime
    assert json.loads((folder / "warmup.json").read_text())["fingerprint"] == quick.fingerprint()


# ---- the demo and the ablation (their pure parts; the quick demo runs end to end below) -------------


def test_demo_settings_are_a_valid_run_config_and_user_overrides_win():
    from raystep.experiments.demo import SIZES, demo_overrides

    for size in SIZES:
        cfg = load_config(None, demo_overrides(size, 8399))
        assert cfg.data.source == "synth" and cfg.model.template == "plain"
        assert cfg.serve.host == "127.0.0.1" and cfg.train.use_gpu is False
        assert cfg.localize.methods == ["verifier", "rollout"]
    cfg = load_config(None, [*demo_overrides("quick", 8399), "train.beta=0.3"])
    assert cfg.train.beta == 0.3
    # the demo's world and lengths are the ones its published numbers were measured with
    assert cfg.data.synth.world == "chain" and cfg.data.synth.policy.steps == SIZES["quick"]["warmup_steps"]
    assert (cfg.sampling.max_new_tokens, cfg.rectify.max_new_tokens, cfg.eval.max_tokens) == (80, 80, 96)


def test_demo_rounds_run_apart_from_the_last_rounds_model_and_report_each_round(tmp_path):
    from raystep.experiments.demo import did_nothing, render_report, round_config

    cfg = load_config(None, ["data.source=synth", f"storage.root={tmp_path}", "name=d", "sampling.seed=5"])
    r3 = round_config(cfg, 3, str(tmp_path / "r2-model"))
    assert (r3.name, r3.model.path, r3.sampling.seed) == ("d-r3", str(tmp_path / "r2-model"), 2005)
    assert cfg.name == "d" and cfg.sampling.seed == 5  # the first round's config is left alone
    assert did_nothing("collect (round 2)", {"problems_todo": 0})
    assert not did_nothing("rectify (round 3)", {"samples_todo": 4})
    assert did_nothing("eval after (round 1)", {"resumed_all": True})
    assert did_nothing("train (round 2)", {"already_trained": True})

    def acc(a: float) -> dict:
        return {"accuracy": a, "ci95": [a - 0.1, a + 0.1], "problems": 60, "folder": "f"}

    report = {
        "before": acc(0.5),
        "after": acc(0.6),
        "compare": {"mcnemar_p": 0.2, "only_a": 1, "only_b": 7},
        "collect": {"samples": 96, "wrong": 40, "accuracy": 0.58},
        "localize": {},
        "pairs": 12,
        "seconds": {"train": 3.0},
        "resumed": [],
    }
    single = render_report(report)
    assert "round" not in single  # one round: the report reads as it always did
    rounds = [
        {"round": 0, **acc(0.5)},
        {"round": 1, "pairs": 12, **acc(0.55)},
        {"round": 2, "pairs": 9, **acc(0.6)},
    ]
    text = render_report({**report, "rounds": rounds})
    assert "| 0 (warm-up) |  | 50.0 (40.0-60.0) |" in text and "| 2 | 9 | 60.0 (50.0-70.0) |" in text


@pytest.mark.slow
def test_quick_demo_runs_the_whole_loop(tmp_path, ray_local, serve_starts):
    """warm-up -> collect -> localize -> rectify -> Ray Train + DeepSpeed -> Serve -> openai eval -> report,
    with one engine start: the trained model is loaded into the engine that served the policy."""
    from raystep.experiments.demo import demo_overrides, run

    cfg = load_config(None, [*demo_overrides("quick", 8397), f"storage.root={tmp_path}"])
    report = run(cfg, "quick", progress=False)
    assert serve_starts == [str(tmp_path / "demo-quick" / "policy")]
    folder = tmp_path / "demo-quick" / "demo"
    for name in ("report.md", "report.json", "overview.png"):
        assert (folder / name).exists(), name
    assert report["pairs"] > 0
    assert report["collect"]["samples"] == 24 * 4
    assert report["localize"]["localized"] == report["collect"]["wrong"]
    assert report["before"]["problems"] == report["after"]["problems"] == 60
    assert 0.0 < report["before"]["accuracy"] < 1.0
    for key in ("before", "after"):
        log = Path(report[key]["folder"]) / "samples.jsonl"
        assert sum(1 for line in log.read_text().splitlines() if line.strip()) == 60
    assert "accuracy before" in (folder / "report.md").read_text()
