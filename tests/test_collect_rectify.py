"""collect and rectify on a real local Ray with a tiny model taught one solution.

These tests exercise the stages' own logic (shards, resume after a kill in each phase, pair building)
many times over, so they run the small ``hf`` fallback engine, which starts in a second; the same stages
on vLLM, the default engine, are run end to end in ``tests/test_vllm_pipeline.py``.

The tiny Qwen2 is trained here for a few seconds to reproduce one step-formatted solution (answer 12)
whatever the question, so verdicts are meaningful: problems whose gold is 12 are solved, those whose
gold is 13 are not, and rectifying a solution whose step k is wrong yields the taught step k. The
localized rows rectify reads are written by the test (localization is another stage's job).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from raystep import records, steps
from raystep.config import load_config
from raystep.records import read_jsonl, read_parquet
from raystep.runs import RunDir
from raystep.stages import collect, rectify, shards

TAUGHT = " 2 + 2 = 4.\nStep 2: 4 * 3 = 12.\nStep 3: The answer is \\boxed{12}."
TEMPLATE = "plain"
QUESTIONS = [f"Problem {i}: what is (2 + 2) * 3?" for i in range(6)]
GOLDS = ["12" if i % 2 == 0 else "13" for i in range(6)]


@pytest.fixture(scope="module")
def taught_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model after ~60 steps of next-token training on ``TAUGHT`` (prompt tokens masked)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("taught-model")
    shutil.copytree(tiny_model, out, dirs_exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: more threads only thrash
    try:
        torch.manual_seed(0)
        tok = AutoTokenizer.from_pretrained(out)
        model = AutoModelForCausalLM.from_pretrained(out)
        prompts = [steps.build_prompt(TEMPLATE, q, steps.STEP_PRIMER) for q in QUESTIONS]
        enc = tok([p + TAUGHT + tok.eos_token for p in prompts], return_tensors="pt", padding=True)
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        for j, p in enumerate(prompts):
            labels[j, : len(tok(p)["input_ids"])] = -100
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
        for _ in range(70):
            loss = model(**enc, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        assert loss.item() < 0.1, f"the tiny model did not learn the solution (loss {loss.item():.3f})"
        model.save_pretrained(out)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("problems") / "problems.jsonl"
    rows = [
        {"id": f"p{i}", "question": q, "answer": g}
        for i, (q, g) in enumerate(zip(QUESTIONS, GOLDS, strict=True))
    ]
    records.write_jsonl(path, rows)
    return path


def make_config(root: Path, name: str, model: Path, problems: Path, *extra: str):
    return load_config(
        None,
        [
            f"name={name}",
            f"storage.root={root}",
            f"model.path={model}",
            f"model.template={TEMPLATE}",
            "data.source=jsonl",
            f"data.path={problems}",
            "sampling.engine=hf",
            "sampling.n=2",
            "sampling.temperature=0.7",
            "sampling.max_new_tokens=60",
            "sampling.batch_size=4",
            "sampling.shard_size=2",
            "rectify.n=3",
            "rectify.temperature=0.7",
            "rectify.max_new_tokens=60",
            *extra,
        ],
    )


def collect_killed_after_first_shard(config, ray_address: str) -> subprocess.CompletedProcess:
    """``raystep collect`` in a subprocess on the Ray at ``ray_address``, SIGKILLed right after it writes
    its first shard (``raystep.stages.shards``' fault hook): what a crash mid-stage leaves behind."""
    config_file = Path(config.run_dir).parent / f"{config.name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_address,
        shards.FAIL_AFTER_ENV: "samples:1",
        shards.FAIL_MODE_ENV: "kill",
    }
    return subprocess.run(
        [sys.executable, "-m", "raystep.cli", "collect", "--config", str(config_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def sample_key(rows):
    return sorted((r["sample_id"], r["seed"], r["response"], r["correct"]) for r in rows)


@pytest.mark.slow
def test_collect_writes_graded_samples_and_a_killed_run_resumes_exactly(
    ray_local, taught_model, problems_file, tmp_path
):
    config = make_config(tmp_path, "full", taught_model, problems_file)
    stats = collect.run(config)
    run = RunDir.from_config(config)
    rows = read_parquet(run.path / "samples", kind="sample")  # every row fits the sample schema

    assert len(rows) == 12 and len({r["sample_id"] for r in rows}) == 12
    files = list((run.path / "samples").glob("part-*.parquet"))
    assert len(files) >= 6  # 12 samples, at most 2 (sampling.shard_size) per shard, written by workers
    assert all(len(shards.ShardSet.units_of(f)) <= 2 for f in files)
    assert len({r["seed"] for r in rows}) == 12
    for r in rows:
        assert r["prompt"] == steps.build_prompt(TEMPLATE, r["question"], steps.STEP_PRIMER)
        assert r["response"].startswith(steps.STEP_PRIMER)
        assert "".join(r["steps"]) == r["response"][len("Let's think step by step.\n") :]
        assert r["steps"][0].startswith("Step 1:")
        assert r["grade_status"] == "ok" and r["error"] is None
        assert r["correct"] == (r["pred"] == r["answer"])
        assert json.loads(r["sampling"])["seed"] == r["seed"]
    by_gold = Counter((r["answer"], r["correct"]) for r in rows)
    assert by_gold[("13", True)] == 0  # the model only knows 12
    assert by_gold[("12", True)] >= 4  # ... and mostly says it

    manifest = run.read_manifest()["stages"]["collect"]
    assert manifest["status"] == "done" and manifest["samples"] == 12 and manifest["problems"] == 6
    per_problem = json.loads(Path(manifest["per_problem_accuracy_file"]).read_text())
    assert len(per_problem) == 6
    for pid in per_problem:
        mine = [r["correct"] for r in rows if r["id"] == pid]
        assert per_problem[pid] == sum(mine) / len(mine)
    assert stats["correct"] + stats["wrong"] == 12

    # a `raystep collect` process SIGKILLed right after its first shard, then rerun
    killed = make_config(tmp_path, "killed", taught_model, problems_file)
    proc = collect_killed_after_first_shard(killed, ray_local.get_runtime_context().gcs_address)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    killed_run = RunDir.from_config(killed)
    partial = read_parquet(killed_run.path / "samples", kind="sample")
    assert 0 < len(partial) < len(rows)  # killed once its first shard was on disk
    assert killed_run.read_manifest()["stages"]["collect"]["status"] == "running"  # it never finished

    resumed = collect.run(killed)
    assert resumed["samples_resumed"] == len(partial) and resumed["samples_todo"] == 12 - len(partial)
    final = read_parquet(killed_run.path / "samples", kind="sample")
    assert len(final) == len(rows)
    assert sample_key(final) == sample_key(rows)
    assert (
        Path(resumed["per_problem_accuracy_file"]).read_text()
        == Path(stats["per_problem_accuracy_file"]).read_text()
    )


def localized_rows() -> list[dict]:
    """Wrong samples with their first wrong step, as the localize stage would write them."""

    def row(pid: int, sid: str, response: str, k: int, correct: bool = False) -> dict:
        return {
            "id": f"p{pid}",
            "dataset": "toy",
            "question": QUESTIONS[pid],
            "answer": GOLDS[pid],
            "sample_id": sid,
            "sample_index": 0,
            "seed": 1,
            "prompt": steps.build_prompt(TEMPLATE, QUESTIONS[pid], steps.STEP_PRIMER),
            "response": response,
            "steps": list(steps.split_steps(response).steps),
            "pred": None,
            "correct": correct,
            "grade_status": "ok",
            "first_wrong_step": k,
            "localizer": "test",
            "evidence": "{}",
            "error": None,
        }

    primer = steps.STEP_PRIMER[: -len("Step 1:")]
    return [
        # step 2 is wrong: the taught step 2 is the chosen one
        row(
            0,
            "p0-s0",
            primer + "Step 1: 2 + 2 = 4.\nStep 2: 4 * 3 = 14.\nStep 3: The answer is \\boxed{14}.",
            2,
        ),
        # step 1 is wrong
        row(
            2,
            "p2-s0",
            primer + "Step 1: 2 + 2 = 5.\nStep 2: 5 * 3 = 15.\nStep 3: The answer is \\boxed{15}.",
            1,
        ),
        # the localizer blamed a right step: every correct resample repeats it (chosen == rejected)
        row(
            4,
            "p4-s0",
            primer + "Step 1: 2 + 2 = 4.\nStep 2: 4 * 3 = 13.\nStep 3: The answer is \\boxed{13}.",
            1,
        ),
        # gold 13: no continuation of this model is ever correct
        row(
            1,
            "p1-s0",
            primer + "Step 1: 2 + 2 = 5.\nStep 2: 5 * 3 = 15.\nStep 3: The answer is \\boxed{15}.",
            1,
        ),
        row(3, "p3-s0", primer + "Step 1: 1 + 1 = 2.\nStep 2: The answer is \\boxed{2}.", 0),  # no wrong step
        row(0, "p0-s1", primer + "Step 1: 2 + 2 = 4.\nStep 2: 4 * 3 = 12.\nStep 3: \\boxed{12}.", 0, True),
    ]


def write_localized(config) -> None:
    run = RunDir.from_config(config)
    rows = localized_rows()
    records.write_parquet(run.stage("localized") / "part-00000.parquet", rows[:3])
    records.write_parquet(run.stage("localized") / "part-00001.parquet", rows[3:])


@pytest.mark.slow
def test_rectify_builds_step_pairs_in_the_public_schema(ray_local, taught_model, problems_file, tmp_path):
    config = make_config(
        tmp_path,
        "rect",
        taught_model,
        problems_file,
        "rectify.success_rollouts=2",
        "rectify.min_success_rate=0.5",
        "rectify.max_pairs_per_sample=2",
    )
    write_localized(config)
    stats = rectify.run(config)
    run = RunDir.from_config(config)

    assert stats["localized"] == 6 and stats["units"] == 4
    assert stats["skipped"] == {"no_wrong_step": 1, "correct": 1}
    assert stats["continuations"] == 12  # 4 samples x rectify.n
    continuations = read_parquet(run.path / "rectified")
    assert stats["continuation_tokens"] == sum(c["num_tokens"] for c in continuations) > 0
    pairs = read_parquet(run.path / "pairs", kind="pair")
    by_sample = {p["sample_id"]: p for p in pairs}
    assert sorted(by_sample) == ["p0-s0", "p2-s0"]  # one pair each: the n=3 resamples agree
    assert stats["this_run"]["dropped_duplicate"] >= 2
    assert stats["this_run"]["dropped_same_as_rejected"] >= 1  # p4-s0

    p0, p2 = by_sample["p0-s0"], by_sample["p2-s0"]
    assert p0["initial_reason_steps"] == "Let's think step by step.\nStep 1: 2 + 2 = 4.\nStep 2:"
    assert p0["rejected"] == " 4 * 3 = 14.\n" and p0["chosen"] == " 4 * 3 = 12.\n"
    assert p0["step_index"] == 2 and p0["full_rejected"] == " 4 * 3 = 14.\nStep 3: The answer is \\boxed{14}."
    assert p2["initial_reason_steps"] == "Let's think step by step.\nStep 1:"
    assert p2["rejected"] == " 2 + 2 = 5.\n" and p2["chosen"] == " 2 + 2 = 4.\n"
    for p in pairs:
        assert p["prompt"] == QUESTIONS[int(p["problem_id"][1:])] and p["answer"] == "12"
        assert p["full_chosen"].startswith(p["chosen"])
        assert p["chosen_success_rate"] == 1.0 and p["rectify_success_rate"] > 0
        assert p["localizer"] == "test" and p["policy_model"] == str(taught_model)
        assert json.loads(p["sampling"])["n"] == 3

    exported = read_jsonl(run.path / "pairs" / "pairs.jsonl", kind="pair")
    assert len(exported) == 2
    for row in exported:
        assert list(row)[: len(records.PUBLIC_PAIR_FIELDS)] == list(records.PUBLIC_PAIR_FIELDS)
        assert set(row) == set(records.PUBLIC_PAIR_FIELDS) | set(rectify.PROVENANCE_FIELDS)
    manifest = run.read_manifest()["stages"]["rectify"]
    assert manifest["status"] == "done" and manifest["pairs"] == 2


@pytest.mark.slow
def test_rectify_interrupted_in_each_phase_resumes_to_the_same_pairs(
    ray_local, taught_model, problems_file, tmp_path, monkeypatch
):
    extra = ("sampling.shard_size=1", "rectify.max_pairs_per_sample=3", "rectify.temperature=1.5")
    full = make_config(tmp_path, "full", taught_model, problems_file, *extra)
    write_localized(full)
    rectify.run(full)

    cut = make_config(tmp_path, "cut", taught_model, problems_file, *extra)
    write_localized(cut)
    run = RunDir.from_config(cut)
    monkeypatch.setenv(shards.FAIL_AFTER_ENV, "rectified:1")
    with pytest.raises(shards.InjectedFailure):
        rectify.run(cut)
    assert 1 <= len(list((run.path / "rectified").glob("part-*.parquet"))) < 12  # workers write concurrently
    assert run.read_manifest()["stages"]["rectify"]["status"] == "failed"
    monkeypatch.setenv(shards.FAIL_AFTER_ENV, "pairs:1")
    with pytest.raises(shards.InjectedFailure):
        rectify.run(cut)  # continuations finish, the pairs phase stops after one shard
    assert len(list((run.path / "pairs").glob("part-*.parquet"))) >= 1
    monkeypatch.delenv(shards.FAIL_AFTER_ENV)
    stats = rectify.run(cut)
    assert stats["samples_resumed"] == 4 and stats["samples_todo"] == 0

    def pair_key(folder):
        rows = read_parquet(folder / "pairs", kind="pair")
        return sorted((r["pair_id"], r["chosen"], r["rejected"], r["full_chosen"]) for r in rows)

    def cont_key(folder):
        rows = read_parquet(folder / "rectified")
        return sorted((r["sample_id"], r["continuation_index"], r["seed"], r["continuation"]) for r in rows)

    full_path = RunDir.from_config(full).path
    assert cont_key(run.path) == cont_key(full_path) and len(cont_key(run.path)) == 12
    assert pair_key(run.path) == pair_key(full_path) and pair_key(run.path)
    assert (run.path / "pairs" / "pairs.jsonl").read_text() == (
        full_path / "pairs" / "pairs.jsonl"
    ).read_text()


def test_a_shard_records_its_units_and_a_new_driver_removes_unfinished_writes(tmp_path):
    store = shards.ShardSet(tmp_path / "s", schema=records.PAIR_FIELDS)
    store.write([{"pair_id": "b", "x": 2}], ["b", "c"])  # c produced no rows: still done
    assert [shards.ShardSet.units_of(f) for f in store.files()] == [["b", "c"]]
    assert store.done_units() == {"b", "c"}
    named = store.write([{"pair_id": "d"}], ["d"], name="abcdef0123")
    assert named.name == "part-abcdef0123.parquet" and store.done_units() == {"b", "c", "d"}
    (tmp_path / "s" / "part-00009.parquet.123.tmp").write_text("half a file")
    worker = shards.ShardSet(tmp_path / "s", clean=False)  # a worker never removes another's write
    assert worker.folder.joinpath("part-00009.parquet.123.tmp").exists()
    assert not shards.ShardSet(tmp_path / "s").folder.joinpath("part-00009.parquet.123.tmp").exists()


def test_select_pairs_filters_by_success_rate_then_caps():
    config = load_config(
        None, ["rectify.success_rollouts=2", "rectify.min_success_rate=0.6", "rectify.max_pairs_per_sample=1"]
    )
    candidates = [{"pair_id": "x-c0"}, {"pair_id": "x-c1"}, {"pair_id": "x-c2"}]
    rollouts = [
        {"pair_id": "x-c0", "correct": True},
        {"pair_id": "x-c0", "correct": False},
        {"pair_id": "x-c1", "correct": True},
        {"pair_id": "x-c1", "correct": True},
        {"pair_id": "x-c2", "correct": True},
        {"pair_id": "x-c2", "correct": True},
    ]
    kept, counts = rectify.select_pairs(candidates, rollouts, config)
    assert [k["pair_id"] for k in kept] == ["x-c1"] and kept[0]["chosen_success_rate"] == 1.0
    assert counts["dropped_low_success_rate"] == 1 and counts["dropped_over_cap"] == 1


def test_require_unique_names_the_duplicated_units():
    shards.require_unique([{"id": "a"}, {"id": "b"}], "id", "here")
    with pytest.raises(ValueError, match=r"^here; duplicated: \['b', 'a'\]$"):
        shards.require_unique([{"id": "b"}, {"id": "a"}, {"id": "a"}, {"id": "b"}, {"id": "c"}], "id", "here")


def test_fold_errors_joins_generation_and_grade_errors():
    from raystep.engines.graded import fold_errors

    assert fold_errors({"generation_error": None, "grade_error": None}) == {"error": None}
    assert fold_errors({"generation_error": "gen", "grade_error": "grade", "x": 1}) == {
        "x": 1,
        "error": "gen\ngrade",
    }


def test_verify_chosen_hook_is_called_and_counted():
    config = load_config(None, ["rectify.verify_chosen=true", "rectify.max_pairs_per_sample=5"])
    seen = []

    def verify(pairs, cfg):
        seen.append(len(pairs))
        return pairs[:1], len(pairs) - 1, 3

    kept, counts = rectify.select_pairs([{"pair_id": "a"}, {"pair_id": "b"}], [], config, verify)
    assert seen == [2] and [k["pair_id"] for k in kept] == ["a"] and counts["dropped_verify_chosen"] == 1
    assert counts["verify_chosen_errors"] == 3  # candidates the verifier could not judge are surfaced


def test_build_candidates_dedupes_and_drops_chosen_equal_to_rejected():
    config = load_config(None, ["rectify.n=4"])
    unit = localized_rows()[0]  # step 2 rejected: " 4 * 3 = 14.\n"
    conts = [
        {
            "continuation_index": 0,
            "seed": 1,
            "correct": True,
            "continuation": " 4 * 3 = 12.\nStep 3: 12",
            "chosen": " 4 * 3 = 12.\n",
        },
        {
            "continuation_index": 1,
            "seed": 2,
            "correct": True,
            "continuation": " 4 *  3 = 12.\n",
            "chosen": " 4 *  3 = 12.\n",
        },
        {
            "continuation_index": 2,
            "seed": 3,
            "correct": True,
            "continuation": "4 * 3 = 14.",
            "chosen": "4 * 3 = 14.",
        },
        {
            "continuation_index": 3,
            "seed": 4,
            "correct": False,
            "continuation": " 4 * 3 = 11.",
            "chosen": " 4 * 3 = 11.",
        },
    ]
    cands, counts = rectify.build_candidates(unit, conts, config)
    assert [c["chosen"] for c in cands] == [" 4 * 3 = 12.\n"]
    assert counts["dropped_duplicate"] == 1 and counts["dropped_same_as_rejected"] == 1
    assert cands[0]["rectify_success_rate"] == 0.75 and cands[0]["pair_id"] == "p0-s0-k2-c0"
    records.check_row(cands[0], "pair")


def oracle_first_wrong_step(response: str) -> int:
    """The test's localizer: the first step that differs from the taught solution (0: none differs)."""
    taught = steps.split_steps(steps.STEP_PRIMER + TAUGHT)
    mine = steps.split_steps(response)
    for k in range(1, len(mine) + 1):
        if k > len(taught) or rectify.normalize_step(mine.body(k)) != rectify.normalize_step(taught.body(k)):
            return k
    return 0


@pytest.mark.slow
def test_collect_then_rectify_turns_wrong_samples_into_pairs(
    ray_local, taught_model, problems_file, tmp_path
):
    """collect at a high temperature (wrong samples), an oracle localizer, then rectify."""
    config = make_config(
        tmp_path, "chain", taught_model, problems_file, "sampling.temperature=3.0", "sampling.top_p=1.0"
    )
    collect.run(config)
    run = RunDir.from_config(config)
    samples = read_parquet(run.path / "samples", kind="sample")
    wrong = [s for s in samples if not s["correct"] and s["answer"] == "12"]
    assert wrong, "a temperature of 3 should derail some samples of problems the model can solve"
    localized = [
        {
            **s,
            "first_wrong_step": oracle_first_wrong_step(s["response"]),
            "localizer": "oracle",
            "evidence": "{}",
        }
        for s in samples
    ]
    records.write_parquet(run.stage("localized") / "part-00000.parquet", localized)

    stats = rectify.run(config)
    pairs = read_parquet(run.path / "pairs", kind="pair")
    assert stats["units"] == sum(1 for r in localized if not r["correct"] and r["first_wrong_step"] > 0)
    assert pairs, "rectifying derailed samples of solvable problems must give pairs"
    taught = steps.split_steps(steps.STEP_PRIMER + TAUGHT)
    by_sample = {s["sample_id"]: s for s in localized}
    for p in pairs:
        source = by_sample[p["sample_id"]]
        k = p["step_index"]
        assert k == source["first_wrong_step"] and source["answer"] == "12"
        assert p["initial_reason_steps"] == steps.split_steps(source["response"]).prefix(k)
        assert p["rejected"] == steps.split_steps(source["response"]).body(k)
        assert rectify.normalize_step(p["chosen"]) == rectify.normalize_step(
            taught.body(k)
        )  # the step the model knows
        assert p["prompt"] == source["question"] and p["localizer"] == "oracle"
    assert len(read_jsonl(run.path / "pairs" / "pairs.jsonl", kind="pair")) == len(pairs)


def test_the_workers_request_builders_fan_out_with_stable_ids():
    """collect's and rectify's Ray Data request builders (config and tokenizer loaded once a process)."""
    import pyarrow as pa

    config = load_config(None, ["model.template=plain", "sampling.n=2", "rectify.n=3"])
    problem = {"id": "p0", "dataset": "d", "question": "1+1?", "answer": "2"}
    asked = collect._requests(pa.Table.from_pylist([problem]), config.model_dump_json())
    assert asked.column("sample_id").to_pylist() == ["p0-s0", "p0-s1"]
    response = steps.STEP_PRIMER + " 1 + 1 = 3.\nStep 2: The answer is 3."
    row = {**problem, "sample_id": "p0-s0", "response": response, "first_wrong_step": 1, "localizer": "v",
           "correct": False, "error": None}  # fmt: skip
    asked = rectify._continuation_requests(pa.Table.from_pylist([row]), config.model_dump_json())
    assert asked.column("continuation_id").to_pylist() == ["p0-s0-c0", "p0-s0-c1", "p0-s0-c2"]
