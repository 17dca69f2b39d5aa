"""The ``raystep localize`` stage on a real local Ray (verifier and judge in Ray Data actors, the judge
against the FAKE OpenAI server over real HTTP), its resume rules, and ``raystep localize-bench``.

The exact checker used here (``tests/checkers.py``) is imported by the Ray workers by its import path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from checkers import sum_checker  # noqa: E402

from raystep.cli import main as cli_main
from raystep.config import load_config
from raystep.records import SAMPLE_FIELDS, RowError, read_jsonl, write_jsonl
from raystep.runs import RunDir
from raystep.stages.shards import FAIL_AFTER_ENV, InjectedFailure, ShardSet

CHECKER = "tests.checkers:sum_checker"
"""How Ray workers import it: the driver's working directory (the repo root) is on their path."""
LOCAL_CHECKER = "checkers:sum_checker"
"""How this process imports it (pytest put ``tests/`` on the path)."""


def make_samples(n_problems: int = 5) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Collect-shaped rows: per problem, one correct sample, wrong ones with a known first wrong step,
    and one whose generation failed. Returns the rows and the truth for the wrong ones."""
    rows, truth = [], {}
    for p in range(n_problems):
        chain = [(p + 1, k + 1) for k in range(3)]  # (a, b) per step, a running sum from p+1
        for s in range(4):
            wrong_at = {0: 0, 1: 1 + p % 3, 2: 3, 3: 0}[s]
            steps, total = [], p + 1
            for k, (_, b) in enumerate(chain, 1):
                c = total + b + (1 if k == wrong_at else 0)
                steps.append(f"Step {k}: {total} + {b} = {c}\n")
                total = c
            sid = f"p{p}-s{s}"
            row = {
                "id": f"p{p}",
                "dataset": "sums",
                "question": f"Start at {p + 1} and add 1, 2 and 3. [p{p}]",
                "answer": str(p + 7),
                "sample_id": sid,
                "sample_index": s,
                "seed": s,
                "prompt": f"Question: start at {p + 1}\nAnswer: ",
                "response": "".join(steps),
                "steps": steps,
                "pred": str(total),
                "correct": wrong_at == 0 and s != 3,
                "grade_status": "ok",
                "num_tokens": 10,
                "error": "generation failed: injected" if s == 3 else None,
            }
            if s == 3:
                row["correct"] = False
            rows.append(row)
            if not row["correct"] and s != 3:
                truth[sid] = wrong_at
    return rows, truth


def write_samples(run_dir: Path, rows: list[dict[str, Any]], per_shard: int = 8) -> None:
    shards = ShardSet(run_dir / "samples", schema=SAMPLE_FIELDS)
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_problem.setdefault(r["id"], []).append(r)
    problems = list(by_problem)
    for i in range(0, len(problems), 2):
        units = problems[i : i + 2]
        shards.write([r for u in units for r in by_problem[u]], units)


def stage_settings(tmp_path: Path, *overrides: str) -> list[str]:
    return [
        f"storage.root={tmp_path / 'runs'}",
        "name=loc",
        "localize.methods=[verifier]",
        f"localize.verifier={CHECKER}",
        "localize.batch_size=3",
        "sampling.shard_size=4",
        *overrides,
    ]


def stage_config(tmp_path: Path, *overrides: str):
    return load_config(None, stage_settings(tmp_path, *overrides))


@pytest.mark.slow
def test_localize_stage_labels_every_wrong_sample_and_resumes(tmp_path, ray_local, monkeypatch) -> None:
    from raystep.stages import localize

    config = stage_config(tmp_path, "sampling.queue_mib=48")
    run_dir = RunDir.from_config(config)
    samples, truth = make_samples()
    write_samples(run_dir.path, samples)

    # first attempt dies after one shard (fault injection in the driver's shard writer)
    monkeypatch.setenv(FAIL_AFTER_ENV, "1")
    with pytest.raises(InjectedFailure):
        localize.run(config)
    partial = ShardSet(run_dir.path / "localized").rows()
    assert 0 < len(partial) < len(truth)
    assert run_dir.read_manifest()["stages"]["localize"]["status"] == "failed"
    monkeypatch.delenv(FAIL_AFTER_ENV)

    stats = localize.run(config)
    limits = ray_local.data.DataContext.get_current().execution_options.resource_limits
    assert limits.object_store_memory == 48 * 2**20  # the stage bounded its queue (stream.bound_queue)
    rows = ShardSet(run_dir.path / "localized").rows(kind="localized")
    assert sorted(r["sample_id"] for r in rows) == sorted(truth)  # each wrong sample once, none twice
    assert {r["sample_id"]: r["first_wrong_step"] for r in rows} == truth
    assert all(r["localizer"] == "verifier" and r["error"] is None for r in rows)
    assert stats["already_done"] == len(partial) and stats["todo"] == len(truth) - len(partial)
    assert stats["samples"] == len(samples) and stats["wrong_samples"] == len(truth)
    assert stats["skipped_generation_errors"] == 5
    assert stats["labelled"] == len(truth) and stats["errors"] == 0
    assert stats["per_method"] == {"verifier": {"labelled": len(truth)}}
    assert Path(stats["plot"]).read_bytes()[:4] == b"\x89PNG"
    manifest = run_dir.read_manifest()["stages"]["localize"]
    assert manifest["status"] == "done" and manifest["localized"] == len(truth)

    # a rerun has nothing to do and writes nothing; it only reads samples/, where collect may be
    # writing a shard (a *.tmp file before its rename) at the same time
    files = ShardSet(run_dir.path / "localized").files()
    in_flight = run_dir.path / "samples" / "part-99999.parquet.tmp"
    in_flight.write_bytes(b"collect is writing this shard")
    again = localize.run(config)
    assert again["todo"] == 0 and ShardSet(run_dir.path / "localized").files() == files
    assert in_flight.read_bytes() == b"collect is writing this shard"


@pytest.mark.slow
def test_localize_stage_with_judge_and_verifier_in_agreement(tmp_path, ray_local) -> None:
    from fake_openai import FakeOpenAI, last_user_text, verdict_reply

    from raystep.stages import localize

    samples, truth = make_samples(4)
    disagree = "p1-s2"  # the fake judge says step 1 where the checker says step 3

    def responder(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        steps = re.findall(r"^Step \d+: (.*)$", text, re.M)
        first = sum_checker("", steps)
        if "[p1]" in text and first == 3:
            first = 1
        return verdict_reply(first, len(steps), "markdown" if "[p2]" in text else "lines")

    faults = {"[p0]": ["429", "500"], "[p3]": ["400"] * 2}  # p3's wrong samples fail for good
    with FakeOpenAI(responder, faults) as server:
        config = stage_config(
            tmp_path,
            "localize.methods=[judge, verifier]",
            "localize.combine=agree",
            "localize.concurrency=2",
            f"localize.judge.base_url={server.url}",
            "localize.judge.model=fake-judge",
            "localize.judge.backoff_s=0.01",
            "localize.judge.max_retries=2",
            "localize.judge.requests_per_second=200",
        )
        write_samples(RunDir.from_config(config).path, samples)
        stats = localize.run(config)
        rows = {
            r["sample_id"]: r for r in ShardSet(Path(config.run_dir) / "localized").rows(kind="localized")
        }
        assert sorted(rows) == sorted(truth)  # every wrong sample has a row: a verdict or an error
        for sid, row in rows.items():
            if sid.startswith("p3"):
                assert row["error"].startswith("disagree") and "HTTP 400" in row["error"]
            elif sid == disagree:
                assert row["error"] == "disagree: judge=1, verifier=3"
            else:
                assert row["error"] is None and row["first_wrong_step"] == truth[sid]
        p3 = sum(1 for s in truth if s.startswith("p3"))
        assert stats["per_method"]["judge"]["errors"] == p3
        assert stats["per_method"]["verifier"] == {"labelled": len(truth)}
        assert stats["disagreements"] == p3 + 1
        assert stats["agreement"] == {
            "rows_all_answered": len(truth) - p3,
            "all_agree": len(truth) - p3 - 1,
            "rate": round((len(truth) - p3 - 1) / (len(truth) - p3), 4),
        }
        judge = stats["judge"]
        assert judge["requests"] == server.num_requests == len(truth) + 2
        assert judge["prompt_tokens"] > 0 and judge["completion_tokens"] > 0 and judge["cached"] == 0
        assert RunDir.from_config(config).read_manifest()["stages"]["localize"]["judge"] == judge

        # a fresh localization of the same samples is served from the judge cache: zero requests
        for f in ShardSet(Path(config.run_dir) / "localized").files():
            f.unlink()
        before = server.num_requests
        again = localize.run(config)
        assert server.num_requests - before == p3  # only the rows that never got a reply are asked again
        assert again["judge"]["cached"] == len(truth) - p3


@pytest.mark.slow
def test_localize_stage_with_rollouts_of_a_real_model_in_actors(tmp_path, ray_local, tiny_model) -> None:
    """Plumbing with the real HF engine in Ray Data actors; a random tiny model never reaches the gold,
    so every prefix probed is dead and bisection ends at step 1 after a single probe."""
    from raystep.stages import localize

    config = stage_config(
        tmp_path,
        "localize.methods=[rollout]",
        f"model.path={tiny_model}",
        "model.template=plain",
        "localize.rollout.num_rollouts=2",
        "localize.rollout.max_new_tokens=6",
    )
    samples, truth = make_samples(2)
    write_samples(RunDir.from_config(config).path, samples)
    stats = localize.run(config)
    rows = ShardSet(Path(config.run_dir) / "localized").rows(kind="localized")
    assert sorted(r["sample_id"] for r in rows) == sorted(truth)
    for row in rows:
        ev = json.loads(row["evidence"])
        assert row["error"] is None and row["localizer"] == "rollout"
        assert ev["probes"] == [{"step": 1, "rate": 0.0, "n": 2, "alive": False}]
        assert row["first_wrong_step"] == 1
    assert stats["rollout"] == {"rows": len(truth), "rollouts": 2 * len(truth), "probes": len(truth)}


def bench_rows() -> list[dict[str, Any]]:
    """ProcessBench form: no step headers, 0-based label or -1."""
    return [
        {"id": "b0", "problem": "Add from 1.", "steps": ["1 + 1 = 2", "2 + 2 = 4", "4 + 3 = 7"], "label": -1},
        {"id": "b1", "problem": "Add from 2.", "steps": ["2 + 1 = 4", "4 + 2 = 6"], "label": 0},
        {"id": "b2", "problem": "Add from 3.", "steps": ["3 + 1 = 4", "4 + 2 = 7", "7 + 3 = 10"], "label": 1},
        {"id": "b3", "problem": "Add from 4.", "steps": ["4 + 1 = 5", "5 + 2 = 7", "7 + 3 = 11"], "label": 2},
        {"id": "b4", "problem": "Add from 5.", "steps": ["5 + 1 = 6", "6 + 2 = 8"], "label": -1},
        {"id": "b5", "problem": "Add from 6.", "steps": ["6 + 1 = 8", "8 + 2 = 10"], "label": 0},
    ]


def test_localize_bench_end_to_end_with_the_verifier(tmp_path, capsys) -> None:
    data = tmp_path / "bench.jsonl"
    write_jsonl(data, bench_rows())
    out = tmp_path / "report"
    code = cli_main(
        ["localize-bench", "--data", str(data), "--out", str(out), "--set", "localize.methods=[verifier]"]
        + ["--set", f"localize.verifier={LOCAL_CHECKER}"]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 6 and report["n_wrong"] == 4 and report["n_correct"] == 2
    assert report["acc_wrong"] == 1.0 and report["acc_correct"] == 1.0 and report["f1"] == 1.0
    preds = read_jsonl(out / "predictions.jsonl")
    assert [p["pred"] for p in preds] == [r["label"] for r in bench_rows()]
    assert "F1             100.0" in capsys.readouterr().out


def test_localize_bench_with_the_judge_scores_its_mistakes(tmp_path) -> None:
    from fake_openai import FakeOpenAI, last_user_text, verdict_reply

    from raystep.stages.localize_bench import load_labelled, run_bench

    # the fake judge: right on b0, b1, b3; says b2 goes wrong at its first step (label 1);
    # flags a step of the correct b4; b5 always gets HTTP 400 (an error, counted as a miss)
    scripted = {"Add from 1.": 0, "Add from 2.": 1, "Add from 3.": 1, "Add from 4.": 3, "Add from 5.": 2}

    def responder(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        problem = re.search(r"### Problem\n(.*)\n", text).group(1)
        return verdict_reply(scripted[problem], len(re.findall(r"^Step \d+:", text, re.M)), "json")

    data = tmp_path / "bench.jsonl"
    write_jsonl(data, bench_rows())
    with FakeOpenAI(responder, {"Add from 6.": ["400"]}) as server:
        config = load_config(
            None,
            [
                "localize.methods=[judge]",
                f"localize.judge.base_url={server.url}",
                "localize.judge.backoff_s=0.01",
                "localize.judge.requests_per_second=200",
            ],
        )
        report = run_bench(config, load_labelled(str(data)), tmp_path / "out")
    assert report["acc_wrong"] == 2 / 4  # b1, b3 right; b2 wrong; b5 an error
    assert report["acc_correct"] == 1 / 2  # b0 right, b4 wrong
    assert report["f1"] == pytest.approx(2 * 0.5 * 0.5 / 1.0)
    assert report["errors"] == 1


def test_localize_bench_rejects_bad_rows_and_names_them(tmp_path, monkeypatch) -> None:
    from raystep.stages.localize_bench import load_labelled

    data = tmp_path / "bad.jsonl"
    rows = bench_rows()
    rows[2]["label"] = 7
    write_jsonl(data, rows)
    with pytest.raises(RowError, match=r"bad\.jsonl:3: field 'label'"):
        load_labelled(str(data))
    assert len(load_labelled(str(data), limit=2)) == 2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="pass a local file with --data"):
        load_labelled(None, "gsm8k")


def test_localize_bench_compares_judge_prompts_and_the_verifier_on_the_arithmetic_world(
    tmp_path, capsys
) -> None:
    """Two judge prompts and the exact verifier on the same world solutions: the fake judge is right
    under the paper's prompt and always says step 1 under raystep's, so every number is known."""
    from fake_openai import FakeOpenAI, last_user_text, verdict_reply

    from raystep.stages.localize_bench import world_rows

    overrides = [
        "data.source=synth",
        "data.split=test",
        "data.limit=12",
        "localize.methods=[judge, verifier]",
    ]
    rows = world_rows(load_config(None, overrides))
    truth = {r["question"]: r["label"] + 1 for r in rows}  # the verifier's first wrong step
    assert all(k >= 1 for k in truth.values()) and len(set(truth.values())) > 1  # every one has a slip

    def responder(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        if text.startswith("### Problem:\n"):  # the paper's prompt
            question = text.split("### Problem:\n")[1].split("\n\n### Correct solution:")[0]
            answer = text.split("### Incorrect answer:\n")[1].split("\n\n---")[0]
            assert (
                "The answer is \\boxed{" in text.split("### Correct solution:\n")[1]
            )  # the world's solution
            return verdict_reply(truth[question], len(re.findall(r"^Step \d+:", answer, re.M)), "final")
        question = text.split("### Problem\n")[1].split("\n")[0]
        return verdict_reply(1, len(re.findall(r"^Step \d+:", text, re.M)), "lines")

    with FakeOpenAI(responder) as server:
        code = cli_main(
            ["localize-bench", "--out", str(tmp_path / "bench"), "--judge-prompts", "stepdpo,raystep"]
            + [x for o in [*overrides, f"localize.judge.base_url={server.url}"] for x in ("--set", o)]
            + ["--set", "localize.judge.requests_per_second=500", "--set", "localize.judge.structured=off"]
        )
        assert code == 0 and server.num_requests == 2 * len(rows)
    report = json.loads((tmp_path / "bench" / "report.json").read_text())
    share_step1 = sum(k == 1 for k in truth.values()) / len(rows)
    per = report["localizers"]
    assert list(per) == ["judge:stepdpo", "judge:raystep", "verifier"]
    assert per["verifier"]["accuracy"] == 1.0 and per["judge:stepdpo"]["accuracy"] == 1.0
    assert per["judge:raystep"]["accuracy"] == pytest.approx(share_step1)
    assert per["judge:stepdpo"]["parsed_by_final_decision"] == len(rows)
    assert per["judge:stepdpo"]["unparsed_replies"] == per["judge:raystep"]["unparsed_replies"] == 0
    agree = report["agreement"]
    assert agree["names"] == list(per)
    assert agree["rate"][0] == [1.0, pytest.approx(share_step1), 1.0]
    assert agree["rate"][1][2] == pytest.approx(share_step1) and agree["both_labelled"][1][2] == len(rows)
    assert report["n"] == len(rows) and report["acc_wrong"] == 1.0  # combine=first: the stepdpo judge
    out = capsys.readouterr().out
    assert "| judge:raystep | 12 |" in out and "agreement" in out


def test_world_rows_are_collect_shaped_and_labelled_by_the_verifier() -> None:
    from raystep.stages.localize_bench import world_rows
    from raystep.steps import split_steps
    from raystep.synth.verify import first_wrong_step

    config = load_config(None, ["data.source=synth", "data.limit=20", "model.template=plain"])
    rows = world_rows(config, wrong_rate=0.5, seed=3)
    assert len(rows) == 20 and len({r["sample_id"] for r in rows}) == 20
    labels = [r["label"] for r in rows]
    assert labels.count(-1) not in (0, 20)  # both correct and slipped solutions
    for r in rows:
        assert r["prompt"].endswith("Step 1:") and r["response"].startswith(
            "Let's think step by step.\nStep 1:"
        )
        assert list(split_steps(r["response"]).steps) == r["steps"] and r["solution"]
        assert r["label"] == first_wrong_step(r["question"], r["steps"]) - 1
    assert world_rows(config, wrong_rate=0.5, seed=3) == rows  # the same seed, the same slips
    with pytest.raises(ValueError, match="data.source: synth"):
        world_rows(load_config(None, []))


@pytest.mark.slow
def test_localize_stage_counts_unreadable_verdicts_and_needs_solutions_for_the_paper_prompt(
    tmp_path, ray_local
) -> None:
    from fake_openai import FakeOpenAI, last_user_text, verdict_reply

    from raystep.stages import localize
    from raystep.stages.localizers import MissingReference

    samples, truth = make_samples(4)

    def responder(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        steps = re.findall(r"^Step \d+: (.*)$", text, re.M)
        style = "vague" if "[p1]" in text else "lines"  # p1's wrong samples get no readable verdict
        return verdict_reply(sum_checker("", steps), len(steps), style)

    vague = [s for s in truth if s.startswith("p1-")]
    with FakeOpenAI(responder) as server:
        judge = [
            "localize.methods=[judge]",
            f"localize.judge.base_url={server.url}",
            "localize.judge.backoff_s=0.01",
            "localize.judge.max_retries=1",
            "localize.judge.requests_per_second=200",
        ]
        paper = stage_config(tmp_path, *judge, "localize.judge.prompt=stepdpo")
        write_samples(RunDir.from_config(paper).path, samples)  # make_samples rows carry no solution
        with pytest.raises(MissingReference, match=rf"{len(truth)} of {len(truth)} rows have no reference"):
            localize.run(paper)
        assert server.num_requests == 0  # failed before any request
        for mode in ("json_schema", "off"):
            config = stage_config(tmp_path, *judge, f"localize.judge.structured={mode}", f"name=loc-{mode}")
            write_samples(RunDir.from_config(config).path, samples)
            stats = localize.run(config)
            manifest = RunDir.from_config(config).read_manifest()["stages"]["localize"]
            assert manifest["judge"] == stats["judge"] and manifest["judge_structured"] == mode
            rows = {r["sample_id"]: r for r in ShardSet(Path(config.run_dir) / "localized").rows()}
            if mode == "json_schema":  # the fake states p1's labels as schema JSON: all parse
                assert stats["judge"]["unparsed_replies"] == 0 and stats["judge"]["unparsed_rows"] == 0
                assert stats["judge"]["parsed_by_schema"] == len(truth)
                assert {s: r["first_wrong_step"] for s, r in rows.items()} == truth
            else:  # free text: two unreadable replies per p1 row (first try + one retry), then its error
                assert stats["judge"]["unparsed_replies"] == 2 * len(vague)
                assert stats["judge"]["unparsed_rows"] == len(vague) == stats["errors"]
                assert all("VerdictParseError" in rows[s]["error"] for s in vague)
                assert stats["judge"]["parsed_by_text"] == len(truth) - len(vague)


def test_localize_bench_on_a_runs_samples_reports_agreement_without_labels(tmp_path, capsys) -> None:
    """Outside the arithmetic world a run's samples have no labels: the localizers are only compared."""
    samples, truth = make_samples(3)
    folder = tmp_path / "samples"
    write_samples(tmp_path, samples)
    out = tmp_path / "bench"
    code = cli_main(
        ["localize-bench", "--samples", str(folder), "--out", str(out)]
        + ["--set", "localize.methods=[verifier]", "--set", f"localize.verifier={LOCAL_CHECKER}"]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    usable = [s for s in samples if not s.get("error")]
    assert report["labels"] == "none" and report["n"] == len(usable) and report["errors"] == 0
    assert report["agreement"] == {"names": ["verifier"], "rate": [[1.0]], "both_labelled": [[len(usable)]]}
    preds = {p["sample_id"]: p["pred"] for p in read_jsonl(out / "predictions.jsonl")}
    assert {s: preds[s] + 1 for s in truth} == truth  # the checker's steps, for every wrong sample
    assert "acc on wrong" not in capsys.readouterr().out
