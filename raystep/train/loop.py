"""The Ray Train worker loop: DeepSpeed ZeRO 2/3 Step-DPO with checkpoints, resume and export.

One function (``train_loop``) runs on every worker of a ``TorchTrainer``. The same code runs with NCCL
and bf16 on GPUs and with gloo and fp32 on CPU; ``LoopSettings`` is the plain-dict view of the config it
needs (Ray pickles it to every worker).

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from raystep.train.plan import TrainPlan, digest

CKPT_TAG = "ds"
STATE_FILE = "raystep_state.json"
REF_FILE = "reference.json"


@dataclass
class LoopSettings:
    """Everything a worker needs, as plain data."""

    model_path: str
    tokenizer_path: str
    template: str
    rows: list[dict[str, Any]]
    train_dir: str
    model_dir: str
    mode: str = "stepdpo"
    loss: str = "sigmoid"
    beta: float = 0.5
    label_smoothing: float = 0.0
    nll_weight: float = 0.0
    reference: str = "precomputed"
    prefix_sharing: bool = True
    pack_tokens: int = 4096
    attention: str = "auto"
    learning_rate: float = 5e-7
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    epochs: int = 1
    max_steps: int | None = None
    global_batch_size: int = 128
    micro_batch_size: int = 1
    max_length: int = 1024
    max_prompt_length: int = 512
    use_gpu: bool = False
    zero_stage: int = 3
    offload: str = "none"
    precision: str = "auto"
    gradient_checkpointing: bool = True
    checkpoint_every_steps: int = 50
    seed: int = 42
    model_dtype: str = "auto"
    trust_remote_code: bool = False
    lora: dict[str, Any] | None = None
    log_to: list[str] = field(default_factory=list)
    tracking_uri: str = ""
    tracking_dir: str = ""
    run_name: str = "run"
    fault: dict[str, Any] | None = None
    """Test hook: ``{"step": K, "rank": r, "marker": path}`` makes rank r exit at step K once."""
    export: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokenize_settings_pairs(s: LoopSettings, tokenizer: Any) -> list[Any]:
    """The run's pairs tokenized exactly as training sees them (the driver's token count uses it too)."""
    from raystep.train.pairs import tokenize_pairs

    return tokenize_pairs(
        s.rows,
        tokenizer,
        template=s.template,
        mode=s.mode,
        max_length=s.max_length,
        max_prompt_length=s.max_prompt_length,
    )


def use_bf16(s: LoopSettings) -> bool:
    return s.precision == "bf16" or (s.precision == "auto" and s.use_gpu)


def deepspeed_config(s: LoopSettings, plan: TrainPlan) -> dict[str, Any]:
    """The DeepSpeed config: ZeRO stage, offload, precision, optimizer; batch sizes from the plan."""
    zero: dict[str, Any] = {"stage": s.zero_stage, "overlap_comm": s.use_gpu, "contiguous_gradients": True}
    if s.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if s.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": s.use_gpu}
        if s.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": s.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": s.micro_batch_size,
        "gradient_accumulation_steps": plan.grad_accum,
        "train_batch_size": plan.effective_batch_size,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(s)},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": s.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": s.weight_decay,
                # torch's AdamW (foreach on GPU) needs no op build; with offload DeepSpeed's C++ CPU Adam
                "torch_adam": s.offload == "none",
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _scheduler_factory(s: LoopSettings, total_steps: int):
    from transformers import get_scheduler

    warmup = int(round(s.warmup_ratio * total_steps))

    def build(optimizer: Any) -> Any:
        return get_scheduler(
            s.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
        )

    return build


def load_policy(s: LoopSettings, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        s.model_path, dtype=dtype, attn_implementation="sdpa", trust_remote_code=s.trust_remote_code
    )
    model.config.use_cache = False
    return model


def _all_sum(values: torch.Tensor) -> list[float]:
    """Sum across ranks, then the step's single device-to-host copy."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.all_reduce(values)
    return values.cpu().tolist()


def _maybe_fault(s: LoopSettings, step: int, rank: int) -> None:
    f = s.fault
    if not f or step != int(f["step"]) or rank != int(f.get("rank", 1)):
        return
    marker = Path(f["marker"])
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"step": step, "rank": rank, "pid": os.getpid()}))
    os._exit(1)


