"""The serving config (``ray.serve.llm``) for GPU and CPU, checked against Serve's own schemas, and the CLI.

The config is plain data built from the run config: checked here against Serve's ``ServeDeploySchema``
and Ray LLM's ``LLMConfig`` model, for a GPU cluster (emitted for a RayService) and for this machine's
CPU. The app itself runs for real in ``tests/test_serve.py``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from raystep.cli import main as cli_main
from raystep.config import RunConfig
from raystep.serve.limits import request_limits
from raystep.serve.llm import (
    AUTH_INGRESS,
    IMPORT_PATH,
    is_loopback,
    llm_config,
    model_source,
    serve_config,
    serve_config_yaml,
    write_serve_config,
)
from raystep.serve.run import ServeStartError, base_url, check_key, start


def gpu_config(**serve: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "qwen-7b",
            "storage": {"root": "/mnt/runs"},
            "model": {"dtype": "bfloat16"},
            "engine": {
                "device": "cuda",
                "tensor_parallel_size": 4,
                "max_model_len": 4096,
                "gpu_memory_utilization": 0.85,
                "accelerator_type": "H100",
            },
            "serve": {"model_id": "qwen-7b-stepdpo", "min_replicas": 1, "max_replicas": 3, **serve},
        }
    )


def test_emitted_yaml_validates_as_a_serve_deploy_config_and_round_trips(tmp_path: Path):
    config = gpu_config()
    path = write_serve_config(config, tmp_path / "serve.yaml")
    loaded = yaml.safe_load(path.read_text())
    assert loaded == serve_config(config)
    schema = ServeDeploySchema.model_validate(loaded)
    (app,) = schema.applications
    assert app.import_path == IMPORT_PATH == "ray.serve.llm:build_openai_app"
    assert app.route_prefix == "/"
    assert schema.http_options.host == "127.0.0.1" and schema.http_options.port == 8000
    assert app.args == loaded["applications"][0]["args"]
    # Serve's own dump of the validated config reads back to the same schema.
    again = ServeDeploySchema.model_validate(
        yaml.safe_load(yaml.safe_dump(schema.model_dump(exclude_unset=True)))
    )
    assert again == schema


def test_llm_config_is_accepted_by_ray_llm(tmp_path: Path):
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig  # the model behind ray.serve.llm

    raw = llm_config(gpu_config())
    parsed = LLMConfig.model_validate(raw)
    assert parsed.model_id == "qwen-7b-stepdpo"
    assert parsed.model_loading_config.model_source == "/mnt/runs/qwen-7b/model"
    assert parsed.engine_kwargs == {
        "tensor_parallel_size": 4,
        "max_model_len": 4096,
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.85,
        "enable_prefix_caching": True,
        "trust_remote_code": False,
    }
    assert parsed.accelerator_type == "H100"
    assert parsed.placement_group_config == {"bundles": [{"GPU": 1, "CPU": 1}] * 4}
    scaling = AutoscalingConfig.model_validate(parsed.deployment_config["autoscaling_config"])
    assert (scaling.min_replicas, scaling.initial_replicas, scaling.max_replicas) == (1, 1, 3)
    assert parsed.deployment_config["max_ongoing_requests"] == 64
    with pytest.raises(ValueError):  # a typo'd accelerator is caught by the same model
        LLMConfig.model_validate({**raw, "accelerator_type": "H1OO"})


def test_cpu_engine_is_eager_float32_on_the_mp_executor_with_a_sized_kv_cache(tmp_path: Path):
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    config = RunConfig.model_validate(
        {"engine": {"device": "cpu", "cpu_kv_cache_gib": 3, "cpus_per_replica": 2}, "serve": {"model": "m"}}
    )
    raw = llm_config(config)
    parsed = LLMConfig.model_validate(raw)
    assert parsed.engine_kwargs["dtype"] == "float32" and parsed.engine_kwargs["enforce_eager"] is True
    assert parsed.engine_kwargs["distributed_executor_backend"] == "mp"
    assert "gpu_memory_utilization" not in parsed.engine_kwargs
    assert parsed.placement_group_config == {"bundles": [{"CPU": 2}]}
    assert raw["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "3"
    # engine.vllm_kwargs wins over what raystep derives
    config.engine.vllm_kwargs = {"enforce_eager": False, "max_num_seqs": 8}
    kwargs = llm_config(config)["engine_kwargs"]
    assert kwargs["enforce_eager"] is False and kwargs["max_num_seqs"] == 8


def test_weight_swap_adds_raysteps_worker_extension_and_only_then():
    """Deployments load ``serve.model`` alone; an experiment's engine (``serve.weight_swap``) gets the worker
    extension that loads its next checkpoint in place, which ``ray.serve.llm``'s config accepts."""
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    from raystep.serve.swap import EXTENSION, WeightSwap

    assert "worker_extension_cls" not in llm_config(gpu_config())["engine_kwargs"]
    raw = llm_config(gpu_config(weight_swap=True))
    assert LLMConfig.model_validate(raw).engine_kwargs["worker_extension_cls"] == EXTENSION
    module, name = EXTENSION.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is WeightSwap  # what vLLM will import


