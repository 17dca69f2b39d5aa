"""Load another checkpoint into the engine ``raystep serve`` already runs: one engine start per experiment.

The demo, the sweep and the ablation evaluate many models of one architecture and tokenizer (the warm-up
policy, then each trained arm). A ``ray.serve.llm`` start costs about a minute on a 2-core machine (almost
all of it importing vLLM in three processes); loading a tiny checkpoint into the running engine costs
milliseconds. :func:`swap_weights` does that on every replica of raystep's app, through
``ray.serve.llm``'s ``collective_rpc`` (a Python call on the deployment handle: there is no HTTP route to
it), then empties the prefix cache so no answer reuses the old model's KV blocks.

vLLM's own ``reload_weights`` is not enough on its CPU backend (0.29): an embedding, and with tied
embeddings the LM head, keeps a oneDNN matmul handle built from the tensor that was loaded, and the reload
loads into a temporary copy, so the head keeps projecting with the old weights (the model then answers
as neither checkpoint). :class:`WeightSwap`, vLLM's worker extension for raystep's engines, rebuilds
those handles from the reloaded weights; ``tests/test_serve.py`` checks the swapped engine against
``transformers`` on the new weights and on the old ones after swapping back.

A replica that Serve restarts loads ``serve.model`` again, not the swapped weights: use this on an app
whose replicas the caller watches (a local experiment), not on a long-lived deployment.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

EXTENSION = "raystep.serve.swap.WeightSwap"
"""``worker_extension_cls`` of raystep's served engines (``raystep.engine_args``)."""

SAME_KEYS = (
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "tie_word_embeddings",
    "max_position_embeddings",
)
"""``config.json`` keys two checkpoints must share for one to load into an engine built for the other."""


class WeightSwap:
    """Mixed into vLLM's worker (``worker_extension_cls``): what ``collective_rpc`` may call by name."""

    def raystep_load_weights(self, path: str) -> str:
        """Load the checkpoint at ``path`` in place; returns ``path`` once this worker serves it."""
        from vllm.platforms import current_platform

        runner = self.model_runner  # type: ignore[attr-defined]
        runner.reload_weights(weights_path=path)
        if current_platform.is_cpu():
            _rebuild_cpu_embedding_handles(runner.get_model())
        return path


def _rebuild_cpu_embedding_handles(model: Any) -> int:
    """Rebuild the oneDNN handles of embeddings / LM heads from their (reloaded) weights."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    rebuilt = 0
    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding) and hasattr(module, "cpu_linear"):
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)  # as its loader does
            rebuilt += 1
    return rebuilt


def check_swappable(serving: str | Path, model_dir: str | Path) -> None:
    """Refuse a checkpoint the running engine cannot take: another architecture, shape or tokenizer."""
    a, b = Path(serving), Path(model_dir)
    if a.resolve() == b.resolve():
        return
    ca, cb = (json.loads((p / "config.json").read_text()) for p in (a, b))
    differ = [k for k in SAME_KEYS if ca.get(k) != cb.get(k)]
    if _tokenizer(a) != _tokenizer(b):
        differ.append("tokenizer")
    if differ:
        raise ValueError(
            f"cannot load {b} into the engine serving {a}: they differ in {', '.join(differ)}; serve it anew"
        )


@functools.cache
def _tokenizer(folder: Path) -> tuple[str, Any]:
    """The tokenizer the engine would load, as text: an exported model's files may be written differently
    (``save_pretrained`` names another class) and still load as the same tokenizer. Cached: an experiment
    compares the served model's against every checkpoint it loads, and a model folder does not change."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return tok.backend_tokenizer.to_str(), tok.chat_template


def swap_weights(model_dir: str | Path, app_name: str) -> list[str]:
    """Load ``model_dir`` into every replica of ``app_name``'s engine; returns what each worker loaded.

    The caller checks the checkpoint fits (:func:`check_swappable`). Requests in flight finish on
    whichever weights they meet: call this between evaluations, not during one.
    """
    from ray import serve
    from ray.llm._internal.serve.utils.broadcast import broadcast

    handle = serve.get_deployment_handle(_engine_deployment(app_name), app_name)
    try:
        results = broadcast(
            handle, "collective_rpc", kwargs={"method": "raystep_load_weights", "args": (str(model_dir),)}
        )
        broadcast(handle, "reset_prefix_cache")
    finally:
        # the handle's router runs in a thread of this process and would outlive the app (and this Ray
        # session: in a later one its metrics pusher fails every 10 s on objects of the old session)
        handle.shutdown()
    loaded = [path for replica in results for path in replica]
    if not loaded or set(loaded) != {str(model_dir)}:
        raise RuntimeError(f"{app_name}: the engine's workers loaded {loaded}, not {model_dir}")
    return loaded


def _engine_deployment(app_name: str) -> str:
    """The name of the app's ``LLMServer`` deployment (``ray.serve.llm`` names it after the model id)."""
    from ray import serve

    names = list(serve.status().applications[app_name].deployments)
    engines = [n for n in names if n.startswith("LLMServer")]
    if len(engines) != 1:
        raise RuntimeError(f"{app_name}: expected one LLMServer deployment, found {names}")
    return engines[0]