def _trackers(s: LoopSettings, rank: int) -> list[tuple[str, Any]]:
    """MLflow / W&B through Ray's integrations, on rank 0 only; empty when none is configured."""
    if rank != 0:
        return []
    trackers: list[tuple[str, Any]] = []
    if "mlflow" in s.log_to:
        from ray.air.integrations.mlflow import setup_mlflow

        mlflow = setup_mlflow(
            tracking_uri=s.tracking_uri,
            experiment_name=s.run_name,
            create_experiment_if_not_exists=True,
            run_name=s.run_name,
            rank_zero_only=False,
        )
        trackers.append(("mlflow", mlflow))
    if "wandb" in s.log_to:
        from ray.air.integrations.wandb import setup_wandb

        if not os.environ.get("WANDB_API_KEY"):
            os.environ.setdefault("WANDB_MODE", "offline")  # no key: log locally, `wandb sync` later
        Path(s.tracking_dir, "wandb").mkdir(parents=True, exist_ok=True)
        run = setup_wandb(project="raystep", name=s.run_name, dir=s.tracking_dir, rank_zero_only=False)
        trackers.append(("wandb", run))
    return trackers


def _track(trackers: list[tuple[str, Any]], row: dict[str, Any]) -> None:
    numeric = {k.replace("/", "_"): v for k, v in row.items() if isinstance(v, (int, float))}
    for kind, client in trackers:
        if kind == "mlflow":
            client.log_metrics(numeric, step=row["step"])
        else:
            client.log(numeric, step=row["step"])


