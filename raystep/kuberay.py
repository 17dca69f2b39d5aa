"""KubeRay manifests (RayCluster, RayJob, RayService) built from run configs.

The files in ``cluster/`` are rendered from here by ``python jobs/render_cluster.py``, so the RayService's
``serveConfigV2`` is exactly what ``raystep serve --emit-config`` writes for the same run config, and
the pod spec (image, GPUs, shared volume, secrets) is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from raystep.config import RunConfig

RAY_VERSION = "2.60.0"
RUNS_MOUNT = "/mnt/runs"
SECRET_NAME = "raystep-keys"
SERVE_PORT = 8000


@dataclass(frozen=True)
class ClusterShape:
    """Hardware and placement of one cluster."""

    name: str
    image: str = "raystep:0.1.0-gpu"
    gpu_nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_node: int = 96
    memory_per_node: str = "1000Gi"
    head_cpus: int = 8
    head_memory: str = "64Gi"
    pvc: str = "raystep-runs"
    secret_keys: tuple[str, ...] = ("OPENAI_API_KEY", "RAYSTEP_API_KEY", "HF_TOKEN")
    node_selector: dict[str, str] = field(default_factory=dict)


def _env(shape: ClusterShape) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "RAYSTEP_STORAGE", "value": RUNS_MOUNT},
        {"name": "HF_HOME", "value": f"{RUNS_MOUNT}/hf-cache"},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
    ]
    for key in shape.secret_keys:
        env.append(
            {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key, "optional": True}},
            }
        )
    return env


def _volumes(shape: ClusterShape, shm: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [{"name": "runs", "persistentVolumeClaim": {"claimName": shape.pvc}}]
    mounts: list[dict[str, Any]] = [{"name": "runs", "mountPath": RUNS_MOUNT}]
    if shm:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


def cluster_spec(shape: ClusterShape) -> dict[str, Any]:
    """A RayCluster spec: a head that runs no work, and one GPU worker group on the shared volume."""
    head_volumes, head_mounts = _volumes(shape, None)
    worker_volumes, worker_mounts = _volumes(shape, "64Gi")
    gpu = str(shape.gpus_per_node)
    worker_pod: dict[str, Any] = {
        "containers": [
            {
                "name": "ray-worker",
                "image": shape.image,
                "env": _env(shape),
                "resources": {
                    "limits": {
                        "cpu": str(shape.cpus_per_node),
                        "memory": shape.memory_per_node,
                        "nvidia.com/gpu": gpu,
                    },
                    "requests": {
                        "cpu": str(shape.cpus_per_node),
                        "memory": shape.memory_per_node,
                        "nvidia.com/gpu": gpu,
                    },
                },
                "volumeMounts": worker_mounts,
            }
        ],
        "volumes": worker_volumes,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    if shape.node_selector:
        worker_pod["nodeSelector"] = dict(shape.node_selector)
    return {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": False,
        # Ray token auth: the dashboard, job API and client port refuse requests without the token
        # that KubeRay generates into a Secret (kubectl get secret <cluster>-... ; see cluster/README.md).
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            # num-cpus 0: the head schedules no tasks or actors, so a busy stage cannot starve the GCS.
            # The dashboard / job API listens on the pod network only: the head Service is ClusterIP, and
            # cluster/README.md shows `kubectl port-forward` instead of exposing it.
            "rayStartParams": {"num-cpus": "0", "num-gpus": "0", "dashboard-host": "0.0.0.0"},
            "serviceType": "ClusterIP",
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "ray-head",
                            "image": shape.image,
                            "env": _env(shape),
                            "ports": [
                                {"containerPort": 6379, "name": "gcs"},
                                {"containerPort": 8265, "name": "dashboard"},
                                {"containerPort": 10001, "name": "client"},
                                {"containerPort": 8000, "name": "serve"},
                            ],
                            "resources": {
                                "limits": {"cpu": str(shape.head_cpus), "memory": shape.head_memory},
                                "requests": {"cpu": str(shape.head_cpus), "memory": shape.head_memory},
                            },
                            "volumeMounts": head_mounts,
                        }
                    ],
                    "volumes": head_volumes,
                }
            },
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu",
                "replicas": shape.gpu_nodes,
                "minReplicas": shape.gpu_nodes,
                "maxReplicas": shape.gpu_nodes,
                "rayStartParams": {},
                "template": {"spec": worker_pod},
            }
        ],
    }


def raycluster(shape: ClusterShape) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": shape.name, "labels": {"app.kubernetes.io/part-of": "raystep"}},
        "spec": cluster_spec(shape),
    }


def rayjob(
    shape: ClusterShape, config_file: str, job: str = "pipeline", extra_args: str = ""
) -> dict[str, Any]:
    """A RayJob that brings up its own cluster, runs one ``raystep`` command (``job``), and tears it down."""
    entry = f"raystep {job} --config /app/{config_file} --set storage.root={RUNS_MOUNT}"
    if extra_args:
        entry += f" {extra_args}"
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": f"{shape.name}-{job}", "labels": {"app.kubernetes.io/part-of": "raystep"}},
        "spec": {
            "entrypoint": entry,
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "backoffLimit": 0,
            "runtimeEnvYAML": yaml.safe_dump({"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}),
            "rayClusterSpec": cluster_spec(shape),
        },
    }


def rayservice(shape: ClusterShape, config: RunConfig) -> dict[str, Any]:
    """A RayService serving the exported model with ``ray.serve.llm``; serveConfigV2 from the run config."""
    from raystep.serve.llm import serve_config

    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": f"{shape.name}-serve", "labels": {"app.kubernetes.io/part-of": "raystep"}},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(config), sort_keys=False),
            "rayClusterConfig": cluster_spec(shape),
        },
    }


def serve_url(service_name: str, namespace: str | None = None) -> str:
    """The in-cluster OpenAI base URL of a RayService: KubeRay names its Serve Service ``<name>-serve-svc``."""
    host = f"{service_name}-serve-svc" + (f".{namespace}.svc" if namespace else "")
    return f"http://{host}:{SERVE_PORT}/v1"


def judge_rayservice(shape: ClusterShape, config: RunConfig) -> dict[str, Any]:
    """A RayService serving the open judge of ``localize.judge.serve`` with ``ray.serve.llm``.

    The policy's RayService built from ``raystep.serve.llm.judge_run_config`` (the judge's serve and engine
    sections), so its ``serveConfigV2`` equals ``raystep serve --judge --emit-config``; on a pod-network
    bind the ingress checks the key named by ``api_key_env``, read from the Secret on the node. The
    pipeline reaches it at :func:`serve_url`.
    """
    from raystep.serve.llm import judge_run_config

    return rayservice(shape, judge_run_config(config))


def storage_claim(shape: ClusterShape, size: str = "4Ti") -> dict[str, Any]:
    """The ReadWriteMany volume every node mounts at /mnt/runs (NFS, Filestore, EFS, CephFS...)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": shape.pvc, "labels": {"app.kubernetes.io/part-of": "raystep"}},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}},
    }
