"""A small run folder for the report's tests, written by the stages' own writers in a few seconds.

Problems come from the arithmetic world; each has one correct sample and wrong ones with a slip at a
known step (the world's own mistake generator), one sample whose generation failed, graded by their
boxed answer. Localization is real: the judge localizer (against the FAKE OpenAI server over HTTP)
and the exact arithmetic verifier, combined by ``localize.combine=first``, with one judge that
disagrees, one that fails for good, and one reply that carries markup. Rectify's own
``build_candidates`` / ``select_pairs`` / ``export_jsonl`` make the pairs from continuations cut from
the world's correct solutions (one of them carries ``<script>`` and ``onerror=``). Training's step
log and reference table and two evaluations with their ``raystep compare`` are written by the
training and evaluation modules' writers. What is not run here is a model: generation, the
DPO updates and the endpoint are the other stages' tests.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from raystep import records, steps
from raystep.config import RunConfig, load_config
from raystep.evaluate.compare import compare
from raystep.evaluate.report import summarize as eval_summary
from raystep.evaluate.report import write_report
from raystep.runs import RunDir
from raystep.stages import collect, localize, rectify
from raystep.stages.localizers import build_localizer, close_localizer, locate_safely
from raystep.stages.shards import ShardSet
from raystep.synth import world
from raystep.synth.verify import first_wrong_step
from raystep.train.metrics import StepLog
from raystep.train.metrics import summarize as train_summary
from raystep.train.reference import write_reference

XSS_STEP = ' <script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> so'
"""Put into one chosen step: shown as text, it must never run."""
XSS_REPLY = '\n<img src=x onerror="window.__xss = 3"><script>window.__xss = 4</script>'
"""Appended to one judge reply."""
XSS_ANSWER = '<img src=x onerror="window.__xss = 5">'
"""Put into one evaluation answer."""

PREAMBLE = steps.STEP_PRIMER[: -len("Step 1:")]


def small_config(root: Path, judge_url: str, name: str = "small") -> RunConfig:
    return load_config(
        None,
        [
            f"name={name}",
            f"storage.root={root}",
            "model.path=policy-under-test",
            "data.source=synth",
            "data.split=train",
            "data.limit=10",
            "sampling.n=4",
            "localize.methods=[judge, verifier]",
            "localize.combine=first",
            "localize.verifier=arithmetic",
            f"localize.judge.base_url={judge_url}",
            "localize.judge.model=fake-judge",
            "localize.judge.backoff_s=0.01",
            "localize.judge.max_retries=1",
            "localize.judge.requests_per_second=500",
            "rectify.n=3",
            "rectify.max_pairs_per_sample=2",
            "train.epochs=1",
        ],
    )


def _problem_of(question: str, problems: list[world.Problem]) -> world.Problem:
    return next(p for p in problems if p.question == question)


def _sample(problem: dict[str, Any], index: int, solution: str, error: str | None = None) -> dict[str, Any]:
    response = PREAMBLE + solution
    pred = re.findall(r"\\boxed\{([^}]*)\}", response)
    return {
        **{k: problem.get(k) for k in collect.PROBLEM_KEYS},
        "sample_id": f"{problem['id']}-s{index}",
        "sample_index": index,
        "seed": 1000 + index,
        "prompt": steps.build_prompt("plain", problem["question"], steps.STEP_PRIMER),
        "response": response,
        "steps": list(steps.split_steps(response).steps),
        "pred": pred[-1] if pred else None,
        "correct": error is None and bool(pred) and pred[-1] == problem["answer"],
        "grade_status": "ok" if error is None else "error",
        "num_tokens": len(response.split()),
        "error": error,
        "finish_reason": "stop",
        "sampling": '{"temperature": 0.8}',
    }


def judge_responder(disagree: str, fail: str, markup: str):
    """The fake judge: the verifier's own step, except on the ``disagree`` question (one step
    earlier), ``fail`` (a non-retryable 400, set up through faults) and ``markup`` (reply with markup)."""
    from fake_openai import last_user_text, verdict_reply

    def respond(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        question = text.split("### Problem\n", 1)[1].split("\n", 1)[0]
        found = re.findall(r"^Step \d+: (.*)$", text, re.M)
        k = first_wrong_step(question, found)
        if question == disagree and k > 1:
            k -= 1
        reply = verdict_reply(k, len(found))
        return reply + XSS_REPLY if question == markup else reply

    return respond


def build_small_run(root: Path, fake_openai_cls: Any) -> dict[str, Any]:
    """Write the run folder; returns what the tests check the page against."""
    rng = random.Random(7)
    # same problems as config.data would load, kept as objects to make mistakes with
    probe = load_config(None, ["data.source=synth", "data.split=train", "data.limit=10"])
    objs = world.generate(world.spec_from_config(probe.data), 10, probe.data.synth.seed, "train")
    questions = [p.question for p in objs]
    disagree, fail, markup = questions[1], questions[2], questions[0]  # pairs of problem 0 carry markup

    from fake_openai import FakeOpenAI

    with FakeOpenAI(judge_responder(disagree, fail, markup), {fail[:60]: ["400"] * 20}) as server:
        config = small_config(root, server.url)
        run = RunDir.from_config(config)
        run.record_config(config)
        problems = collect.load_run_problems(config, run)  # the real problems/ writer
        assert [p["question"] for p in problems] == questions

        # collect: one correct sample, wrong ones with a slip at a known step, one failed generation
        samples = []
        for j, (p, obj) in enumerate(zip(problems, objs, strict=True)):
            n_steps = len(obj.events)
            samples.append(_sample(p, 0, world.solution(obj)))
            for s in (1, 2):
                k = (j + s) % n_steps + 1
                kind = world.MISTAKES[(j + s) % len(world.MISTAKES)]
                samples.append(_sample(p, s, world.solution_with_mistake(obj, k, kind, rng)))
            if j == 4:
                samples.append(_sample(p, 3, "", error="generation failed: injected for the report test"))
            else:
                k = n_steps
                samples.append(_sample(p, 3, world.solution_with_mistake(obj, k, "arithmetic", rng)))
        shards = ShardSet(run.stage("samples"), schema=records.SAMPLE_FIELDS, kind="sample")
        for i in range(0, len(problems), 4):
            units = [p["id"] for p in problems[i : i + 4]]
            shards.write([r for r in samples if r["id"] in units], units)
        run.update_manifest("collect", status="done", seconds=1.5, **collect.summarize(samples))

        # localize: judge + verifier through the real localizers
        wrong, counts = localize.select_wrong(samples)
        localizer = build_localizer(config, cache_dir=str(run.stage("localized") / "judge-cache"))
        try:
            located = [localize.to_localized_row(r) for r in locate_safely(localizer, wrong)]
        finally:
            close_localizer(localizer)
        ShardSet(run.stage("localized"), schema=records.LOCALIZED_FIELDS).write(
            located, [r["sample_id"] for r in located]
        )
        run.update_manifest(
            "localize",
            status="done",
            seconds=2.25,
            **counts,
            methods=list(config.localize.methods),
            combine=config.localize.combine,
            **localize.summarize(located),
        )

    # rectify: continuations cut from the correct solution, through rectify's own choice of pairs
    by_question = {p.question: p for p in objs}
    units = [r for r in located if rectify.skip_reason(r) is None]
    pairs, all_conts = [], []
    xss_pair = None
    for u_index, unit in enumerate(units):
        obj = by_question[unit["question"]]
        prefix, _, _ = rectify.wrong_step(unit)
        k = int(unit["first_wrong_step"])
        right = PREAMBLE + world.solution(obj)
        conts = []
        for c in range(config.rectify.n):
            if c == 1 and k < len(obj.events):
                text = (PREAMBLE + world.solution_with_mistake(obj, k, "arithmetic", rng))[len(prefix) :]
            else:
                text = right[len(prefix) :]
                if c == 2:  # a second correct continuation, worded differently
                    text = text.replace(" so ", " which gives ", 1)
            if u_index == 0 and c == 0:
                text = text.replace(" so", XSS_STEP, 1)
            response = prefix + text
            conts.append(
                {
                    "sample_id": unit["sample_id"],
                    "continuation_index": c,
                    "seed": 77 + c,
                    "answer": unit["answer"],
                    "continuation": text,
                    "chosen": steps.first_step(text, k),
                    "response": response,
                    "correct": re.findall(r"\\boxed\{([^}]*)\}", response)[-1:] == [unit["answer"]],
                    "error": None,
                }
            )
        all_conts += conts
        candidates, _ = rectify.build_candidates(unit, conts, config)
        kept, _ = rectify.select_pairs(candidates, [], config)
        if u_index == 0:
            xss_pair = kept[0]["pair_id"]
        pairs += kept
    pair_shards = ShardSet(run.stage("pairs"), schema=records.PAIR_FIELDS, kind="pair")
    pair_shards.write(pairs, [u["sample_id"] for u in units])
    run.update_manifest(
        "rectify",
        status="done",
        seconds=3.5,
        localized=len(located),
        units=len(units),
        continuations=len(all_conts),
        continuations_correct=sum(c["correct"] for c in all_conts),
        pairs=len(pairs),
        samples_with_pairs=len({p["sample_id"] for p in pairs}),
        pairs_jsonl=rectify.export_jsonl(pairs, run.path / "pairs" / "pairs.jsonl"),
    )

    # train: the reference table (every pair but the last scored) and a step log
    exported = records.read_jsonl(run.path / "pairs" / "pairs.jsonl")
    scored = exported[:-1]
    table = {i: (-0.5 * len(r["chosen"]), -0.5 * len(r["rejected"]) - 1.0) for i, r in enumerate(scored)}
    write_reference(run.stage("train") / "reference.parquet", scored, table, {"model": "policy-under-test"})
    log = StepLog(run.stage("train"))
    log.start(0, 12)
    metric_rows = []
    for step in range(1, 13):
        row = {
            "step": step,
            "epoch": 0,
            "loss": 0.693 * 0.9**step,
            "rewards/chosen": 0.02 * step,
            "rewards/rejected": -0.03 * step,
            "rewards/margin": 0.05 * step,
            "rewards/accuracy": min(1.0, 0.4 + 0.05 * step),
            "pairs": 16,
            "tokens": 4000,
            "seconds": 2.0,
            "tokens_per_s": 2000.0 + 10 * step,
            "lr": 1e-4 * min(1.0, step / 2),
        }
        log.log(row)
        metric_rows.append(row)
    log.finish(12)
    run.update_manifest(
        "train",
        status="done",
        seconds=30.0,
        pairs=len(exported),
        total_steps=12,
        **train_summary(metric_rows),
    )

    # evaluate twice and compare (the demo's before / after), on held-out problems
    test = world.generate(world.spec_from_config(probe.data), 12, probe.data.synth.seed, "test")
    right_before = {0, 1, 2, 3, 4, 5}  # 6 of 12
    right_after = {0, 1, 2, 3, 6, 7, 8, 9}  # fixes 6..9, breaks 4 and 5
    folders = {}
    for name, right in (("before", right_before), ("after", right_after)):
        rows = []
        for i, obj in enumerate(test):
            text = world.solution(obj)
            if i not in right:  # a wrong final answer, certainly
                text = text.replace(f"\\boxed{{{obj.answer}}}", f"\\boxed{{{obj.answer + 1}}}")
            if name == "after" and i == 5:
                text = text + " " + XSS_ANSWER
            pred = re.findall(r"\\boxed\{([^}]*)\}", text)[-1]
            rows.append(
                {
                    "id": f"t{i:02d}",
                    "sample": 0,
                    "benchmark": "synth",
                    "dataset": "synth",
                    "subject": None,
                    "level": len(obj.events),
                    "question": obj.question,
                    "prompt": obj.question,
                    "gold": str(obj.answer),
                    "response": text,
                    "pred": pred,
                    "correct": pred == str(obj.answer),
                    "grade_status": "ok",
                    "finish_reason": "stop",
                    "error": None,
                }
            )
        folder = run.stage("eval") / name / "synth"
        records.write_jsonl(folder / "samples.jsonl", rows)
        write_report(folder, eval_summary(rows, {"benchmark": "synth", "model": name, "k": 1}))
        folders[name] = folder
    compare(folders["before"], folders["after"], out_dir=run.path / "demo" / "compare")

    manifest = run.read_manifest()
    return {
        "run": run.path,
        "manifest": manifest,
        "pairs": exported,
        "scored": len(scored),
        "xss_pair": xss_pair,
        "fixed": sorted(f"t{i:02d}" for i in right_after - right_before),
        "broken": sorted(f"t{i:02d}" for i in right_before - right_after),
    }
