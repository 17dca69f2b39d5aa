"""Generation engines: the row contract, reproducible per-row seeds, the hf fallback on a real local Ray,
and the vLLM path: its processor config for GPU and CPU, pre/post-processing, and ``ray.data.llm``'s
processor really running vLLM's CPU build, checked against the hf engine's greedy answers."""

from __future__ import annotations

import hashlib

import pytest

from raystep.config import load_config
from raystep.engines import base, build_generator, sampling_defaults
from raystep.engines import vllm as vllm_engine


def sampling(seed: int, **kw):
    args = {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 16, "seed": seed, **kw}
    return base.make_sampling(**args)


# -- contract helpers --------------------------------------------------------------------------


def test_derive_seed_is_stable_across_processes_and_distinct():
    # sha256-based: the same in every process (Python's hash() is salted per process)
    expected = int.from_bytes(hashlib.sha256(b"7:p1:0").digest()[:4], "big") & 0x7FFFFFFF
    assert base.derive_seed(7, "p1", 0) == expected
    seeds = {base.derive_seed(7, "p1", i) for i in range(50)}
    assert len(seeds) == 50
    assert base.derive_seed(7, "p1", 0) != base.derive_seed(8, "p1", 0)


def test_fan_out_records_a_seed_per_sample():
    row = {"id": "p1", "prompt": "Q", "extra": [1, 2]}
    rows = base.fan_out(row, 3, sampling(5))
    assert [r["sample_index"] for r in rows] == [0, 1, 2]
    assert all(r["sampling"]["seed"] == r["seed"] for r in rows)
    assert len({r["seed"] for r in rows}) == 3
    assert all(r["extra"] == [1, 2] and r["prompt"] == "Q" for r in rows)
    assert rows == base.fan_out(row, 3, sampling(5))  # reproducible
    # consecutive, as vLLM seeds the n choices of one request (choice j: seed + j)
    first = base.derive_seed(5, "p1")
    assert [r["seed"] for r in rows] == base.sample_seeds(5, 3, "p1") == [first, first + 1, first + 2]


def test_request_groups_send_the_samples_of_one_prompt_together():
    from raystep.engines.endpoint import request_groups

    s = [sampling(100 + j) for j in range(5)]  # prompt A, seeds 100..104
    rows = [("A", s[3]), ("B", sampling(100)), ("A", s[0]), ("A", s[1]), ("A", s[2]), ("A", s[4])]
    rows += [("A", sampling(105, temperature=1.0)), ("A", sampling(200))]
    groups = request_groups([p for p, _ in rows], [x for _, x in rows], most=4)
    # A's seeds 100..103 in seed order, then 104 (at most 4 to a request); B alone; another temperature
    # alone; a gap in the seeds alone
    assert sorted(groups) == sorted([[2, 3, 4, 0], [5], [1], [6], [7]])
    # a repeated seed never shares a request (vLLM would seed it as the next choice)
    assert request_groups(["A"] * 3, [s[0], s[0], s[1]], most=4) == [[0], [1, 2]]
    assert request_groups(["A"] * 5, s, most=1) == [[0], [1], [2], [3], [4]]


def test_normalize_sampling_fills_defaults_and_names_missing_keys():
    full = base.normalize_sampling('{"seed": 3}', {"temperature": 0.5, "top_p": 1.0, "max_new_tokens": 8})
    assert full == {"temperature": 0.5, "top_p": 1.0, "max_new_tokens": 8, "seed": 3, "stop": []}
    with pytest.raises(ValueError, match="max_new_tokens"):
        base.normalize_sampling({"seed": 1, "temperature": 1.0, "top_p": 1.0})


def test_truncate_at_stop_takes_the_earliest():
    assert base.truncate_at_stop("a1b2c", ["2", "1"]) == ("a", True)
    assert base.truncate_at_stop("abc", ["x"]) == ("abc", False)