def _close_trackers(trackers: list[tuple[str, Any]]) -> None:
    for kind, client in trackers:
        if kind == "mlflow":
            client.end_run()
        else:
            client.finish()


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker entry (``TorchTrainer(train_loop, train_loop_config=settings.as_dict())``)."""
    import deepspeed
    import ray.train
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from raystep.train import reference as refmod
    from raystep.train.attention import resolve
    from raystep.train.export import gather_state_dict, lora_config, save_hf_model
    from raystep.train.metrics import FlopCount, StepLog, flops_utilisation, plot_metrics
    from raystep.train.pairs import build_batch
    from raystep.train.step import StepSettings, dpo_step

    s = LoopSettings(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    t_start = time.perf_counter()

    def phase(name: str) -> None:
        if rank == 0:
            print(f"[raystep train] {name} at {time.perf_counter() - t_start:.1f}s", flush=True)

    if s.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()  # this worker's GPU under Ray's CUDA_VISIBLE_DEVICES
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    torch.manual_seed(s.seed)
    attention = resolve(s.attention, device)
    dtype = torch.bfloat16 if use_bf16(s) else torch.float32

    _record_worker(Path(s.train_dir), rank, world)
    tokenizer = AutoTokenizer.from_pretrained(s.tokenizer_path, trust_remote_code=s.trust_remote_code)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pairs = tokenize_settings_pairs(s, tokenizer)
    plan = TrainPlan(
        len(pairs), s.global_batch_size, s.micro_batch_size, world, s.epochs, s.seed, s.max_steps
    )
    plan.check()
    total = plan.total_steps

    ds_config = deepspeed_config(s, plan)
    hf_zero3 = None
    if s.zero_stage == 3:
        # ZeRO-3 aware loading (deepspeed.zero.Init): each rank materialises only its slice of the weights
        from transformers.integrations import HfDeepSpeedConfig

        deepspeed.init_distributed(dist_backend="nccl" if s.use_gpu else "gloo")  # wraps Ray's process group
        hf_zero3 = HfDeepSpeedConfig(ds_config)
    model = load_policy(s, dtype)
    if s.lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(s.lora))
    if s.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if s.lora:
            model.enable_input_require_grads()
    phase("model loaded")
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=_scheduler_factory(s, total),
    )
    flop_count = FlopCount.of(engine)  # under ZeRO-3 from DeepSpeed's full sizes (ds_numel)

    phase("deepspeed ready")
    ref_model = None
    if s.reference == "live":
        ref_model = load_policy(s, dtype)
        ref_model.eval().requires_grad_(False)
        if s.zero_stage == 3:
            ref_cfg = {k: v for k, v in ds_config.items() if k not in ("optimizer",)}
            ref_cfg["zero_optimization"] = {"stage": 3}
            ref_model, *_ = deepspeed.initialize(model=ref_model, config=ref_cfg)
        else:
            ref_model.to(device)

    # Resume: engine + optimizer + scheduler state, and the step to continue from.
    start_step = 0
    ref_table = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            engine.load_checkpoint(
                ckpt_dir, tag=CKPT_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            state = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
            start_step = int(state["step"])
            if (Path(ckpt_dir) / REF_FILE).exists():
                raw = json.loads((Path(ckpt_dir) / REF_FILE).read_text())
                ref_table = {int(k): (v[0], v[1]) for k, v in raw.items()}

    train_dir = Path(s.train_dir)
    fingerprint = {
        "model": s.model_path,
        "mode": s.mode,
        "template": s.template,
        "max_length": s.max_length,
        "max_prompt_length": s.max_prompt_length,
        "pairs": digest([hash_row(r) for r in s.rows]),
    }
    if s.reference == "precomputed":
        if ref_table is None:
            ref_table = refmod.table_from_rows(s.rows) or refmod.read_reference(
                train_dir / "reference.parquet", fingerprint
            )
        if ref_table is None:
            if start_step > 0:
                raise RuntimeError(
                    "resuming without stored reference log-probs: the policy has already moved"
                )
            engine.eval()
            share = refmod.score_pairs(
                engine,
                pairs,
                batch_pairs=max(1, s.micro_batch_size),
                pack_tokens=s.pack_tokens,
                device=device,
                rank=rank,
                world_size=world,
                pad_id=pad_id,
                attention=attention,
            )
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, share)
            ref_table = {k: v for part in gathered for k, v in part.items()}
            if rank == 0:
                refmod.write_reference(train_dir / "reference.parquet", s.rows, ref_table, fingerprint)
        refmod.attach(pairs, ref_table)

    phase(f"reference ready, training from step {start_step} ({attention} attention)")
    log = StepLog(train_dir)
    if rank == 0:
        log.start(start_step, total)
    trackers = _trackers(s, rank)
    settings = StepSettings.from_train_config(s)
    layout = "shared" if s.prefix_sharing else "two_sequence"
    device_name = torch.cuda.get_device_name(device) if s.use_gpu else "cpu"

    engine.train()
    for step in range(start_step, total):
        _maybe_fault(s, step, rank)
        t0 = time.perf_counter()
        # Metrics stay on the device until the step ends: one all-reduce and one host copy per optimizer step.
        on_device = torch.zeros(
            5, dtype=torch.float64, device=device
        )  # loss, chosen, rejected, margin, correct
        on_host = [0.0] * 5  # pairs, tokens, model FLOPs, micro-batches, padded row tokens
        for micro in plan.rank_micro_batches(step, rank):
            batch = build_batch([pairs[i] for i in micro], layout, s.pack_tokens, pad_id, attention)
            batch = batch.to(device)
            out = dpo_step(engine, batch, settings, ref_model)
            engine.backward(out.loss)
            engine.step()
            n = batch.num_pairs
            parts = (
                out.loss.detach() * n,
                out.chosen_rewards.sum(),
                out.rejected_rewards.sum(),
                out.margins.sum(),
                (out.margins > 0).sum(),
            )
            on_device += torch.stack([p.to(torch.float64) for p in parts])
            on_host[0] += n
            on_host[1] += batch.real_tokens
            on_host[2] += flop_count.flops(batch.real_tokens, batch.logit_positions, batch.attended)
            on_host[3] += 1
            on_host[4] += batch.padded_tokens
        totals = _all_sum(torch.cat([on_device, torch.tensor(on_host, dtype=torch.float64, device=device)]))
        seconds = time.perf_counter() - t0
        n_pairs = totals[5]
        row: dict[str, Any] = {
            "step": step + 1,
            "epoch": plan.epoch_of(step),
            "loss": totals[0] / n_pairs,
            "rewards/chosen": totals[1] / n_pairs,
            "rewards/rejected": totals[2] / n_pairs,
            "rewards/margin": totals[3] / n_pairs,
            "rewards/accuracy": totals[4] / n_pairs,
            "pairs": int(n_pairs),
            "tokens": int(totals[6]),
            "padding": 1 - totals[6] / totals[9],
            "seconds": seconds,
            "tokens_per_s": totals[6] / seconds,
            "lr": float(engine.get_lr()[0]),
            "pairs_digest": digest(plan.step_pairs(step)),
        }
        row["mfu"] = flops_utilisation(totals[7], seconds, device_name, world) if s.use_gpu else None
        if rank == 0:
            log.log(row)
            _track(trackers, row)
        done = step + 1
        if done % s.checkpoint_every_steps == 0 or done == total:
            _save_and_report(engine, row, done, rank, ref_table)
        else:
            ray.train.report(row)

    if rank == 0:
        log.finish(total)
        plot_metrics(log.rows(), train_dir)
    _close_trackers(trackers)
    phase("training done")
    if hf_zero3 is not None:  # the export below loads a plain (unpartitioned) copy on rank 0 only
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        del hf_zero3
    if s.export:
        state_dict = gather_state_dict(engine, s.zero_stage)
        if rank == 0 and state_dict is not None:
            from raystep.train.export import DTYPES

            export_dtype = DTYPES.get(s.model_dtype, dtype)  # "auto": the training dtype
            tmp = Path(s.model_dir).with_name(Path(s.model_dir).name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_hf_model(
                state_dict,
                s.model_path,
                tmp,
                tokenizer_path=s.tokenizer_path,
                dtype=export_dtype,
                lora=s.lora,
                trust_remote_code=s.trust_remote_code,
            )
            shutil.rmtree(s.model_dir, ignore_errors=True)
            os.replace(tmp, s.model_dir)
        if dist.is_initialized():
            dist.barrier()
        phase("exported")


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
