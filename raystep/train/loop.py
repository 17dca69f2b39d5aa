"""The Ray Train worker recipe: DeepSpeed ZeRO 2/3 Step-DPO with checkpoints, resume and export.

``train_loop`` runs on every worker of a ``TorchTrainer``. It receives the validated ``RunConfig`` as
JSON (``WorkerJob``), rebuilds it with pydantic, and runs the recipe in named parts: ``setup_data``
(tokenized pairs and the ``TrainPlan``), ``setup_engine`` (policy, LoRA, ZeRO-3 loading, DeepSpeed),
``setup_live_reference``, ``restore`` (the latest checkpoint), ``setup_reference`` (stored or scored
reference log-probs), ``train`` (the step loop) and ``export_run``. The same code runs with NCCL and
bf16 on GPUs and with gloo and fp32 on CPU.

Checkpoints: every rank writes its DeepSpeed shard into its own local folder and calls
``ray.train.report(metrics, checkpoint=...)``; Ray merges the folders on the run's storage. On a
restart (after a worker failure or a rerun) ``ray.train.get_checkpoint()`` gives the latest one, the
engine, optimizer and scheduler state are loaded from it, and the deterministic ``TrainPlan`` continues at
the saved step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from raystep.config import ModelConfig, RunConfig, TrainConfig
from raystep.train.plan import TrainPlan, digest

CKPT_TAG = "ds"
STATE_FILE = "raystep_state.json"
REF_FILE = "reference.json"


@dataclass
class WorkerJob:
    """What Ray ships to each worker: the config as pydantic JSON, the run's pair rows and its folder.

    No setting is copied here: every knob is read from the config the worker validates again.
    """

    config: str
    """``RunConfig.model_dump_json()`` (``train.tracking_uri`` already resolved by the driver)."""
    rows: list[dict[str, Any]]
    run_dir: str
    fault: dict[str, Any] | None = None
    """Test hook: ``{"step": K, "rank": r, "marker": path}`` makes rank r exit at step K once."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def train_dir(self) -> Path:
        return Path(self.run_dir) / "train"

    @property
    def model_dir(self) -> Path:
        return Path(self.run_dir) / "model"


@dataclass
class Worker:
    """This worker's place in the run and the run-wide objects every part of the recipe shares."""

    config: RunConfig
    job: WorkerJob
    rank: int
    world: int
    device: torch.device
    attention: str
    dtype: torch.dtype
    started: float

    @property
    def train(self) -> TrainConfig:
        return self.config.train

    def phase(self, name: str) -> None:
        if self.rank == 0:
            print(f"[raystep train] {name} at {time.perf_counter() - self.started:.1f}s", flush=True)


@dataclass
class Data:
    """The tokenized pairs and the order they are consumed in."""

    pairs: list[Any]
    plan: TrainPlan
    pad_id: int


def tokenize_run_pairs(config: RunConfig, rows: list[dict[str, Any]], tokenizer: Any) -> list[Any]:
    """The run's pairs tokenized exactly as training sees them (the driver's token count uses it too)."""
    from raystep.train.pairs import tokenize_pairs

    t = config.train
    return tokenize_pairs(
        rows,
        tokenizer,
        template=config.model.template,
        mode=t.mode,
        max_length=t.max_length,
        max_prompt_length=t.max_prompt_length,
    )


def load_tokenizer(model: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        model.tokenizer or model.path, trust_remote_code=model.trust_remote_code
    )


def use_bf16(t: TrainConfig) -> bool:
    return t.precision == "bf16" or (t.precision == "auto" and t.use_gpu)