def test_sampling_defaults_come_from_the_config_and_overrides():
    cfg = load_config(None, ["sampling.temperature=0.3", "sampling.stop=['###']"])
    d = sampling_defaults(cfg, {"max_new_tokens": 7})
    assert d["temperature"] == 0.3 and d["stop"] == ["###"] and d["max_new_tokens"] == 7


# -- hf engine without Ray -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(tiny_model):
    from raystep.engines.hf import HFGenerator

    return HFGenerator(str(tiny_model), batch_size=3)


PROMPTS = [
    "Natalia sold clips to 48 of her friends in April.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Q:",
    "Betty is saving money for a new wallet which costs $100.",
]


def test_same_seed_same_prompt_same_text_whatever_the_batch(generator):
    together = generator.generate(PROMPTS, [sampling(i) for i in range(4)])
    alone = [generator.generate([p], [sampling(i)])[0] for i, p in enumerate(PROMPTS)]
    reversed_ = generator.generate(PROMPTS[::-1], [sampling(i) for i in range(4)][::-1])[::-1]
    assert together == alone == reversed_
    other_seed = generator.generate(PROMPTS[:1], [sampling(99)])[0]
    assert other_seed["generated_text"] != together[0]["generated_text"]
    for out in together:
        assert 0 < out["num_generated_tokens"] <= 16
        assert out["finish_reason"] in ("stop", "length")


def test_stop_strings_cut_the_text_where_they_first_appear(generator):
    full = generator.generate(PROMPTS[:1], [sampling(1, max_new_tokens=24)])[0]
    text = full["generated_text"]
    stop = text[6:9]  # a string the unconstrained sample is known to contain
    cut = generator.generate(PROMPTS[:1], [sampling(1, max_new_tokens=24, stop=[stop])])[0]
    assert cut["generated_text"] == text[: text.find(stop)]
    assert cut["finish_reason"] == "stop"
    assert cut["num_generated_tokens"] <= full["num_generated_tokens"]


def test_temperature_zero_is_greedy_and_seed_independent(generator):
    a = generator.generate(PROMPTS[:2], [sampling(1, temperature=0.0), sampling(2, temperature=0.0)])
    b = generator.generate(PROMPTS[:2], [sampling(3, temperature=0.0), sampling(4, temperature=0.0)])
    assert a == b


# -- hf engine on Ray Data -------------------------------------------------------------------------


@pytest.mark.slow
def test_hf_engine_on_ray_data_matches_direct_calls_and_keeps_failed_rows(ray_local, tiny_model, generator):
    cfg = load_config(
        None,
        [
            f"model.path={tiny_model}",
            "sampling.engine=hf",
            "sampling.batch_size=4",
            "sampling.max_new_tokens=12",
            "sampling.seed=11",
        ],
    )
    rows = []
    for i, prompt in enumerate(PROMPTS):
        rows += base.fan_out({"id": f"p{i}", "prompt": prompt, "keep": i}, 2, sampling_defaults(cfg))
    bad = {"id": "bad", "prompt": "x", "keep": -1, "sample_index": 0, "seed": 1, "sampling": sampling(1)}
    bad["sampling"]["max_new_tokens"] = -5  # transformers refuses it: a generation error
    ds = ray_local.data.from_items([*rows, bad])
    out = sorted(build_generator(cfg)(ds).take_all(), key=lambda r: (r["id"], r["sample_index"]))
    assert len(out) == len(rows) + 1
    for row in out:
        base.check_output_row(row)
    failed = [r for r in out if r["id"] == "bad"]
    assert failed[0]["finish_reason"] == "error" and "max_new_tokens" in failed[0]["generation_error"]
    good = [r for r in out if r["id"] != "bad"]
    assert all(r["generation_error"] is None for r in good)
    assert [r["keep"] for r in good] == [i for i in range(4) for _ in range(2)]  # pass-through columns
    direct = generator.generate([r["prompt"] for r in good], [dict(r["sampling"]) for r in good])
    assert [r["generated_text"] for r in good] == [d["generated_text"] for d in direct]
    assert [r["num_generated_tokens"] for r in good] == [d["num_generated_tokens"] for d in direct]


