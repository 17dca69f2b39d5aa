"""Render the KubeRay manifests in ``cluster/`` from the run configs in ``jobs/configs/``.

    python jobs/render_cluster.py            # rewrite cluster/*.yaml
    python jobs/render_cluster.py --check    # exit 1 if any file differs from what would be written

Edit the configs or ``raystep/kuberay.py``, never the YAML by hand: a test checks they agree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raystep.config import load_config  # noqa: E402
from raystep.kuberay import (  # noqa: E402
    RUNS_MOUNT,
    ClusterShape,
    judge_rayservice,
    raycluster,
    rayjob,
    rayservice,
    storage_claim,
)

CONFIG_7B = "jobs/configs/qwen2-7b-instruct.yaml"
CONFIG_72B = "jobs/configs/qwen2-72b-instruct.yaml"
CONFIG_OPEN_JUDGE = "jobs/configs/qwen2-7b-open-judge.yaml"
JUDGE_SERVICE = "raystep-judge-serve"
"""The open judge's RayService; the open-judge config's ``localize.judge.base_url`` points at its Service."""
JUDGE_KEYS = ("OPENAI_API_KEY", "RAYSTEP_API_KEY", "HF_TOKEN", "RAYSTEP_JUDGE_KEY")
"""Secret keys of the judge's cluster and of the pipeline that calls it: both read RAYSTEP_JUDGE_KEY."""
HEADER = (
    "# Rendered by `python jobs/render_cluster.py` from jobs/configs/ and raystep/kuberay.py: edit those.\n"
)


SERVE_OVERRIDES = [f"storage.root={RUNS_MOUNT}", "serve.host=0.0.0.0"]
"""The RayService's serve config is `raystep serve --config CONFIG_7B` with these `--set` items."""


def manifests() -> dict[str, dict[str, Any]]:
    """File name -> manifest."""
    one_node = ClusterShape(name="raystep-7b", gpu_nodes=1)
    four_nodes = ClusterShape(name="raystep-72b", gpu_nodes=4)
    # In a pod the Serve proxy must listen on the pod network; a non-loopback bind makes the emitted
    # app check the Bearer key (RAYSTEP_API_KEY from the Secret) before any route runs.
    serve_config = load_config(ROOT / CONFIG_7B, SERVE_OVERRIDES)
    judge_node = ClusterShape(name=JUDGE_SERVICE.removesuffix("-serve"), gpu_nodes=1, secret_keys=JUDGE_KEYS)
    open_judge_pipeline = ClusterShape(name="raystep-7b-open-judge", gpu_nodes=1, secret_keys=JUDGE_KEYS)
    open_judge = load_config(ROOT / CONFIG_OPEN_JUDGE, [f"storage.root={RUNS_MOUNT}"])
    return {
        "storage.yaml": storage_claim(one_node),
        "raycluster.yaml": raycluster(one_node),
        "rayjob-pipeline-7b.yaml": rayjob(one_node, CONFIG_7B),
        "rayjob-pipeline-72b.yaml": rayjob(four_nodes, CONFIG_72B),
        "rayjob-eval-7b.yaml": rayjob(
            one_node,
            CONFIG_7B,
            job="eval",
            extra_args="--set eval.base_url=http://raystep-7b-serve-serve-svc:8000/v1",
        ),
        "rayservice.yaml": rayservice(one_node, serve_config),
        "rayservice-judge.yaml": judge_rayservice(judge_node, open_judge),
        "rayjob-pipeline-7b-open-judge.yaml": rayjob(open_judge_pipeline, CONFIG_OPEN_JUDGE),
    }


def render(manifest: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(manifest, sort_keys=False, width=120)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only compare with the files on disk")
    args = parser.parse_args()
    stale = []
    for name, manifest in manifests().items():
        path = ROOT / "cluster" / name
        text = render(manifest)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python jobs/render_cluster.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
