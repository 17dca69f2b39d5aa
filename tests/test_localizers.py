"""Localizers: the judge against a FAKE OpenAI server (real HTTP), rollouts with bisection, verifiers,
combination rules and chosen-step verification."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fake_openai import DECISION_STYLES, STYLES, VAGUE_STYLES, FakeOpenAI, last_user_text, verdict_reply

from raystep.config import JudgeConfig
from raystep.stages.localizers import (
    CombinedLocalizer,
    labelled,
    load_verifier,
    register_verifier,
    verify_chosen,
    verify_chosen_detailed,
)
from raystep.stages.localizers.judge import (
    JudgeLocalizer,
    VerdictParseError,
    api_key_for,
    build_messages,
    parse_verdicts,
)
from raystep.stages.localizers.rollout import HFSampler, RolloutLocalizer, grading_fn, prompt_base
from raystep.stages.localizers.verifier import VerifierLocalizer


def broken_checker(question: str, steps: list[str]) -> int:
    if "boom" in question:
        raise RuntimeError("checker bug")
    return 99  # out of range for every row: a bug the localizer must catch


def sum_rows() -> list[dict[str, Any]]:
    return [
        {
            "sample_id": "a",
            "question": "q1",
            "answer": "6",
            "steps": ["Step 1: 1 + 2 = 3\n", "Step 2: 3 + 3 = 6\n"],
        },
        {
            "sample_id": "b",
            "question": "q2",
            "answer": "9",
            "steps": ["Step 1: 2 + 2 = 4\n", "Step 2: 4 + 4 = 9\n"],
        },
        {
            "sample_id": "c",
            "question": "q3",
            "answer": "5",
            "steps": ["Step 1: 2 + 2 = 5\n", "Step 2: 5 + 0 = 5\n"],
        },
    ]


# --- verdict parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["lines", "markdown", "json", "prose"])
@pytest.mark.parametrize("first_wrong", [0, 1, 2, 4, 6])
def test_parser_reads_each_reply_style(style: str, first_wrong: int) -> None:
    reply = verdict_reply(first_wrong, 6, style)
    step, labels = parse_verdicts(reply, 6)
    assert step == first_wrong, reply
    if first_wrong:
        assert labels[first_wrong] in ("incorrect", "neutral")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            "Step 1: correct\nStep 2: neutral - restates the question\nStep 3: correct",
            2,
        ),  # neutral is an error
        ("Step 1 is right. Step 2 is not correct: 3*4 is 12.", 2),
        ('{"steps": ["correct", "correct", "wrong"]}', 3),
        ("[1, 1, -1]", 3),
        ("Step 1: correct. The first incorrect step is Step 3.", 3),
        ("Step 1: \u2713\nStep 2: \u2717", 2),
        ("Step 1 correctly adds. Step 2 incorrectly doubles.", 2),
        ("Step 1: correct\nStep 2: correct\nStep 9: incorrect", 0),  # a step that does not exist is ignored
    ],
)
def test_parser_edge_cases(reply: str, expected: int) -> None:
    assert parse_verdicts(reply, 3)[0] == expected


def test_parser_rejects_a_reply_without_verdicts() -> None:
    with pytest.raises(VerdictParseError):
        parse_verdicts("I cannot help with that.", 3)


def test_prompt_has_problem_reference_and_numbered_steps() -> None:
    row = {"question": "What is 2+2?", "steps": ["Step 1: 2+2=4\n", "so the answer is 4"], "answer": "4"}
    messages = build_messages(row)
    user = messages[-1]["content"]
    assert "What is 2+2?" in user and "### Reference answer\n4" in user
    assert "Step 1: 2+2=4\nStep 2: so the answer is 4" in user
    assert "neutral" in user and "Stop at the first step you mark incorrect" in user
    assert "Reference answer" not in build_messages({"question": "q", "steps": ["a"]})[-1]["content"]
    structured = build_messages(row, structured=True)
    assert structured[1:] == messages[1:], "a structured request keeps the prompt's own text"
    assert (
        structured[0]["content"].startswith(messages[0]["content"])
        and '"first_wrong_step"' in structured[0]["content"]
    )


# --- the judge over HTTP ---------------------------------------------------------------------------------


def scripted_rows(n: int, num_steps: int = 4) -> list[dict[str, Any]]:
    """Rows whose question carries a marker and the first wrong step the fake judge will report."""
    return [
        {
            "sample_id": f"s{i:02d}",
            "question": f"[row-{i:02d}] first-wrong={i % (num_steps + 1)} How many apples?",
            "answer": "12",
            "steps": [f"Step {k}: we compute part {k}.\n" for k in range(1, num_steps + 1)],
        }
        for i in range(n)
    ]


def scripted_responder(body: dict[str, Any]) -> str:
    text = last_user_text(body)
    first = int(re.search(r"first-wrong=(\d+)", text).group(1))
    row = int(re.search(r"\[row-(\d+)\]", text).group(1))
    num_steps = len(re.findall(r"^Step \d+:", text, re.M))
    return verdict_reply(first, num_steps, STYLES[row % len(STYLES)])


def judge_config(url: str, **kw: Any) -> JudgeConfig:
    base = dict(
        base_url=url, model="fake-gpt", max_retries=3, backoff_s=0.01, timeout_s=5.0, requests_per_second=500
    )
    return JudgeConfig(**{**base, **kw})


def test_judge_survives_injected_faults_and_reruns_from_cache(tmp_path) -> None:
    rows = scripted_rows(12)
    faults = {
        "[row-00]": ["429", "429"],
        "[row-01]": ["500", "503"],
        "[row-02]": ["timeout"],
        "[row-03]": ["malformed", "nochoices"],
        "[row-04]": ["garbage"],
        "[row-05]": ["400"],  # not retryable: one attempt, then the error is kept
        "[row-06]": ["500"] * 4,  # more failures than attempts
    }
    with FakeOpenAI(scripted_responder, faults, timeout_sleep_s=4.0) as server:
        judge = JudgeLocalizer(
            judge_config(server.url, max_concurrency=4, timeout_s=1.5), cache_dir=tmp_path / "cache"
        )
        out = judge.locate(rows)
        assert [r["sample_id"] for r in out] == [r["sample_id"] for r in rows]  # none lost, order kept
        failed = {r["sample_id"]: r["error"] for r in out if r["error"]}
        assert set(failed) == {"s05", "s06"}
        assert "HTTP 400" in failed["s05"] and "after 1 attempt" in failed["s05"]
        assert "after 4 attempt" in failed["s06"]
        for row, res in zip(rows, out, strict=True):
            if not res["error"]:
                expected = int(re.search(r"first-wrong=(\d+)", row["question"]).group(1))
                assert res["first_wrong_step"] == expected
                assert res["localizer"] == "judge"
        evidence = {r["sample_id"]: json.loads(r["evidence"]) for r in out}
        assert evidence["s00"]["attempts"] == 3 and len(evidence["s00"]["retried_errors"]) == 2
        assert evidence["s02"]["attempts"] == 2 and "Timeout" in evidence["s02"]["retried_errors"][0]
        assert evidence["s06"]["errors"] and len(evidence["s06"]["errors"]) == 4
        # 10 rows served; attempts: 12 first tries + 2 + 2 + 1 + 2 + 1 + 3 retries
        assert judge.stats["requests"] == server.num_requests == 23
        assert judge.stats["retries"] == 11 and judge.stats["failed_rows"] == 2
        assert judge.stats["prompt_tokens"] > 0
        assert judge.stats["completion_tokens"] == sum(
            e["usage"]["completion_tokens"] for e in evidence.values() if "usage" in e
        )

        # rerun: the 10 answered rows come from the cache; only the 2 failed rows are asked again
        before = server.num_requests
        again = JudgeLocalizer(judge_config(server.url), cache_dir=tmp_path / "cache").locate(rows)
        assert server.num_requests - before == 2
        assert [r["first_wrong_step"] for r in again if r["sample_id"] not in failed] == [
            r["first_wrong_step"] for r in out if r["sample_id"] not in failed
        ]
        assert not any(r["error"] for r in again)
        # third run: every row is cached, zero requests
        before = server.num_requests
        third = JudgeLocalizer(judge_config(server.url), cache_dir=tmp_path / "cache")
        third.locate(rows)
        assert server.num_requests == before and third.stats["cache_hits"] == 12


def test_judge_bounds_concurrency_and_paces_requests(tmp_path) -> None:
    rows = scripted_rows(8)
    with FakeOpenAI(scripted_responder, latency_s=0.3) as server:
        JudgeLocalizer(judge_config(server.url, max_concurrency=2, cache=False)).locate(rows)
        assert server.num_requests == 8
        assert 1 < server.max_in_flight <= 2  # requests overlap, never above the bound
    with FakeOpenAI(scripted_responder) as server:
        JudgeLocalizer(
            judge_config(server.url, max_concurrency=8, requests_per_second=10.0, cache=False)
        ).locate(rows)
        times = sorted(r["t"] for r in server.log)
        assert times[-1] - times[0] >= 0.95 * 7 / 10.0  # 8 starts at most 10/s apart


def test_judge_rereads_unusable_cache_entries_and_survives_bad_rows(tmp_path) -> None:
    rows = scripted_rows(3)
    with FakeOpenAI(scripted_responder) as server:
        judge = JudgeLocalizer(judge_config(server.url), cache_dir=tmp_path / "cache")
        judge.locate(rows)
        assert server.num_requests == 3
        entry = judge.cache.key(judge.request_body(rows[1]))
        path = tmp_path / "cache" / entry[:2] / f"{entry}.json"
        path.write_text(json.dumps({"reply": "no verdict here"}))  # e.g. written by an older parser
        bad = {k: v for k, v in rows[2].items() if k != "question"}
        again = JudgeLocalizer(judge_config(server.url), cache_dir=tmp_path / "cache").locate(
            [*rows[:2], bad]
        )
        assert server.num_requests == 4  # only the unreadable entry is asked again
        assert again[1]["error"] is None and again[1]["first_wrong_step"] == 1
        assert "KeyError" in again[2]["error"] and again[0]["error"] is None
        assert "Step" in json.loads(path.read_text())["reply"]  # the entry was rewritten


def test_judge_key_comes_from_the_named_environment_variable(monkeypatch) -> None:
    monkeypatch.delenv("RAYSTEP_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$RAYSTEP_TEST_JUDGE_KEY"):
        api_key_for("https://api.example.com/v1", "RAYSTEP_TEST_JUDGE_KEY")
    assert (
        api_key_for("http://127.0.0.1:9/v1", "RAYSTEP_TEST_JUDGE_KEY") == "EMPTY"
    )  # local servers need none
    monkeypatch.setenv("RAYSTEP_TEST_JUDGE_KEY", "sk-from-env")
    assert api_key_for("https://api.example.com/v1", "RAYSTEP_TEST_JUDGE_KEY") == "sk-from-env"


# --- rollouts ------------------------------------------------------------------------------------------


class ScriptedSampler:
    """Continuations whose success depends only on how many steps the prefix holds.

    Steps carry markers ``<k>``; a prefix holding steps 1..j succeeds with rate ``alive_rate`` while
    j < first_wrong and ``dead_rate`` after (a known first error). Rates are exact: round(rate * n)
    of the n continuations box the gold answer.
    """

    def __init__(self, first_wrong: dict[str, int], alive_rate: float = 0.75, dead_rate: float = 0.0):
        self.first_wrong = first_wrong
        self.alive_rate = alive_rate
        self.dead_rate = dead_rate
        self.calls: list[int] = []

    def sample(self, prompts: list[str], n: int, sampling: dict[str, Any]) -> list[list[str]]:
        self.calls.append(len(prompts) * n)
        out = []
        for prompt in prompts:
            row = re.search(r"\[(r\d+)\]", prompt).group(1)
            j = len(re.findall(r"<\d+>", prompt))
            rate = self.alive_rate if j < self.first_wrong[row] else self.dead_rate
            good = round(rate * n)
            out.append(
                [" so the answer is \\boxed{42}."] * good + [" so the answer is \\boxed{7}."] * (n - good)
            )
        return out


def rollout_rows(cases: list[tuple[int, int]]) -> list[dict[str, Any]]:
    rows = []
    for i, (num_steps, _) in enumerate(cases):
        steps = [f"Step {k}: compute <{k}>.\n" for k in range(1, num_steps + 1)]
        prompt = f"Question [r{i}]: what is six times seven?\nAnswer: "
        rows.append(
            {
                "sample_id": f"r{i}",
                "question": "six times seven",
                "answer": "42",
                "prompt": prompt,
                "response": "".join(steps),
                "steps": steps,
            }
        )
    return rows


@pytest.fixture(scope="module")
def grader():
    grade, close = grading_fn(workers=1)
    yield grade
    close()


CASES = [(s, k) for s in (1, 2, 3, 5, 8, 13) for k in sorted({1, (s + 1) // 2, s})]

# Worst-case probes for S steps, worked out by hand. Bisection keeps lo = 0 alive and hi = S dead and
# probes (lo + hi) // 2 until hi = lo + 1; the worst case (k = S: every probe alive) probes
# S=2: 1 | S=3: 1, 2 | S=5: 2, 3, 4 | S=8: 4, 6, 7 | S=13: 6, 9, 11, 12 (ceil(log2 S)); a linear scan
# probes 1 .. S-1. One step needs no probe (j = 0 alive, j = 1 dead).
MAX_PROBES = {
    True: {1: 0, 2: 1, 3: 2, 5: 3, 8: 3, 13: 4},
    False: {1: 0, 2: 1, 3: 2, 5: 4, 8: 7, 13: 12},
}


@pytest.mark.parametrize("bisect", [True, False])
def test_rollout_finds_the_known_first_error_within_the_bound(grader, bisect: bool) -> None:
    rows = rollout_rows(CASES)
    sampler = ScriptedSampler({f"r{i}": k for i, (_, k) in enumerate(CASES)})
    loc = RolloutLocalizer(sampler, grader, num_rollouts=4, bisect=bisect)
    out = loc.locate(rows)
    total = 0
    worst: dict[int, int] = {}
    for (num_steps, k), res in zip(CASES, out, strict=True):
        assert res["error"] is None
        assert res["first_wrong_step"] == k, (num_steps, k, res["evidence"])
        ev = json.loads(res["evidence"])
        bound = MAX_PROBES[bisect][num_steps]
        assert RolloutLocalizer.max_probes(num_steps, bisect) == bound
        assert len(ev["probes"]) <= bound
        worst[num_steps] = max(worst.get(num_steps, 0), len(ev["probes"]))
        assert ev["rollouts"] == 4 * len(ev["probes"]) <= 4 * bound
        for probe in ev["probes"]:  # every probe recorded with its measured rate
            assert probe["n"] == 4 and probe["rate"] == (0.75 if probe["step"] < k else 0.0)
        total += ev["rollouts"]
    assert loc.stats["rollouts"] == total == sum(sampler.calls)
    assert worst == MAX_PROBES[bisect]  # k = S reaches the bound: it is tight, not just an upper limit


def test_bisection_spends_fewer_rollouts_than_a_linear_scan(grader) -> None:
    cases = [(13, k) for k in range(8, 14)]
    rows = rollout_rows(cases)
    truth = {f"r{i}": k for i, (_, k) in enumerate(cases)}
    spent = {}
    for bisect in (True, False):
        loc = RolloutLocalizer(ScriptedSampler(truth), grader, num_rollouts=4, bisect=bisect)
        assert [r["first_wrong_step"] for r in loc.locate(rows)] == [k for _, k in cases]
        spent[bisect] = loc.stats["rollouts"]
    assert spent[True] <= 4 * 4 * len(cases) < spent[False]


def test_rollout_threshold_treats_rare_success_as_dead(grader) -> None:
    cases = [(8, 3), (8, 6)]
    sampler = ScriptedSampler({"r0": 3, "r1": 6}, alive_rate=0.75, dead_rate=0.25)
    loose = RolloutLocalizer(sampler, grader, num_rollouts=4, threshold=0.3).locate(rollout_rows(cases))
    assert [r["first_wrong_step"] for r in loose] == [3, 6]
    strict = RolloutLocalizer(sampler, grader, num_rollouts=4, threshold=0.0).locate(rollout_rows(cases))
    assert [r["first_wrong_step"] for r in strict] == [8, 8]  # 25% success is alive at threshold 0


def test_rollout_failures_and_unusable_rows_keep_their_error(grader) -> None:
    class Broken:
        def sample(self, prompts, n, sampling):
            raise RuntimeError("engine down")

    rows = rollout_rows([(4, 2), (3, 1)])
    rows.append({**rows[0], "sample_id": "no-gold", "answer": ""})
    out = RolloutLocalizer(Broken(), grader, num_rollouts=2).locate(rows)
    assert [r["sample_id"] for r in out] == ["r0", "r1", "no-gold"]
    assert "engine down" in out[0]["error"] and "engine down" in out[1]["error"]
    assert "gold answer" in out[2]["error"]


def test_prefixes_of_collect_rows_continue_what_the_model_saw() -> None:
    from raystep import steps

    prompt = steps.build_prompt("plain", "What is 2+3?", steps.STEP_PRIMER)
    generated = " 2 + 3 = 5.\nStep 2: The answer is \\boxed{5}."
    response = steps.STEP_PRIMER + generated  # collect's response starts with the primer
    row = {"prompt": prompt, "response": response, "steps": list(steps.split_steps(response).steps)}
    base = prompt_base(row)
    assert base + "".join(row["steps"]) == prompt + generated
    assert base + row["steps"][0] == prompt + " 2 + 3 = 5.\n"
    no_prompt = prompt_base({"question": "What is 2+3?", "steps": ["x"]}, template="plain")
    assert no_prompt == steps.build_prompt("plain", "What is 2+3?")


@pytest.mark.slow
def test_hf_sampler_draws_n_reproducible_continuations(tiny_model) -> None:
    from raystep.engines.hf import HFGenerator

    sampler = HFSampler(HFGenerator(str(tiny_model), batch_size=8))
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6, "seed": 3}
    first = sampler.sample(["Step 1: 2 + 3 = 5\n", "Question: 7"], 3, sampling)
    assert [len(c) for c in first] == [3, 3]
    assert sampler.sample(["Step 1: 2 + 3 = 5\n", "Question: 7"], 3, sampling) == first
    assert len(set(first[0])) > 1  # different seeds per continuation


# --- verifiers -------------------------------------------------------------------------------------------


def test_registered_verifier_is_exact_and_bugs_become_row_errors() -> None:
    register_verifier("test-sums", "checkers:sum_checker")
    out = VerifierLocalizer("test-sums").locate(sum_rows())
    assert [r["first_wrong_step"] for r in out] == [0, 2, 1]
    assert all(r["error"] is None and r["localizer"] == "verifier" for r in out)
    rows = [{**sum_rows()[0], "question": "boom"}, sum_rows()[1]]
    broken = VerifierLocalizer("test_localizers:broken_checker").locate(rows)  # direct import path
    assert "checker bug" in broken[0]["error"] and "outside 0..2" in broken[1]["error"]


def test_verifier_names_are_checked() -> None:
    assert callable(load_verifier("arithmetic"))  # the arithmetic world's checker is registered
    with pytest.raises(ValueError, match="unknown verifier"):
        load_verifier("no-such-verifier")
    with pytest.raises(ValueError, match="cannot import"):
        load_verifier("no_such_module_xyz:f")


# --- combination ---------------------------------------------------------------------------------------


class Fixed:
    def __init__(self, name: str, steps: list[int | None]):
        self.name, self.steps = name, steps

    def locate(self, rows):
        return [
            labelled(r, self.name, s or 0, {"fixed": True}, None if s is not None else "down")
            for r, s in zip(rows, self.steps, strict=True)
        ]


def test_combination_rules() -> None:
    rows = [{"sample_id": str(i), "question": "q", "steps": ["a", "b", "c"]} for i in range(4)]
    a = Fixed("a", [1, 2, None, 3])
    b = Fixed("b", [1, 3, 2, None])
    c = Fixed("c", [2, 3, 2, 1])
    first = CombinedLocalizer([a, b], "first").locate(rows)
    assert [r["first_wrong_step"] for r in first] == [1, 2, 2, 3] and not any(r["error"] for r in first)
    agree = CombinedLocalizer([a, b], "agree").locate(rows)
    assert agree[0]["first_wrong_step"] == 1 and agree[0]["error"] is None
    assert all(r["error"].startswith("disagree") for r in agree[1:])
    vote = CombinedLocalizer([a, b, c], "vote").locate(rows)
    assert [r["first_wrong_step"] for r in vote] == [1, 3, 2, 1]  # row 3: 3 vs 1 tie -> the earlier step
    ev = json.loads(vote[1]["evidence"])
    assert ev["votes"] == {"2": 1, "3": 2} and set(ev["methods"]) == {"a", "b", "c"}
    down = CombinedLocalizer([Fixed("a", [None]), Fixed("b", [None])], "first").locate(rows[:1])
    assert "a: down" in down[0]["error"] and "b: down" in down[0]["error"]


# --- chosen-step verification -------------------------------------------------------------------------


def test_verify_chosen_drops_lucky_chosen_steps() -> None:
    loc = VerifierLocalizer("checkers:sum_checker")
    prefix = ["Step 1: 1 + 1 = 2\n"]
    candidates = [
        # chosen step 2 right, continuation right: kept
        {
            "question": "q",
            "answer": "7",
            "step_index": 2,
            "steps": [*prefix, "Step 2: 2 + 2 = 4\n", "Step 3: 4 + 3 = 7\n"],
        },
        # chosen step 2 wrong, yet the continuation lands on the gold: dropped
        {
            "question": "q",
            "answer": "7",
            "step_index": 2,
            "steps": [*prefix, "Step 2: 2 + 2 = 5\n", "Step 3: 5 + 2 = 7\n"],
        },
        # a slip after the chosen step does not condemn the chosen step: kept
        {
            "question": "q",
            "answer": "7",
            "step_index": 2,
            "steps": [*prefix, "Step 2: 2 + 2 = 4\n", "Step 3: 4 + 4 = 7\n"],
        },
        # given as a public-schema pair (prefix ending in "Step 2:" + full_chosen)
        {
            "question": "q",
            "answer": "7",
            "step_index": 2,
            "initial_reason_steps": "Step 1: 1 + 1 = 2\nStep 2:",
            "full_chosen": " 2 + 3 = 4\nStep 3: 4 + 3 = 7",
        },
    ]
    kept, removed = verify_chosen(candidates, loc)
    assert removed == 2 and [c["steps"][1] for c in kept] == ["Step 2: 2 + 2 = 4\n", "Step 2: 2 + 2 = 4\n"]
    detail = verify_chosen_detailed(candidates, loc)
    assert [r["chosen_first_wrong_step"] for r in detail.removed_rows] == [2, 2]
    kept_on_error, removed = verify_chosen(candidates[:2], Fixed("down", [None, None]))
    assert removed == 0 and len(kept_on_error) == 2  # a judge outage keeps candidates, it does not drop them


def test_rectify_hook_verify_pairs_checks_prefix_plus_full_chosen(tmp_path) -> None:
    from raystep.config import load_config
    from raystep.stages.localizers.chosen import verify_pairs

    config = load_config(
        None,
        [
            f"storage.root={tmp_path}",
            "localize.methods=[verifier]",
            "localize.verifier=checkers:sum_checker",
        ],
    )
    prefix = "Let's think step by step.\nStep 1: 1 + 1 = 2\nStep 2:"  # rectify's initial_reason_steps
    pairs = [
        {
            "prompt": "q",
            "answer": "7",
            "step_index": 2,
            "initial_reason_steps": prefix,
            "chosen": " 2 + 2 = 4\n",
            "rejected": " 2 + 2 = 5\n",
            "full_chosen": " 2 + 2 = 4\nStep 3: 4 + 3 = 7\n",
            "pair_id": "good",
        },
        {
            "prompt": "q",
            "answer": "7",
            "step_index": 2,
            "initial_reason_steps": prefix,
            "chosen": " 2 + 3 = 4\n",
            "rejected": " 2 + 2 = 5\n",
            "full_chosen": " 2 + 3 = 4\nStep 3: 4 + 3 = 7\n",
            "pair_id": "lucky",
        },
    ]
    kept, removed, errors = verify_pairs(pairs, config)
    assert removed == 1 and errors == 0 and kept == [pairs[0]]  # the very pair objects come back, unchanged


def test_vllm_rollout_sampling_params() -> None:
    """The SamplingParams a vLLM rollout asks for (the rollouts themselves run on vLLM's CPU build in
    tests/test_vllm_pipeline.py)."""
    from raystep.stages.localizers.rollout import vllm_sampling_kwargs

    sampling = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256, "seed": 5, "stop": []}
    assert vllm_sampling_kwargs(sampling, 8) == {
        "n": 8,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 256,
        "seed": 5,
        "stop": None,
    }


# --- prompts, structured verdicts and unreadable replies over HTTP -----------------------------------------

MIXED_STYLES = [*STYLES, *DECISION_STYLES, *VAGUE_STYLES]


def mixed_rows(n: int, num_steps: int = 4) -> list[dict[str, Any]]:
    """Scripted rows with a reference solution; row i is answered in ``MIXED_STYLES[i % len]``."""
    return [
        {
            **row,
            "solution": f"Reference worked solution {i}.\n\nThe answer is 12.",
            "style": MIXED_STYLES[i % len(MIXED_STYLES)],
        }
        for i, row in enumerate(scripted_rows(n, num_steps))
    ]


def mixed_responder(body: dict[str, Any]) -> str:
    """Answers raystep's prompt and the paper's prompt (numbered or not), in the row's style."""
    text = last_user_text(body)
    first = int(re.search(r"first-wrong=(\d+)", text).group(1))
    row = int(re.search(r"\[row-(\d+)\]", text).group(1))
    if "### Correct solution:" in text:  # the paper's prompt: steps follow "### Incorrect answer:"
        num_steps = len(re.findall(r"^Step \d+:", text.split("### Incorrect answer:")[1], re.M))
    else:
        num_steps = len(re.findall(r"^Step \d+:", text, re.M))
    return verdict_reply(first, num_steps, MIXED_STYLES[row % len(MIXED_STYLES)])


