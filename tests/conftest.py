"""Session fixtures: the shared data folder, a tiny model built here, and one local Ray.

Nothing is downloaded: the tiny model is a 2-layer Qwen2 with a BPE tokenizer trained on GSM8K text
from ``../shared/data`` (seconds), saved and loaded through the same HF paths a hub model takes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# sample_pairs.py: fixture pairs shared with benchmarks/bench_train.py
sys.path.append(str(REPO / "benchmarks"))


def data_dir() -> Path:
    """``$RAYSTEP_DATA`` or the ``shared/data`` folder beside the checkout (as the package finds it)."""
    from raystep.datasets import default_data_dir

    path = default_data_dir()
    if path is None:
        where = os.environ.get("RAYSTEP_DATA") or REPO.parent / "shared" / "data"
        pytest.exit(f"benchmark data not found at {where}; set RAYSTEP_DATA", returncode=3)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return data_dir()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A saved tiny Qwen2 + tokenizer folder (random weights)."""
    from raystep.tiny import build_tiny_model, gsm8k_texts

    out = tmp_path_factory.mktemp("tiny-model")
    return build_tiny_model(out, gsm8k_texts(shared_data / "gsm8k" / "train.jsonl", limit=2000))


from raystep.local_ray import local_start_kwargs  # noqa: E402

RAY_INIT_KWARGS = dict(
    # a fresh local instance (never a `ray start` cluster another job left running) with the CPUs, worker
    # environment and start-up concurrency a local raystep run has: with 4 CPUs the demo's stages waited
    # forever for one
    **local_start_kwargs(),
    include_dashboard=False,
    log_to_driver=False,
    configure_logging=False,
)


def start_local_ray(**overrides) -> None:
    """``ray.init`` of a local Ray as the tests want it (``RAY_INIT_KWARGS`` plus ``overrides``), its
    services on 127.0.0.1 only, as a local raystep run has them."""
    import ray

    from raystep.local_ray import loopback_only

    with loopback_only() as local:
        ray.init(**{**RAY_INIT_KWARGS, **overrides}, **local)


@pytest.fixture
def ray_local():
    """A local Ray, started on first use and kept for the session.

    Tests that need their own cluster (multi-node, job submission) call ``ray.shutdown()`` first;
    the next test that asks for this fixture starts the local one again.
    """
    import ray

    if not ray.is_initialized():
        start_local_ray()
    return ray


@pytest.fixture(scope="session", autouse=True)
def _shutdown_ray_at_end():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def serve_starts(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The models ``raystep.serve.run.start`` is asked to serve in this test (each an engine start); the
    starts still happen."""
    from raystep.serve import run as serve_run

    starts: list[str | None] = []
    real_start = serve_run.start

    def counted(config):
        starts.append(config.serve.model)
        return real_start(config)

    monkeypatch.setattr(serve_run, "start", counted)
    return starts