# -- vLLM path -------------------------------------------------------------------------------------


def test_vllm_processor_config_for_gpus_from_the_run_config():
    from ray.data.llm import vLLMEngineProcessorConfig

    cfg = load_config(
        None,
        [
            "sampling.engine=vllm",
            "model.path=Qwen/Qwen2-7B-Instruct",
            "engine.device=cuda",
            "engine.tensor_parallel_size=4",
            "engine.max_model_len=4096",
            "sampling.concurrency=2",
            "sampling.batch_size=64",
        ],
    )
    proc = vllm_engine.build_processor_config(cfg)
    assert isinstance(proc, vLLMEngineProcessorConfig)
    assert proc.model_source == "Qwen/Qwen2-7B-Instruct"
    assert proc.engine_kwargs["enable_prefix_caching"] is True
    assert proc.engine_kwargs["tensor_parallel_size"] == 4
    assert proc.engine_kwargs["max_model_len"] == 4096
    assert "distributed_executor_backend" not in proc.engine_kwargs
    assert proc.placement_group_config["bundles"] == [{"GPU": 1, "CPU": 1}] * 4
    assert proc.batch_size == 64 and tuple(proc.concurrency) == (2, 2)
    assert proc.should_continue_on_error is True
    assert proc.chat_template_stage is False  # prompts arrive templated
    off = load_config(None, ["engine.enable_prefix_caching=false", "engine.device=cuda"])
    assert vllm_engine.processor_config_kwargs(off)["engine_kwargs"]["enable_prefix_caching"] is False