@pytest.mark.parametrize("prompt", ["stepdpo", "raystep"])
def test_structured_replies_always_parse_and_text_replies_are_counted(tmp_path, prompt: str) -> None:
    """The fake words its verdicts in every style; asked for schema JSON it states the same labels as JSON."""
    rows = mixed_rows(3 * len(MIXED_STYLES))
    vague = [r for r in rows if r["style"] in VAGUE_STYLES]
    truth = {r["sample_id"]: int(re.search(r"first-wrong=(\d+)", r["question"]).group(1)) for r in rows}
    with FakeOpenAI(mixed_responder) as server:
        counts = {}
        for mode in ("json_schema", "off"):
            judge = JudgeLocalizer(judge_config(server.url, prompt=prompt, structured=mode, max_retries=0))
            out = judge.locate(rows)
            counts[mode] = judge.stats["unparsed_replies"]
            by_id = {r["sample_id"]: r for r in out}
            for row in rows:
                res, ev = by_id[row["sample_id"]], json.loads(by_id[row["sample_id"]]["evidence"])
                assert ev["prompt"] == prompt and ev["mode"] == ("json_schema" if mode != "off" else "text")
                if mode == "off" and row["style"] in VAGUE_STYLES:
                    assert "VerdictParseError" in res["error"] and ev["parse_failures"] == 1
                    continue
                assert res["error"] is None and res["first_wrong_step"] == truth[row["sample_id"]], ev
                expected_reader = (
                    "schema"
                    if mode != "off"
                    else ("final_decision" if row["style"] in DECISION_STYLES else "text")
                )
                assert ev["parsed_by"] == expected_reader and ev["parse_failures"] == 0
        schema_requests = [r["schema"] for r in server.log]
        assert schema_requests == [True] * len(rows) + [False] * len(rows)
    assert counts == {"json_schema": 0, "off": len(vague)} and len(vague) == 6