def deepspeed_config(t: TrainConfig, plan: TrainPlan) -> dict[str, Any]:
    """The DeepSpeed config: ZeRO stage, offload, precision, optimizer; batch sizes from the plan."""
    zero: dict[str, Any] = {"stage": t.zero_stage, "overlap_comm": t.use_gpu, "contiguous_gradients": True}
    if t.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if t.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": t.use_gpu}
        if t.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": t.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum,
        "train_batch_size": plan.effective_batch_size,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(t)},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": t.weight_decay,
                # torch's AdamW (foreach on GPU) needs no op build; with offload DeepSpeed's C++ CPU Adam
                "torch_adam": t.offload == "none",
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _scheduler_factory(t: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    warmup = int(round(t.warmup_ratio * total_steps))

    def build(optimizer: Any) -> Any:
        return get_scheduler(
            t.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
        )

    return build


def load_policy(model: ModelConfig, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(
        model.path, dtype=dtype, attn_implementation="sdpa", trust_remote_code=model.trust_remote_code
    )
    policy.config.use_cache = False
    return policy


def setup_worker(job: WorkerJob) -> Worker:
    """Validate the shipped config, pick this rank's device and attention kernel, seed, record the rank."""
    import ray.train

    from raystep.train.attention import resolve

    config = RunConfig.model_validate_json(job.config)
    t = config.train
    ctx = ray.train.get_context()
    if t.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()  # this worker's GPU under Ray's CUDA_VISIBLE_DEVICES
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    torch.manual_seed(t.seed)
    worker = Worker(
        config=config,
        job=job,
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        device=device,
        attention=resolve(t.attention, device),
        dtype=torch.bfloat16 if use_bf16(t) else torch.float32,
        started=time.perf_counter(),
    )
    _record_worker(job.train_dir, worker.rank, worker.world)
    return worker


def setup_data(w: Worker) -> Data:
    """Tokenize the pairs and fix the data order for this world size."""
    tokenizer = load_tokenizer(w.config.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pairs = tokenize_run_pairs(w.config, w.job.rows, tokenizer)
    return Data(pairs, TrainPlan.for_run(w.train, len(pairs), w.world), pad_id)


def skip_inference_comm_build() -> None:
    """Keep DeepSpeed from compiling its shared-memory all-reduce when its comm starts on CPU (about 50 s
    on 2 cores, again in every new virtualenv): only DeepSpeed inference's ``inference_all_reduce`` uses
    it, never training, whose collectives are torch.distributed's."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def setup_engine(w: Worker, plan: TrainPlan) -> tuple[Any, Any, dict[str, Any]]:
    """The policy (LoRA, gradient checkpointing) in a DeepSpeed engine: ``(engine, hf_zero3, ds_config)``.

    Under ZeRO-3 the weights load through ``deepspeed.zero.Init`` (``HfDeepSpeedConfig`` must stay alive
    until training ends), so each rank materialises only its slice.
    """
    import deepspeed

    from raystep.train.export import lora_config

    t = w.train
    ds_config = deepspeed_config(t, plan)
    skip_inference_comm_build()
    hf_zero3 = None
    if t.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo")  # wraps Ray's process group
        hf_zero3 = HfDeepSpeedConfig(ds_config)
    model = load_policy(w.config.model, w.dtype)
    if t.lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(t.lora))
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if t.lora.enabled:
            model.enable_input_require_grads()
    w.phase("model loaded")
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=_scheduler_factory(t, plan.total_steps),
    )
    w.phase("deepspeed ready")
    return engine, hf_zero3, ds_config


def setup_live_reference(w: Worker, ds_config: dict[str, Any]) -> Any | None:
    """The frozen reference model for ``train.reference: live`` (None for precomputed log-probs)."""
    if w.train.reference != "live":
        return None
    ref_model = load_policy(w.config.model, w.dtype)
    ref_model.eval().requires_grad_(False)
    if w.train.zero_stage != 3:
        return ref_model.to(w.device)
    import deepspeed

    ref_cfg = {k: v for k, v in ds_config.items() if k not in ("optimizer",)}
    ref_cfg["zero_optimization"] = {"stage": 3}
    ref_model, *_ = deepspeed.initialize(model=ref_model, config=ref_cfg)
    return ref_model


def restore(engine: Any) -> tuple[int, dict[int, tuple[float, float]] | None]:
    """Resume from Ray's latest checkpoint: engine, optimizer and scheduler state; ``(step, ref_table)``."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, None
    with checkpoint.as_directory() as ckpt_dir:
        engine.load_checkpoint(
            ckpt_dir, tag=CKPT_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        step = int(json.loads((Path(ckpt_dir) / STATE_FILE).read_text())["step"])
        ref_table = None
        if (Path(ckpt_dir) / REF_FILE).exists():
            raw = json.loads((Path(ckpt_dir) / REF_FILE).read_text())
            ref_table = {int(k): (v[0], v[1]) for k, v in raw.items()}
    return step, ref_table


def setup_reference(w: Worker, engine: Any, data: Data, start_step: int, ref_table: Any) -> Any:
    """Reference log-probs for ``precomputed``: from the checkpoint, the rows, the stored table, or scored
    now by the untouched policy (each rank a share, gathered); attached to the pairs. Returns the table."""
    import torch.distributed as dist

    from raystep.train import reference as refmod

    if w.train.reference != "precomputed":
        return ref_table
    rows, t = w.job.rows, w.train
    fingerprint = {
        "model": w.config.model.path,
        "mode": t.mode,
        "template": w.config.model.template,
        "max_length": t.max_length,
        "max_prompt_length": t.max_prompt_length,
        "pairs": digest([hash_row(r) for r in rows]),
    }
    stored = w.job.train_dir / "reference.parquet"
    if ref_table is None:
        ref_table = refmod.table_from_rows(rows) or refmod.read_reference(stored, fingerprint)
    if ref_table is None:
        if start_step > 0:
            raise RuntimeError("resuming without stored reference log-probs: the policy has already moved")
        engine.eval()
        share = refmod.score_pairs(
            engine,
            data.pairs,
            batch_pairs=max(1, t.micro_batch_size),
            pack_tokens=t.pack_tokens,
            device=w.device,
            rank=w.rank,
            world_size=w.world,
            pad_id=data.pad_id,
            attention=w.attention,
        )
        gathered: list[Any] = [None] * w.world
        dist.all_gather_object(gathered, share)
        ref_table = {k: v for part in gathered for k, v in part.items()}
        if w.rank == 0:
            refmod.write_reference(stored, rows, ref_table, fingerprint)
    refmod.attach(data.pairs, ref_table)
    return ref_table


def train(w: Worker, engine: Any, ref_model: Any, data: Data, start_step: int, ref_table: Any) -> None:
    """The step loop: micro-batches -> loss -> backward -> optimizer step; one log row per step."""

    from raystep.train.batch_loss import batch_loss
    from raystep.train.metrics import (
        FlopCount,
        StepLog,
        StepTotals,
        flops_utilisation,
        plot_metrics,
        step_metrics,
    )
    from raystep.train.pairs import build_batch
    from raystep.train.tracking import Trackers

    t, plan, rank = w.train, data.plan, w.rank
    total = plan.total_steps
    layout = "shared" if t.prefix_sharing else "two_sequence"
    device_name = torch.cuda.get_device_name(w.device) if t.use_gpu else "cpu"
    flop_count = FlopCount.of(engine)  # under ZeRO-3 from DeepSpeed's full sizes (ds_numel)
    log = StepLog(w.job.train_dir)
    if rank == 0:
        log.start(start_step, total)
    trackers = Trackers.open(w.config, w.job.run_dir, rank)
    w.phase(f"reference ready, training from step {start_step} ({w.attention} attention)")

    engine.train()
    for step in range(start_step, total):
        _maybe_fault(w.job.fault, step, rank)
        t0 = time.perf_counter()
        totals = StepTotals(w.device)
        for micro in plan.rank_micro_batches(step, rank):
            batch = build_batch(
                [data.pairs[i] for i in micro], layout, t.pack_tokens, data.pad_id, w.attention
            )
            batch = batch.to(w.device)
            out = batch_loss(engine, batch, t, ref_model)
            engine.backward(out.loss)
            engine.step()
            totals.add(out, batch, flop_count)
        sums = totals.all_reduce()
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {
            "step": step + 1,
            "epoch": plan.epoch_of(step),
            **step_metrics(sums, seconds),
            "lr": float(engine.get_lr()[0]),
            "pairs_digest": digest(plan.step_pairs(step)),
            "mfu": flops_utilisation(sums["flops"], seconds, device_name, w.world) if t.use_gpu else None,
        }
        if rank == 0:
            log.log(row)
            trackers.log(row)
        done = step + 1
        # metrics go to the step log and the trackers above; Ray gets them with each checkpoint only, since
        # a report waits for the controller's next poll (2 s) and would pace every faster step to it
        if done % t.checkpoint_every_steps == 0 or done == total:
            _save_and_report(engine, row, done, rank, ref_table)

    if rank == 0:
        log.finish(total)
        plot_metrics(log.rows(), w.job.train_dir)
    trackers.close()
    w.phase("training done")


def train_loop(job: dict[str, Any]) -> None:
    """Ray Train worker entry (``TorchTrainer(train_loop, train_loop_config=WorkerJob(...).as_dict())``)."""
    from raystep.train.export import export_run

    w = setup_worker(WorkerJob(**job))
    data = setup_data(w)
    engine, hf_zero3, ds_config = setup_engine(w, data.plan)
    ref_model = setup_live_reference(w, ds_config)
    start_step, ref_table = restore(engine)
    ref_table = setup_reference(w, engine, data, start_step, ref_table)
    train(w, engine, ref_model, data, start_step, ref_table)
    if hf_zero3 is not None:  # the export loads a plain (unpartitioned) copy on rank 0 only
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        del hf_zero3
    export_run(engine, w.config, w.job.model_dir, w.dtype)
    w.phase("exported")


def _maybe_fault(fault: dict[str, Any] | None, step: int, rank: int) -> None:
    if not fault or step != int(fault["step"]) or rank != int(fault.get("rank", 1)):
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"step": step, "rank": rank, "pid": os.getpid()}))
    os._exit(1)


def _record_worker(train_dir: Path, rank: int, world: int) -> None:
    """One line per worker start in ``train/workers.jsonl``: where each rank ran (audits multi-node runs)."""
    import socket

    import ray

    from raystep.records import append_jsonl

    append_jsonl(
        train_dir / "workers.jsonl",
        [
            {
                "rank": rank,
                "world_size": world,
                "node_id": ray.get_runtime_context().get_node_id(),
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "time": time.time(),
            }
        ],
    )


def _save_and_report(engine: Any, row: dict[str, Any], step: int, rank: int, ref_table: Any) -> None:
    """Each rank saves its DeepSpeed shard locally; Ray merges the folders into one checkpoint."""
    import ray.train

    local = Path(tempfile.mkdtemp(prefix=f"raystep-ckpt-{step}-r{rank}-"))
    try:
        engine.save_checkpoint(str(local), tag=CKPT_TAG)
        if rank == 0:
            (local / STATE_FILE).write_text(json.dumps({"step": step}))
            if ref_table is not None:
                (local / REF_FILE).write_text(json.dumps({str(k): list(v) for k, v in ref_table.items()}))
        ray.train.report(
            row,
            checkpoint=ray.train.Checkpoint.from_directory(str(local)),
            checkpoint_dir_name=f"step-{step:06d}",
        )
        # Block until the controller has committed it: a failure right after this step must find it.
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def hash_row(row: dict[str, Any]) -> int:
    """A stable integer per pair row (its public fields), for the reference fingerprint."""
    import zlib

    text = json.dumps([row.get(k) for k in ("prompt", "initial_reason_steps", "chosen", "rejected")])
    return zlib.crc32(text.encode())