def test_a_checkpoint_of_another_shape_or_tokenizer_is_refused(tmp_path: Path, shared_data: Path):
    """Only a checkpoint the engine's model and tokenizer fit loads in place; one whose tokenizer files are
    written differently but load as the same tokenizer (what an export writes) does."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from raystep.serve.swap import check_swappable
    from raystep.tiny import build_tokenizer, gsm8k_texts

    texts = gsm8k_texts(shared_data / "gsm8k" / "train.jsonl", limit=200)
    base = tmp_path / "a"
    build_tokenizer(texts, base, vocab_size=400)
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64}
    (base / "config.json").write_text(json.dumps(config))
    resaved, wider, retokenized = (tmp_path / n for n in ("resaved", "wider", "retok"))
    for folder in (resaved, wider):
        shutil.copytree(base, folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(resaved)  # as the export writes it
    (resaved / "config.json").write_text(json.dumps({**config, "torch_dtype": "float32"}))  # not a shape
    (wider / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    build_tokenizer(texts, retokenized, vocab_size=500)
    (retokenized / "config.json").write_text(json.dumps(config))
    assert (resaved / "tokenizer_config.json").read_text() != (base / "tokenizer_config.json").read_text()
    check_swappable(base, resaved)
    with pytest.raises(ValueError, match="hidden_size"):
        check_swappable(base, wider)
    with pytest.raises(ValueError, match="tokenizer"):
        check_swappable(base, retokenized)


def test_model_source_is_the_run_folder_a_bucket_or_the_override():
    assert model_source(gpu_config()) == "/mnt/runs/qwen-7b/model"
    bucket = RunConfig.model_validate({"name": "r1", "storage": {"root": "s3://bucket/runs/"}})
    assert model_source(bucket) == "s3://bucket/runs/r1/model"
    assert llm_config(bucket)["model_loading_config"]["model_source"] == "s3://bucket/runs/r1/model"
    assert model_source(gpu_config(model="gs://b/exported")) == "gs://b/exported"


def test_public_bind_gets_a_key_checking_ingress_without_the_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RAYSTEP_API_KEY", raising=False)
    private = serve_config(gpu_config())
    ingress = private["applications"][0]["args"]["ingress_cls_config"]
    assert ingress["ingress_extra_kwargs"]["require_key"] is False  # loopback: a key set on the node is used
    monkeypatch.setenv("RAYSTEP_API_KEY", "super-secret-value")
    public = gpu_config(host="0.0.0.0")
    text = serve_config_yaml(public)
    assert "super-secret-value" not in text
    args = yaml.safe_load(text)["applications"][0]["args"]
    assert args["ingress_deployment_config"] == {"ray_actor_options": {"num_cpus": 0.25}}
    assert args["ingress_cls_config"] == {
        "ingress_cls": AUTH_INGRESS,
        "ingress_extra_kwargs": {
            "api_key_env": "RAYSTEP_API_KEY",
            "require_key": True,
            "limits": request_limits(public).as_dict(),
        },
    }
    module, _, name = AUTH_INGRESS.partition(":")
    assert name == "BearerAuthIngress"
    with_bearer_auth = importlib.import_module(module).with_bearer_auth

    class Plain:
        async def models(self) -> dict:
            return {}

        async def completions(self, body: dict) -> dict:
            return body

    # Built from a plain class (OpenAiIngress needs vLLM): named as asked, else after its base.
    named = with_bearer_auth(Plain, ["models", "completions"], name=name)
    assert named.__name__ == named.__qualname__ == "BearerAuthIngress"
    assert issubclass(named, Plain) and named.__module__ == module
    assert {"models", "completions"} <= set(vars(named))
    assert with_bearer_auth(Plain, ["models", "completions"]).__name__ == "BearerAuthPlain"
    ServeDeploySchema.model_validate(yaml.safe_load(text))


def test_loopback_detection():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com"))


def test_public_bind_without_key_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RAYSTEP_UNSET_KEY", raising=False)
    public = RunConfig.model_validate({"serve": {"host": "0.0.0.0", "api_key_env": "RAYSTEP_UNSET_KEY"}})
    with pytest.raises(ServeStartError, match="RAYSTEP_UNSET_KEY"):
        start(public)
    loopback = RunConfig.model_validate({"serve": {"host": "127.0.0.1", "api_key_env": "RAYSTEP_UNSET_KEY"}})
    check_key(loopback)  # loopback may go without a key
    monkeypatch.setenv("RAYSTEP_UNSET_KEY", "s3cret")
    check_key(public)
    assert base_url(public) == "http://127.0.0.1:8000/v1"


def test_cli_emit_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "deploy" / "serve.yaml"
    rc = cli_main(
        ["serve", "--emit-config", str(out), "--host", "0.0.0.0", "--set", "engine.tensor_parallel_size=2"]
    )
    assert rc == 0
    assert str(out) in capsys.readouterr().out
    schema = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    assert schema.http_options.host == "0.0.0.0"
    args = schema.applications[0].args
    assert args["llm_configs"][0]["engine_kwargs"]["tensor_parallel_size"] == 2
    assert args["ingress_cls_config"]["ingress_cls"] == AUTH_INGRESS


def test_cli_without_a_model_says_where_it_looked(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    rc = cli_main(["serve", "--set", f"storage.root={tmp_path}", "--set", "name=nomodel"])
    assert rc == 2
    assert str(tmp_path / "nomodel" / "model") in capsys.readouterr().err