def test_auto_falls_back_to_text_when_the_server_refuses_the_schema(tmp_path) -> None:
    rows = [r for r in mixed_rows(len(MIXED_STYLES)) if r["style"] not in VAGUE_STYLES]
    with FakeOpenAI(mixed_responder, structured_outputs=False) as server:
        judge = JudgeLocalizer(judge_config(server.url, structured="auto", max_concurrency=1, max_retries=0))
        out = judge.locate(rows)
        assert not any(r["error"] for r in out)
        assert [json.loads(r["evidence"])["mode"] for r in out] == ["text"] * len(rows)
        assert judge.stats["structured_refused"] == 1 and judge.structured is False
        assert [r["schema"] for r in server.log] == [True] + [False] * len(rows)  # one refusal, then text
        assert [r["outcome"] for r in server.log].count("ok") == len(rows) + 1
    with FakeOpenAI(mixed_responder, structured_outputs=False) as server:
        strict = JudgeLocalizer(judge_config(server.url, structured="json_schema", max_retries=1))
        failed = strict.locate(rows[:2])
        assert all("HTTP 400" in r["error"] and "after 1 attempt" in r["error"] for r in failed)
        assert server.num_requests == 2  # a 400 is not retried, and json_schema never falls back


def test_structured_reply_from_a_server_that_ignores_the_schema_falls_back_to_text() -> None:
    rows = scripted_rows(4)

    def plain(body: dict[str, Any]) -> str:  # a plain string: the fake answers in free text
        return str(scripted_responder(body))

    with FakeOpenAI(plain) as server:
        out = JudgeLocalizer(judge_config(server.url, structured="json_schema")).locate(rows)
        assert all(r["error"] is None for r in out)
        assert {json.loads(r["evidence"])["parsed_by"] for r in out} == {"text"}
        assert [r["first_wrong_step"] for r in out] == [0, 1, 2, 3]


