"""The data stages on vLLM, the default engine, on its CPU build: a collect killed midway that resumes,
then rollout localize -> rectify (with chosen-step verification by rollouts) from the resumed samples.
Each stage starts its own engine through ``ray.data.llm``: four starts in all.

The tiny model is taught one solution (answer 12) in ``tests/test_collect_rectify.py``'s fixture, so
verdicts mean something: samples of problems whose gold is 12 are mostly right, and a hot sampling
temperature derails some of them into wrong samples that rollouts can localize and rectify can repair.
"""

from __future__ import annotations

import signal

import pytest
from test_collect_rectify import (  # noqa: F401  (fixtures)
    collect_killed_after_first_shard,
    make_config,
    problems_file,
    taught_model,
)

from raystep import steps
from raystep.records import read_jsonl, read_parquet
from raystep.runs import RunDir
from raystep.stages import collect, localize, rectify

pytestmark = pytest.mark.slow

VLLM = (
    "sampling.engine=vllm",
    "engine.device=cpu",
    "engine.max_model_len=256",
    "engine.cpu_kv_cache_gib=1",
    "sampling.n=4",
    "sampling.temperature=1.5",
    "sampling.top_p=1.0",
    "sampling.shard_size=2",
    "localize.methods=[rollout]",
    "localize.rollout.num_rollouts=4",
    "localize.rollout.temperature=0.7",
    "localize.rollout.max_new_tokens=60",
    "rectify.n=4",
    "rectify.verify_chosen=true",
)


def ids(rows: list[dict]) -> list[str]:
    return sorted(r["sample_id"] for r in rows)


@pytest.fixture(scope="module")
def resumed_collect(taught_model, problems_file, tmp_path_factory):  # noqa: F811
    """``raystep collect`` on vLLM SIGKILLed right after its first shard, then rerun to the end: the
    stages after it continue from these samples (an uninterrupted collect beside it would add an engine
    start and check nothing more: the rows a run must end with are planned from the problems)."""
    import ray
    from conftest import start_local_ray

    if not ray.is_initialized():  # what the (function-scoped) ray_local fixture does
        start_local_ray()
    root = tmp_path_factory.mktemp("vllm")
    config = make_config(root, "vllm", taught_model, problems_file, *VLLM)
    killed = collect_killed_after_first_shard(config, ray.get_runtime_context().gcs_address)
    folder = RunDir.from_config(config).path / "samples"
    partial = read_parquet(folder, kind="sample") if folder.exists() else []
    stats = collect.run(config)
    return config, killed, partial, stats, read_parquet(folder, kind="sample")


@pytest.mark.timeout(1800)
def test_a_killed_collect_on_vllm_resumes_to_the_planned_rows(resumed_collect):
    """Killed once its first shard was on disk, the rerun samples only the rest and ends with every planned
    sample once, with its planned seed: the rows an uninterrupted run has."""
    from raystep.datasets import load_problems

    config, killed, partial, stats, final = resumed_collect
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    planned = collect.sample_requests(config, load_problems(config.data))  # from the input file
    assert len(planned) == 24
    assert 0 < len(partial) < len(planned)
    assert stats["samples_resumed"] == len(partial) and stats["samples_todo"] == len(planned) - len(partial)
    assert ids(final) == ids(planned)  # each once
    assert sorted((r["sample_id"], r["seed"]) for r in final) == sorted(
        (r["sample_id"], r["seed"]) for r in planned
    )
    resumed = {r["sample_id"]: r["response"] for r in partial}
    assert all(resumed[r["sample_id"]] == r["response"] for r in final if r["sample_id"] in resumed)


@pytest.mark.timeout(1800)  # three vLLM engine starts: about a minute each on a busy 2-core machine
def test_collect_localize_rectify_on_vllm(resumed_collect):
    config, _, _, stats, samples = resumed_collect
    run = RunDir.from_config(config)
    assert len(samples) == 24 and len(set(ids(samples))) == 24 and stats["samples"] == 24
    for r in samples:
        assert r["error"] is None and r["grade_status"] == "ok"
        assert r["finish_reason"] in ("stop", "length") and r["num_tokens"] > 0
        assert r["response"].startswith(steps.STEP_PRIMER) and r["steps"]
    assert not any(r["correct"] for r in samples if r["answer"] == "13")  # the model only knows 12
    assert any(r["correct"] for r in samples if r["answer"] == "12")
    assert any(not r["correct"] for r in samples if r["answer"] == "12"), "a hot temperature derails some"

    loc = localize.run(config)
    localized = read_parquet(run.path / "localized", kind="localized")
    wrong = [s for s in samples if not s["correct"]]
    assert ids(localized) == ids(wrong) and loc["todo"] == len(wrong)
    assert all(r["localizer"] == "rollout" and r["error"] is None for r in localized)
    labelled = [r for r in localized if r["first_wrong_step"] > 0]
    assert labelled, "rollouts from the taught model's own prefixes find the step that went wrong"
    for r in labelled:
        assert 1 <= r["first_wrong_step"] <= len(r["steps"])

    rect = rectify.run(config)
    pairs = read_parquet(run.path / "pairs", kind="pair")
    assert rect["units"] == len(labelled) and pairs, "rectifying derailed solvable samples gives pairs"
    assert "dropped_verify_chosen" in rect["this_run"] and rect["this_run"]["verify_chosen_errors"] == 0
    by_sample = {r["sample_id"]: r for r in localized}
    for p in pairs:
        source = by_sample[p["sample_id"]]
        assert p["answer"] == "12" and p["step_index"] == source["first_wrong_step"]
        assert p["initial_reason_steps"] == steps.split_steps(source["response"]).prefix(p["step_index"])
        assert p["chosen"] != p["rejected"]
    assert len(read_jsonl(run.path / "pairs" / "pairs.jsonl", kind="pair")) == len(pairs)
