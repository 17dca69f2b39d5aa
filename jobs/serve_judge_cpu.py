"""Serve a model as the localize judge on CPU: vLLM's CPU build behind ``ray.serve.llm``.

    python jobs/serve_judge_cpu.py --model runs/tiny-judge --model-id tiny-judge --port 8011 \
        [--api-key-env RAYSTEP_JUDGE_KEY]

The app the cluster's judge RayService runs (``cluster/rayservice-judge.yaml``): ``build_openai_app``
with raystep's key-checking ingress when ``--api-key-env`` names a key, so structured-output requests
are decoded under their JSON schema by vLLM. The engine settings are the ones DESIGN.md's "vLLM on CPU"
found to work here (float32, eager, one CPU bundle; a model's attention heads must be >= 32 wide), and
compact JSON for structured outputs (as the cluster judge's ``engine_kwargs`` set it). Used
by the CPU test of the open-judge path and for the docs' localize-bench table; on a GPU cluster, apply
the RayService instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

APP_NAME = "raystep-judge"
AUTH_INGRESS = "raystep.serve.llm_ingress:BearerAuthIngress"


def app_args(
    model: str, model_id: str, api_key_env: str | None = None, max_model_len: int = 2048
) -> dict[str, Any]:
    """``build_openai_app``'s arguments: one CPU ``LLMConfig``, and the key-checking ingress if asked."""
    from ray.serve.llm import LLMConfig

    llm = LLMConfig(
        model_loading_config={"model_id": model_id, "model_source": str(model)},
        engine_kwargs={
            "dtype": "float32",
            "max_model_len": max_model_len,
            "enforce_eager": True,
            "distributed_executor_backend": "mp",
            # compact JSON under a schema: without it a weak model (greedy) can spend every token on
            # whitespace between the fields and the reply is cut off before it closes
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        },
        placement_group_config={"bundles": [{"CPU": 1}]},
        deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
    )
    args: dict[str, Any] = {"llm_configs": [llm]}
    if api_key_env:
        args["ingress_cls_config"] = {
            "ingress_cls": AUTH_INGRESS,
            "ingress_extra_kwargs": {"api_key_env": api_key_env},
        }
    return args


def start(
    model: str, model_id: str, port: int, api_key_env: str | None = None, max_model_len: int = 2048
) -> str:
    """Deploy the judge on the running Ray (``ray.init`` first) and return its OpenAI base URL."""
    from ray import serve
    from ray.serve.llm import build_openai_app

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_openai_app(app_args(model, model_id, api_key_env, max_model_len))
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://127.0.0.1:{port}/v1"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model folder (or hub name) to serve")
    parser.add_argument("--model-id", default="judge", help="the name clients pass as model")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument(
        "--api-key-env", default=None, help="environment variable whose key requests must carry"
    )
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    args = parser.parse_args()
    import ray

    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    if args.api_key_env:
        if not os.environ.get(args.api_key_env):
            parser.error(f"${args.api_key_env} is empty: set the key the judge should check")
        env[args.api_key_env] = os.environ[args.api_key_env]
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, runtime_env={"env_vars": env})
    started = time.time()
    url = start(args.model, args.model_id, args.port, args.api_key_env, args.max_model_len)
    print(f"judge {args.model_id} up at {url} in {time.time() - started:.0f} s (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