def test_stepdpo_judge_sends_the_papers_message_and_reads_its_decision(tmp_path) -> None:
    rows = mixed_rows(len(DECISION_STYLES))
    with FakeOpenAI(mixed_responder) as server:
        judge = JudgeLocalizer(judge_config(server.url, prompt="stepdpo", structured="off"))
        out = judge.locate(rows)
        missing = judge.locate([{k: v for k, v in rows[0].items() if k != "solution"}])
        assert server.num_requests == len(rows)  # the row without a solution made no request
    assert "reference solution" in missing[0]["error"] and judge.stats["failed_rows"] == 1
    for row, res in zip(rows, out, strict=True):
        assert res["error"] is None
        assert res["first_wrong_step"] == int(re.search(r"first-wrong=(\d+)", row["question"]).group(1))
    (sent,) = [r["text"] for r in server.log if "[row-00]" in r["text"]]
    assert (
        sent.startswith("### Problem:\n[row-00]")
        and "### Correct solution:\nReference worked solution 0.\n" in sent
    )


def test_verify_pairs_gives_the_paper_judge_the_reference_solution_from_the_run(tmp_path) -> None:
    """Pairs carry no reference solution; the stepdpo judge gets it from the run's problems/."""
    from checkers import sum_checker

    from raystep.config import load_config
    from raystep.records import write_parquet
    from raystep.stages.localizers.chosen import verify_pairs

    def responder(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        assert "### Correct solution:\n1 + 1 = 2, 2 + 2 = 4, 4 + 3 = 7.\n" in text
        answer = text.split("### Incorrect answer:\n")[1].split("\n\n---")[0]
        steps = re.findall(r"^Step \d+:(.*)$", answer, re.M)
        return verdict_reply(sum_checker("", steps), len(steps), "final")

    with FakeOpenAI(responder) as server:
        config = load_config(
            None,
            [
                f"storage.root={tmp_path}",
                "localize.methods=[judge]",
                "localize.judge.prompt=stepdpo",
                "localize.judge.structured=off",
                f"localize.judge.base_url={server.url}",
                "localize.judge.requests_per_second=500",
            ],
        )
        problem = {
            "id": "p0",
            "dataset": "sums",
            "question": "q",
            "answer": "7",
            "solution": "1 + 1 = 2, 2 + 2 = 4, 4 + 3 = 7.",
        }
        write_parquet(tmp_path / config.name / "problems" / "part-00000.parquet", [problem])
        prefix = "Let's think step by step.\nStep 1: 1 + 1 = 2\nStep 2:"
        pairs = [
            {
                "prompt": "q",
                "answer": "7",
                "step_index": 2,
                "problem_id": "p0",
                "initial_reason_steps": prefix,
            }
            | {
                "chosen": c,
                "rejected": " 2 + 2 = 5\n",
                "full_chosen": c + "Step 3: 4 + 3 = 7\n",
                "pair_id": n,
            }
            for n, c in (("good", " 2 + 2 = 4\n"), ("lucky", " 2 + 3 = 4\n"))
        ]
        kept, removed, errors = verify_pairs(pairs, config)
        assert server.num_requests == 2 and errors == 0
        assert removed == 1 and [p["pair_id"] for p in kept] == ["good"]