def test_vllm_processor_config_for_cpus_comes_from_the_same_code():
    cfg = load_config(None, ["engine.device=cpu", "engine.cpu_kv_cache_gib=3", "model.dtype=auto"])
    kwargs = vllm_engine.processor_config_kwargs(cfg)
    assert kwargs["engine_kwargs"]["dtype"] == "float32" and kwargs["engine_kwargs"]["enforce_eager"] is True
    assert kwargs["engine_kwargs"]["distributed_executor_backend"] == "mp"
    assert kwargs["placement_group_config"] == {"bundles": [{"CPU": 1.0}]}
    assert kwargs["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "3"
    # 4 x 256 rows in flight per replica, in batches of 128 (see benchmarks/bench_generation.py)
    assert kwargs["batch_size"] == 128 and kwargs["max_concurrent_batches"] == 8
    small = load_config(None, ["engine.device=cpu", "sampling.batch_size=100", "engine.max_num_seqs=64"])
    assert vllm_engine.processor_config_kwargs(small)["max_concurrent_batches"] == 3  # ceil(256 / 100)
    # auto: no GPU in this Ray cluster (or, without Ray, on this machine) means the CPU build
    auto = load_config(None, ["engine.device=auto"])
    assert vllm_engine.processor_config_kwargs(auto)["engine_kwargs"]["distributed_executor_backend"] == "mp"


def test_engine_env_leaves_out_what_the_submitting_job_sets(monkeypatch):
    """Under ``ray job submit``, ray.data.llm re-inits Ray with the engine env; Ray refuses a key set twice."""
    import json

    cfg = load_config(None, ["engine.device=cpu", "engine.cpu_kv_cache_gib=3"])
    job = {"runtime_env": {"working_dir": ".", "env_vars": {"TOKENIZERS_PARALLELISM": "false"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    env = vllm_engine.processor_config_kwargs(cfg)["runtime_env"]["env_vars"]
    assert "TOKENIZERS_PARALLELISM" not in env and env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert "TOKENIZERS_PARALLELISM" in vllm_engine.processor_config_kwargs(cfg)["runtime_env"]["env_vars"]


def test_vllm_processor_and_lazy_pipeline_build_for_a_gpu_cluster(ray_local, tiny_model):
    """The real ``build_processor`` builds for GPUs (nothing runs yet): stages, engine kwargs,
    replicas, and the lazy Dataset plan ``build_generator`` returns for ``engine: vllm``."""
    cfg = load_config(
        None,
        [
            f"model.path={tiny_model}",
            "sampling.engine=vllm",
            "engine.device=cuda",
            "engine.tensor_parallel_size=2",
            "sampling.concurrency=3",
            "sampling.batch_size=32",
        ],
    )
    processor = vllm_engine.build_vllm_processor(cfg, sampling_defaults(cfg))
    assert processor.list_stage_names() == ["TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    stage = processor.get_stage_by_name("vLLMEngineStage")
    assert stage.fn_constructor_kwargs["engine_kwargs"]["enable_prefix_caching"] is True
    assert stage.fn_constructor_kwargs["engine_kwargs"]["tensor_parallel_size"] == 2
    assert stage.fn_constructor_kwargs["should_continue_on_error"] is True
    compute = stage.map_batches_kwargs["compute"]
    assert (compute.min_size, compute.max_size) == (3, 3)
    ds = build_generator(cfg)(ray_local.data.from_items([{"prompt": "x", "sampling": sampling(1)}]))
    plan = str(ds)  # lazy: nothing runs, so no vLLM is needed
    assert "vLLMEngineStageUDF" in plan and "finalize_vllm_row" in plan and "ChatTemplate" not in plan


def test_vllm_pre_and_postprocess_keep_the_row_contract():
    row = base.fan_out(
        {"id": "p1", "prompt": "Solve: 1+1", "question": "1+1"}, 1, sampling(3, stop=["\n\n"])
    )[0]
    pre = vllm_engine.to_vllm_row(row)
    assert pre["prompt"] == "Solve: 1+1"
    assert pre["sampling_params"] == {
        "n": 1,
        "temperature": 0.8,
        "top_p": 0.95,
        "max_tokens": 16,
        "seed": row["seed"],
        "stop": ["\n\n"],
    }
    # what the processor adds to a successful row
    engine_out = {
        **pre,
        "prompt_token_ids": [1, 2, 3],
        "num_input_tokens": 3,
        "generated_tokens": [4, 5],
        "generated_text": "2",
        "num_generated_tokens": 2,
        "metrics": {},
        "request_id": 0,
        "batch_uuid": "abc",
        "time_taken_llm": 0.1,
        "params": "SamplingParams(...)",
    }
    post = vllm_engine.from_vllm_row(engine_out)
    base.check_output_row(post)
    assert (
        post["generated_text"] == "2" and post["finish_reason"] == "stop" and post["generation_error"] is None
    )
    assert post["question"] == "1+1" and post["seed"] == row["seed"] and post["sample_index"] == 0
    assert not set(post) & vllm_engine.VLLM_COLUMNS
    spent = vllm_engine.from_vllm_row({**engine_out, "num_generated_tokens": 16})
    assert spent["finish_reason"] == "length"
    # an error row bypasses postprocess with a truncated prompt; finalize maps it and restores ours
    error_row = {**pre, "prompt": "Solve", "generated_text": "", "__inference_error__": "ValueError: boom"}
    final = vllm_engine.finalize_vllm_row(error_row)
    base.check_output_row(final)
    assert final["finish_reason"] == "error" and final["generation_error"] == "ValueError: boom"
    assert final["prompt"] == "Solve: 1+1" and "__inference_error__" not in final
    ok = vllm_engine.finalize_vllm_row({**post, "__inference_error__": ""})
    assert ok == post


@pytest.mark.slow
def test_vllm_engine_runs_on_cpu_keeps_the_contract_and_agrees_with_hf_greedy(
    ray_local, tiny_model, generator
):
    """``ray.data.llm``'s processor on vLLM's CPU build: fan-out rows with their own seeds, a failed row
    kept with its error, seeded samples that repeat, and greedy text equal to the hf engine's."""
    cfg = load_config(
        None,
        [
            f"model.path={tiny_model}",
            "sampling.engine=vllm",
            "engine.device=cpu",
            "engine.max_model_len=256",
            "engine.cpu_kv_cache_gib=1",
            "sampling.batch_size=8",
            "sampling.max_new_tokens=12",
            "sampling.seed=11",
        ],
    )
    greedy = {**sampling_defaults(cfg), "temperature": 0.0}
    rows = []
    for i, prompt in enumerate(PROMPTS):
        rows += base.fan_out({"id": f"s{i}", "prompt": prompt, "keep": i}, 2, sampling_defaults(cfg))
        rows += base.fan_out({"id": f"g{i}", "prompt": prompt, "keep": i}, 1, greedy)
    bad = {"id": "bad", "prompt": "x", "keep": -1, "sample_index": 0, "seed": 1, "sampling": sampling(1)}
    bad["sampling"]["temperature"] = -1.0  # vLLM refuses it (a request longer than the context is not an
    # error for it: the generation just stops at the context's end)
    out = build_generator(cfg)(ray_local.data.from_items([*rows, bad])).take_all()
    assert len(out) == len(rows) + 1
    for row in out:
        base.check_output_row(row)
    by_key = {(r["id"], r["sample_index"]): r for r in out}
    failed = by_key[("bad", 0)]
    assert failed["finish_reason"] == "error" and failed["generation_error"]
    assert failed["prompt"] == "x" and failed["keep"] == -1  # kept whole, with its pass-through columns
    good = [r for r in out if r["id"] != "bad"]
    assert all(r["generation_error"] is None and r["num_generated_tokens"] > 0 for r in good)
    assert {r["keep"] for r in good} == set(range(4))
    # two samples of one prompt differ: each row draws with its own seed
    assert by_key[("s0", 0)]["generated_text"] != by_key[("s0", 1)]["generated_text"]
    # greedy: vLLM and transformers give the same text, token for token
    direct = generator.generate(PROMPTS, {**greedy, "seed": 0})
    vllm_greedy = [by_key[(f"g{i}", 0)] for i in range(4)]
    assert [r["generated_text"] for r in vllm_greedy] == [d["generated_text"] for d in direct]
    assert [r["num_generated_tokens"] for r in vllm_greedy] == [d["num_generated_tokens"] for d in direct]


# -- grading stage (the actor's code, called in-process) -------------------------------------------


def test_grade_udf_grades_good_rows_and_keeps_failed_ones_with_their_error():
    from raystep.engines.graded import GradeUDF

    udf = GradeUDF(workers=1, timeout_s=10.0)
    try:
        rows = [
            {
                "response": "Step 1: 6 * 7 = 42. The answer is \\boxed{42}.",
                "answer": "42",
                "finish_reason": "stop",
            },
            {"response": "Step 1: so \\boxed{41}", "answer": "42", "finish_reason": "length"},
            {"response": "", "answer": "42", "finish_reason": "error"},  # generation failed: not graded
        ]
        out = udf.grade_rows([dict(r) for r in rows])
        assert [r["correct"] for r in out] == [True, False, False]
        assert [r["grade_status"] for r in out] == ["ok", "ok", "error"]
        assert out[0]["pred"] == "42" and out[0]["grade_method"] == "boxed"
        assert all(r["grade_error"] is None for r in out)

        def broken(responses, golds):
            raise RuntimeError("grader down")

        udf.grader.grade = broken
        failed = udf.grade_rows([dict(r) for r in rows[:2]])
        assert all(r["grade_status"] == "error" and "grader down" in r["grade_error"] for r in failed)
        assert not any(r["correct"] for r in failed)
    finally:
        udf.grader.close()
