"""Step-DPO on a real local Ray: two Ray Train workers, DeepSpeed ZeRO-3 on CPU (gloo), a worker killed
mid-run, resume from checkpoints, a two-node cluster with shared checkpoint storage, and the HF export.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sample_pairs import gsm8k_pairs  # benchmarks/sample_pairs.py (on sys.path via conftest)

from raystep.config import load_config
from raystep.records import read_jsonl, read_parquet, write_jsonl
from raystep.train.plan import TrainPlan, digest

N_PAIRS, GLOBAL, MICRO, EPOCHS, EVERY = 16, 8, 2, 3, 2
TOTAL = N_PAIRS // GLOBAL * EPOCHS  # 6 optimizer steps


def make_config(tmp: Path, model: Path, pairs: Path, name: str, *extra: str):
    return load_config(
        None,
        [
            f"name={name}",
            f"storage.root={tmp / 'runs'}",
            f"model.path={model}",
            "model.template=qwen2-boxed",
            f"train.pairs={pairs}",
            "train.num_workers=2",
            "train.use_gpu=false",
            "train.zero_stage=3",
            f"train.global_batch_size={GLOBAL}",
            f"train.micro_batch_size={MICRO}",
            f"train.epochs={EPOCHS}",
            "train.learning_rate=0.002",
            "train.warmup_ratio=0.0",
            f"train.checkpoint_every_steps={EVERY}",
            "train.pack_tokens=1024",
            *extra,
        ],
    )


def expected_digests(seed: int = 42) -> list[str]:
    plan = TrainPlan(N_PAIRS, GLOBAL, MICRO, 2, EPOCHS, seed)
    return [digest(plan.step_pairs(s)) for s in range(TOTAL)]


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory, shared_data: Path) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(path, gsm8k_pairs(shared_data / "gsm8k" / "train.jsonl", N_PAIRS))
    return path


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory, tiny_model: Path, pair_file: Path):
    """One ZeRO-3 run on two local workers where rank 1 dies (os._exit) at step 3, once."""
    import os

    import ray
    from conftest import start_local_ray

    if not ray.is_initialized():  # the same local Ray the ``ray_local`` fixture starts
        start_local_ray()
    from raystep.train import run as train_run

    tmp = tmp_path_factory.mktemp("faulty")
    marker = tmp / "crashed.json"
    config = make_config(tmp, tiny_model, pair_file, "faulty", "train.max_failures=1")
    os.environ[train_run.FAULT_ENV] = f"3:1:{marker}"
    try:
        stats = train_run.run(config)
    finally:
        os.environ.pop(train_run.FAULT_ENV, None)
    return stats, Path(config.run_dir), marker


@pytest.mark.slow
def test_worker_killed_mid_run_resumes_without_losing_or_repeating_steps(faulty_run):
    stats, run_dir, marker = faulty_run
    assert json.loads(marker.read_text())["rank"] == 1  # the crash really happened
    events = read_jsonl(run_dir / "train" / "events.jsonl")
    assert [(e["event"], e["step"]) for e in events] == [("start", 0), ("resume", EVERY), ("finish", TOTAL)]
    rows = read_jsonl(run_dir / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, TOTAL + 1))
    assert [r["pairs_digest"] for r in rows] == expected_digests()
    assert all(r["pairs"] == GLOBAL for r in rows)
    assert stats["steps"] == stats["total_steps"] == TOTAL
    assert stats["checkpoint"].endswith(f"step-{TOTAL:06d}")
    workers = read_jsonl(run_dir / "train" / "workers.jsonl")
    assert len(workers) == 4  # two ranks, started twice


@pytest.mark.slow
def test_zero3_training_raises_reward_accuracy(faulty_run, tiny_model: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raystep.train.batch_loss import branch_logps
    from raystep.train.pairs import build_batch, tokenize_pairs

    stats, run_dir, _ = faulty_run
    rows = read_jsonl(run_dir / "train" / "metrics.jsonl")
    first, last = rows[0]["rewards/accuracy"], rows[-1]["rewards/accuracy"]
    assert last > first and rows[-1]["rewards/margin"] > rows[0]["rewards/margin"]
    assert rows[-1]["loss"] < rows[0]["loss"]
    # independent check: the exported weights, scored on all training pairs against the stored reference
    ref_rows = read_parquet(run_dir / "train" / "reference.parquet")
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(
        run_dir / "model", dtype=torch.float32, attn_implementation="sdpa"
    )
    pairs = tokenize_pairs(ref_rows, tok, template="qwen2-boxed")
    with torch.no_grad():
        logps, _ = branch_logps(model.eval(), build_batch(pairs, "two_sequence"))
    ref = torch.tensor([[r["ref_chosen_logp"], r["ref_rejected_logp"]] for r in ref_rows])
    margins = (logps[0::2] - ref[:, 0]) - (logps[1::2] - ref[:, 1])
    accuracy = (margins > 0).float().mean().item()
    assert accuracy > first and accuracy >= 0.75
    assert (run_dir / "train" / "loss.png").stat().st_size > 0 and (run_dir / "train" / "margin.png").exists()


@pytest.mark.slow
def test_exported_folder_loads_and_generates(faulty_run, tiny_model: Path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stats, run_dir, _ = faulty_run
    model_dir = Path(stats["model_dir"])
    assert model_dir == run_dir / "model"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (model_dir / name).exists(), name
    trained = load_file(model_dir / "model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    assert trained.keys() == base.keys()
    assert any(not torch.equal(trained[k], base[k]) for k in base)  # ZeRO-3 shards were gathered, and trained
    # the offline path (zero_to_fp32 on the last checkpoint) rebuilds the same weights
    from raystep.train.export import consolidate_checkpoint

    offline = consolidate_checkpoint(stats["checkpoint"])
    for name, tensor in trained.items():
        torch.testing.assert_close(offline[name].to(tensor.dtype), tensor, rtol=0, atol=0)
    # the folder loads as a whole (config, weights, tokenizer) into the model the trained tensors make:
    # same logits as the base architecture given the trained state dict, unlike the base weights
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ids = tok("Natalia sold clips to 48 of her friends.", return_tensors="pt")
    with torch.no_grad():
        base_logits = reference(**ids).logits
        reference.load_state_dict(trained, strict=False)
        torch.testing.assert_close(model(**ids).logits, reference(**ids).logits)
        assert not torch.allclose(model(**ids).logits, base_logits)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, reference.generate(**ids, max_new_tokens=8, do_sample=False))


@pytest.mark.slow
def test_two_node_cluster_checkpoints_to_shared_storage_and_resumes(
    tmp_path, tiny_model: Path, pair_file: Path
):
    import os

    import ray
    from ray.cluster_utils import Cluster
    from ray.train import WorkerGroupError

    from raystep.train import run as train_run

    ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"train_slot": 1}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, resources={"train_slot": 1})
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        shared = tmp_path / "shared-storage"
        extra = ("train.resources_per_worker={CPU: 1, train_slot: 1}", f"train.checkpoint_storage={shared}")
        marker = tmp_path / "crashed.json"
        # first attempt dies at step 3 with no retries left: only the step-2 checkpoint survives
        config = make_config(tmp_path, tiny_model, pair_file, "multinode", "train.max_failures=0", *extra)
        os.environ[train_run.FAULT_ENV] = f"3:1:{marker}"
        try:
            with pytest.raises(WorkerGroupError, match="worker"):
                train_run.run(config)
        finally:
            os.environ.pop(train_run.FAULT_ENV, None)
        assert marker.exists()
        assert sorted(p.name for p in (shared / "ray").glob("step-*")) == ["step-000002"]
        shards = sorted(p.name for p in (shared / "ray" / "step-000002" / "ds").iterdir())
        assert [s for s in shards if "optim_states" in s] == [
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        ]
        # a rerun of the same config resumes from the shared checkpoint
        stats = train_run.run(config)
        run_dir = Path(config.run_dir)
        workers = read_jsonl(run_dir / "train" / "workers.jsonl")
        nodes = {w["rank"]: w["node_id"] for w in workers[-2:]}
        assert len(set(nodes.values())) == 2, "one worker per node"
        assert {w["node_id"] for w in workers} == {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        events = read_jsonl(run_dir / "train" / "events.jsonl")
        assert [(e["event"], e["step"]) for e in events] == [("start", 0), ("resume", 2), ("finish", TOTAL)]
        rows = read_jsonl(run_dir / "train" / "metrics.jsonl")
        assert [r["pairs_digest"] for r in rows] == expected_digests()
        assert stats["steps"] == TOTAL and (run_dir / "model" / "model.safetensors").exists()
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_default_config_trains_from_another_working_directory(tmp_path, tiny_model: Path, pair_file: Path):
    """The README's way: `raystep train` in some folder with the default (relative) storage root.

    Ray Train rejects a relative storage path (``URI has empty scheme``), so this fails unless the config
    resolves ``storage.root`` (and the relative ``train.pairs``) against the working directory at load.
    """
    import shutil
    import subprocess
    import sys

    import ray

    ray.shutdown()  # the command starts its own local Ray, as a user's would
    work = tmp_path / "somewhere"
    work.mkdir()
    shutil.copy(pair_file, work / "my-pairs.jsonl")
    settings = [
        f"model.path={tiny_model}",
        "model.template=qwen2-boxed",
        "train.pairs=my-pairs.jsonl",
        "train.num_workers=1",
        "train.use_gpu=false",
        "train.zero_stage=2",
        "train.global_batch_size=8",
        "train.micro_batch_size=4",
        "train.epochs=1",
        "train.pack_tokens=1024",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "raystep.cli", "train", *[a for s in settings for a in ("--set", s)]],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = work / "runs" / "run"  # the default storage.root and name, under the working directory
    assert (run_dir / "model" / "model.safetensors").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["run_dir"] == str(run_dir)
    assert manifest["config"]["train"]["pairs"] == str(work / "my-pairs.jsonl")
    assert manifest["stages"]["train"]["status"] == "done"


@pytest.mark.slow
def test_training_metrics_reach_mlflow_and_wandb_offline(
    ray_local, tmp_path, tiny_model: Path, pair_file: Path
):
    """``train.log_to`` really logs: the run's SQLite MLflow store and an offline W&B run, read back."""
    import mlflow

    from raystep.train import run as train_run

    config = make_config(
        tmp_path,
        tiny_model,
        pair_file,
        "tracked",
        "train.num_workers=1",
        "train.zero_stage=2",
        "train.epochs=1",
        "train.log_to=[mlflow, wandb]",
    )
    train_run.run(config)
    run_dir = Path(config.run_dir)
    logged = read_jsonl(run_dir / "train" / "metrics.jsonl")
    assert len(logged) == N_PAIRS // GLOBAL

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["loss"])) for r in logged]
    accuracy = client.get_metric_history(run.info.run_id, "rewards_accuracy")
    assert [m.value for m in accuracy] == [pytest.approx(r["rewards/accuracy"]) for r in logged]

    (offline,) = (run_dir / "wandb").glob("offline-run-*/*.wandb")
    history = wandb_history(offline)
    assert [(h["step"], h["loss"]) for h in history] == [
        (r["step"], pytest.approx(r["loss"])) for r in logged
    ]


def wandb_history(path: Path) -> list[dict]:
    """The ``history`` records of an offline W&B run file, decoded with W&B's own protobuf.

    The file is a LevelDB-style log (a 7-byte header, 32 KiB blocks of records with a 7-byte header:
    crc, length, kind); W&B ships no reader for it any more, and ``wandb sync`` needs the network.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, pending, rows = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start, MIDDLE/LAST extend
        if kind in (1, 4) and length:
            record = wandb_internal_pb2.Record.FromString(pending)
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items})
    return rows


def test_training_on_cpu_does_not_build_deepspeeds_inference_all_reduce():
    """DeepSpeed compiles its shared-memory all-reduce when its comm starts on CPU (about 50 s on 2 cores,
    in every new virtualenv); training never uses it, so the worker turns the build off."""
    import importlib

    from raystep.train.loop import skip_inference_comm_build

    ds_torch = importlib.import_module("deepspeed.comm.torch")  # the package's `torch` attribute is torch
    skip_inference_comm_build()
    assert ds_torch.build_shm_op() is None
