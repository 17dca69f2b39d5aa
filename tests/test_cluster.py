"""KubeRay manifests: schema-valid against the real CRDs, strict about unknown fields, up to date."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO.parent / "shared" / "kuberay-crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}


@functools.cache
def crd_schema(kind: str, version: str = "v1") -> dict[str, Any]:
    """The CRD's schema, read once (megabytes of YAML: libyaml's loader where PyYAML has it)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRD_DIR / CRD_FILES[kind]).read_text(), Loader=loader)
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return entry["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys the schema does not declare: what `kubectl apply --validate=strict` rejects and the API
    server would silently prune (a typo such as `rayStartParam` would otherwise go unnoticed)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if props is not None and key in props:
                found += unknown_fields(sub, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(sub, extra, f"{path}.{key}")
            elif props is not None and extra is not True:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def validate(manifest: dict[str, Any]) -> None:
    schema = crd_schema(manifest["kind"], manifest["apiVersion"].split("/")[1])
    jsonschema.Draft7Validator(schema).validate(manifest)
    extra = unknown_fields(manifest, schema)
    if extra:
        raise jsonschema.ValidationError(f"unknown fields: {extra}")


def cluster_files() -> list[Path]:
    return sorted((REPO / "cluster").glob("*.yaml"))


def test_every_kuberay_manifest_is_valid_against_its_crd():
    kinds = set()
    for path in cluster_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["apiVersion"].startswith("ray.io/"):
                validate(doc)
                kinds.add(doc["kind"])
            else:
                assert doc["kind"] and doc["metadata"]["name"], path
    assert kinds == {"RayCluster", "RayJob", "RayService"}


def test_validator_rejects_broken_manifests():
    doc = yaml.safe_load((REPO / "cluster" / "raycluster.yaml").read_text())
    typo = copy.deepcopy(doc)
    typo["spec"]["headGroupSpec"]["rayStartParam"] = typo["spec"]["headGroupSpec"].pop("rayStartParams")
    with pytest.raises(jsonschema.ValidationError):
        validate(typo)
    wrong_type = copy.deepcopy(doc)
    wrong_type["spec"]["workerGroupSpecs"][0]["replicas"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        validate(wrong_type)


def test_cluster_shape_is_what_the_guide_promises():
    doc = yaml.safe_load((REPO / "cluster" / "raycluster.yaml").read_text())
    head = doc["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "the head must run no work"
    assert head["serviceType"] == "ClusterIP", "the dashboard/job API must not be exposed outside"
    assert doc["spec"]["authOptions"]["mode"] == "token"
    worker = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    (container,) = worker["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert any(v.get("persistentVolumeClaim") for v in worker["volumes"])
    secrets = [e for e in container["env"] if "valueFrom" in e]
    assert {e["name"] for e in secrets} >= {"OPENAI_API_KEY", "RAYSTEP_API_KEY"}
    assert all("value" not in e for e in secrets), "keys come from Secrets only"
    storage = yaml.safe_load((REPO / "cluster" / "storage.yaml").read_text())
    assert storage["spec"]["accessModes"] == ["ReadWriteMany"]
    job72 = yaml.safe_load((REPO / "cluster" / "rayjob-pipeline-72b.yaml").read_text())
    assert job72["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 4


def test_rendered_manifests_are_up_to_date():
    out = subprocess.run(
        [sys.executable, "jobs/render_cluster.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_rayservice_serve_config_equals_raystep_serve_emit(tmp_path):
    sys.path.insert(0, str(REPO / "jobs"))
    from render_cluster import CONFIG_7B, SERVE_OVERRIDES

    doc = yaml.safe_load((REPO / "cluster" / "rayservice.yaml").read_text())
    embedded = yaml.safe_load(doc["spec"]["serveConfigV2"])
    overrides = SERVE_OVERRIDES
    kwargs = embedded["applications"][0]["args"]["ingress_cls_config"]["ingress_extra_kwargs"]
    assert (kwargs["api_key_env"], kwargs["require_key"]) == ("RAYSTEP_API_KEY", True), (
        "a pod-network bind must check the API key"
    )
    assert kwargs["limits"]["max_request_bytes"] > 0 and kwargs["limits"]["max_prompt_chars"] > 0
    emitted = tmp_path / "serve.yaml"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "raystep.cli",
            "serve",
            "--config",
            CONFIG_7B,
            "--set",
            overrides[0],
            "--set",
            overrides[1],
            "--emit-config",
            str(emitted),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(emitted.read_text()) == embedded
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(embedded)


def test_open_judge_is_served_next_to_the_pipeline_and_keyed_from_the_secret(tmp_path):
    """The judge RayService serves the model localize asks for, at the URL localize calls, as `raystep
    serve --judge` would; both sides read the key localize sends (and the ingress checks) from the Secret."""
    sys.path.insert(0, str(REPO / "jobs"))
    from render_cluster import CONFIG_OPEN_JUDGE, JUDGE_SERVICE

    from raystep.config import load_config
    from raystep.kuberay import RUNS_MOUNT, SECRET_NAME, serve_url

    config = load_config(REPO / CONFIG_OPEN_JUDGE)
    judge = config.localize.judge
    assert judge.prompt == "stepdpo" and judge.structured == "json_schema"
    service = yaml.safe_load((REPO / "cluster" / "rayservice-judge.yaml").read_text())
    assert service["metadata"]["name"] == JUDGE_SERVICE
    assert judge.base_url == serve_url(JUDGE_SERVICE)
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(embedded)
    (app,) = embedded["applications"]
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    (llm,) = app["args"]["llm_configs"]
    assert llm["model_loading_config"] == {"model_id": judge.model, "model_source": judge.serve.model}
    assert (
        llm["engine_kwargs"]["tensor_parallel_size"] == 8
        and len(llm["placement_group_config"]["bundles"]) == 8
    )
    assert llm["engine_kwargs"]["structured_outputs_config"]["disable_any_whitespace"] is True
    kwargs = app["args"]["ingress_cls_config"]["ingress_extra_kwargs"]
    assert (kwargs["api_key_env"], kwargs["require_key"]) == (judge.api_key_env, True)
    assert kwargs["limits"]["max_model_len"] == llm["engine_kwargs"]["max_model_len"]  # the judge's context
    emitted = tmp_path / "judge.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "raystep.cli", "serve", "--judge", "--config", CONFIG_OPEN_JUDGE]
        + ["--set", f"storage.root={RUNS_MOUNT}", "--emit-config", str(emitted)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(emitted.read_text()) == embedded
    job = yaml.safe_load((REPO / "cluster" / "rayjob-pipeline-7b-open-judge.yaml").read_text())
    assert f"--config /app/{CONFIG_OPEN_JUDGE}" in job["spec"]["entrypoint"]
    pods = [
        service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"],
        job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"],
        job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"],
    ]
    for pod in pods:
        (env,) = [e for e in pod["containers"][0]["env"] if e["name"] == judge.api_key_env]
        assert env["valueFrom"]["secretKeyRef"] == {
            "name": SECRET_NAME,
            "key": judge.api_key_env,
            "optional": True,
        }


def test_judge_serve_section_must_match_the_judge_it_serves():
    from raystep.config import ConfigError, load_config

    base = REPO / "jobs" / "configs" / "qwen2-7b-open-judge.yaml"
    with pytest.raises(ConfigError, match="model_id .* must equal localize.judge.model"):
        load_config(base, ["localize.judge.model=another-judge"])
    with pytest.raises(ConfigError, match="the key sent is the key checked"):
        load_config(base, ["localize.judge.api_key_env=OPENAI_API_KEY"])
    from raystep.kuberay import ClusterShape, judge_rayservice

    with pytest.raises(ValueError, match="no open judge"):
        judge_rayservice(
            ClusterShape(name="x"), load_config(REPO / "jobs" / "configs" / "qwen2-7b-instruct.yaml")
        )
