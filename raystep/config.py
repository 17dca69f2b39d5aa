"""The run config: one validated YAML file per run, overridable with ``--set section.key=value``.

Every stage reads only its own section (plus ``storage`` and ``model``), so a stage can be rerun alone
with the same file. Unknown or mistyped keys are errors that name the key: a silently ignored typo in
a training recipe costs a GPU-day.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from raystep.errors import InputError


class ConfigError(InputError):
    """A run config that cannot be used; the message names the file and the key."""


def is_uri(path: str) -> bool:
    """``s3://bucket/x``, ``gs://…``, ``file://…``: anything with a scheme is not a local path."""
    return "://" in path


def _absolute(path: str) -> str:
    """A relative local path made absolute against the working directory the config was loaded in.

    Ray workers, Ray Train's controller and Serve replicas run in other working directories (and Ray
    Train rejects a relative storage path outright), so every path a config hands on is absolute.
    """
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def _absolute_if_local(path: str) -> str:
    """A model reference: an existing local folder becomes absolute; a hub name stays as it is."""
    return _absolute(path) if not is_uri(path) and os.path.exists(os.path.expanduser(path)) else path


LocalPath = Annotated[str, AfterValidator(_absolute)]
"""A local path (made absolute when the config loads) or a URI."""
ModelRef = Annotated[str, AfterValidator(_absolute_if_local)]
"""A hub name, a local folder (made absolute when the config loads) or a URI."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors; assignments and defaults are validated."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, validate_default=True, use_attribute_docstrings=True
    )


class StorageConfig(Section):
    """Where the run folder lives: a local path, an NFS mount or a URI such as ``s3://bucket/runs``
    (any filesystem ``pyarrow.fs`` opens; object storage holds the data stages only)."""

    root: LocalPath = "runs"
    """Parent folder of run folders: a local path (a relative one is resolved against the directory the
    command runs in), a mount shared by all nodes, or a URI pyarrow opens (``s3://bucket/runs``:
    collect, localize and rectify; train and eval need a local or mounted folder)."""


class ModelConfig(Section):
    """The policy model: a local folder or a hub name (loaded by the engines and the trainer)."""

    path: ModelRef = "Qwen/Qwen2-7B-Instruct"
    """Policy model: a local folder or a hub name."""
    tokenizer: ModelRef | None = None
    """Tokenizer folder or hub name; empty: the model's own."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype when loading (``auto``: the checkpoint's)."""
    trust_remote_code: bool = False
    """Allow model code from the hub (off: only built-in architectures)."""
    template: str = "qwen2-boxed"
    """Prompt template name from ``raystep.steps.TEMPLATES`` (``alpaca``, ``qwen2-boxed``, ``chat``)."""


class SynthPolicyConfig(Section):
    """The tiny policy the arithmetic worlds warm up themselves (``raystep.synth.policy``).

    Attention heads must be at least 32 wide (``hidden_size / num_heads >= 32``): vLLM's CPU backend
    refuses smaller ones.
    """

    vocab_size: int = Field(default=512, ge=0)
    """BPE vocabulary (digits always split); 0: byte-level, one token per character."""
    hidden_size: int = Field(default=64, ge=32)
    """Width of the Qwen2 model."""
    num_layers: int = Field(default=2, ge=1)
    """Transformer layers."""
    num_heads: int = Field(default=2, ge=1)
    """Attention heads (and key-value heads)."""
    intermediate_size: int = Field(default=192, ge=1)
    """Width of the MLP."""
    num_examples: int = Field(default=4000, ge=1)
    """Worked solutions of the ``sft`` split the warm-up trains on."""
    slip_rate: float = Field(default=0.3, ge=0.0, le=1.0)
    """Share of warm-up solutions carrying one slip (step drawn at random)."""
    slips: list[str] | None = None
    """Slip kinds drawn from (empty: the world's own; the story world's are reasoning slips only)."""
    steps: int = Field(default=1500, ge=1)
    """Optimizer steps of the warm-up."""
    batch_size: int = Field(default=16, ge=1)
    """Solutions per warm-up step."""
    learning_rate: float = Field(default=5e-3, gt=0.0)
    """Peak learning rate (AdamW, linear warm-up then cosine to a tenth)."""
    warmup_ratio: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Share of the steps spent warming the learning rate up."""
    torch_threads: int = Field(default=1, ge=1)
    """Intra-op threads: a model this small runs fastest on one (more threads fight on a busy machine)."""

    @model_validator(mode="after")
    def _head_size(self) -> SynthPolicyConfig:
        if self.hidden_size % self.num_heads or self.hidden_size // self.num_heads < 32:
            raise ValueError(
                f"hidden_size / num_heads must be a whole number >= 32 (vLLM's CPU attention), got "
                f"{self.hidden_size} / {self.num_heads}"
            )
        return self


class SynthConfig(Section):
    """Knobs of the built-in arithmetic worlds (``data.source: synth``, see ``raystep.synth``).

    The shared knobs (steps, operands, amounts) left empty take the chosen world's own default.
    """

    world: Literal["chain", "story"] = "chain"
    """``chain``: one amount and a chain of operations over numbers up to 40, whose tiny policy's
    mistakes are mostly arithmetic (``raystep.synth.world``; the demo's world). ``story``: two people,
    transfers and distractor sentences over small numbers, whose mistakes are reasoning slips
    (``raystep.synth.story``; the ablation's and the sweep's world)."""
    seed: int = 0
    """Seed of the generated problems."""
    num_problems: int = Field(default=200, ge=1)
    """Problems per split when ``data.limit`` is empty."""
    min_steps: int | None = Field(default=None, ge=1)
    """Fewest steps of a solution (default 2 in both worlds; in a story, events that change the asked
    amount)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Most steps (default 3 in both worlds; a story adds one step per distractor)."""
    min_operand: int | None = Field(default=None, ge=1)
    """Smallest operand of ``+`` / ``-`` (default 2 in both worlds)."""
    max_operand: int | None = Field(default=None, ge=1)
    """Largest operand of ``+`` / ``-`` (default 9 in both worlds)."""
    max_value: int | None = Field(default=None, ge=2)
    """Every amount stays in ``1..max_value`` (default: chain 40, story 20)."""
    max_factor: int = Field(default=3, ge=2)
    """Chain world: largest multiplier / divisor."""
    operators: list[Literal["+", "-", "*", "/"]] = Field(default_factory=lambda: ["+", "-", "*"])
    """Chain world: the operations events use."""
    max_distractors: int = Field(default=2, ge=0)
    """Story world: sentences per question that change nothing for the asked person (0..this many)."""
    kinds: list[Literal["gain", "loss", "give", "get", "double"]] = Field(
        default_factory=lambda: ["gain", "loss", "give", "get", "double"]
    )
    """Story world: the event kinds."""
    policy: SynthPolicyConfig = Field(default_factory=SynthPolicyConfig)
    """The tiny policy warmed up on the world's ``sft`` split (the demo and the ablation)."""


class DataConfig(Section):
    """The problems to build pairs from (or to evaluate on)."""

    source: str = "gsm8k"
    """``gsm8k``, ``gsm8k-stepdpo``, ``math``, ``math500``, ``jsonl``, ``parquet``, ``synth`` or ``hub``."""
    path: LocalPath | None = None
    """A local file; when empty the loader's default location (or the hub) is used."""
    hub_name: str | None = None
    """Hugging Face dataset name (or a local dataset folder) read with ``datasets.load_dataset``."""
    split: str = "train"
    """Split to read (``train``, ``test``; for synth: ``sft``, ``train``, ``test``, and ``valid`` in the
    story world)."""
    column_map: dict[str, str] = Field(default_factory=dict)
    """For generic files: our field name -> the file's column name."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first N valid problems."""
    rejects: bool = False
    """Send malformed rows to ``<stage>/rejects.jsonl`` (counted) instead of failing on the first one."""
    synth: SynthConfig = Field(default_factory=SynthConfig)
    """The arithmetic worlds' knobs, read only when ``source`` is ``synth``."""


class EngineConfig(Section):
    """How vLLM engines are placed and sized: shared by sampling (``ray.data.llm``), rollouts and serving
    (``ray.serve.llm``), so one model is loaded the same way in every stage, on CPU or GPU."""

    device: Literal["auto", "cuda", "cpu"] = "auto"
    """``auto``: ``cuda`` when the Ray cluster has GPUs, else ``cpu`` (vLLM's CPU build, ``raystep[cpu]``)."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    """GPUs per engine replica (tensor parallelism); 1 on CPU."""
    max_model_len: int | None = Field(default=None, ge=16)
    """Context length of the engine; empty: the model's own."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    """Share of each GPU's memory vLLM may take (weights + KV cache)."""
    cpu_kv_cache_gib: int = Field(default=2, ge=1)
    """KV-cache size of one CPU engine in GiB (``VLLM_CPU_KVCACHE_SPACE``)."""
    cpus_per_replica: float = Field(default=1.0, gt=0.0)
    """CPUs reserved by one engine replica on CPU (one per bundle on GPU)."""
    enforce_eager: bool | None = None
    """Skip CUDA-graph capture; empty: eager on CPU (no graphs there), graphs on GPU."""
    max_num_seqs: int | None = Field(default=None, ge=1)
    """Sequences one engine schedules per step (vLLM's ``max_num_seqs``); empty: vLLM's default. A
    sampling replica keeps 4x this (256 when empty) rows in flight, so the engine's queue never runs dry
    between batches."""
    enable_prefix_caching: bool = True
    """Share the KV cache of common prefixes: the N samples of one prompt, the rollouts of one prefix."""
    accelerator_type: str | None = None
    """Ray accelerator type to schedule on (``H100``, ``A100``...); empty: any GPU."""
    vllm_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Any other vLLM engine argument, passed as is (it wins over the keys above)."""


class EndpointConfig(Section):
    """An OpenAI-compatible completions endpoint to sample from (``sampling.engine: endpoint``): a policy
    served with ``raystep serve`` (``ray.serve.llm``), so every stage shares one engine, or any vLLM server."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """The endpoint's base URL (ending in ``/v1``)."""
    model: str = "raystep"
    """The model name the endpoint serves."""
    api_key_env: str = "RAYSTEP_API_KEY"
    """Name of the environment variable holding the endpoint's key (empty variable: no key sent)."""
    concurrency: int = Field(default=32, ge=1)
    """Requests in flight from each sampling replica."""
    max_rows_per_request: int = Field(default=16, ge=1)
    """Samples of one prompt (consecutive seeds) sent as one request with ``n`` choices, at most this
    many; keep it within the server's ``serve.limits.max_choices``. 1 for a server other than vLLM
    (each choice's token count comes from vLLM's ``return_token_ids``)."""
    max_retries: int = Field(default=5, ge=0)
    """Retries of a failed request before its row keeps the error."""
    timeout_s: float = Field(default=600.0, gt=0.0)
    """Timeout of one request."""


class SamplingConfig(Section):
    """Generation of solutions (collect) and the engine that runs it."""

    engine: Literal["vllm", "endpoint", "hf"] = "vllm"
    """``vllm`` (``ray.data.llm``'s vLLM processor, CPU or GPU, placed by the ``engine`` section),
    ``endpoint`` (requests to an already served policy, ``sampling.endpoint``) or ``hf`` (a small
    ``transformers`` fallback for machines without vLLM)."""
    n: int = Field(default=8, ge=1)
    """Solutions sampled per problem."""
    temperature: float = Field(default=0.8, ge=0.0, le=5.0)
    """Sampling temperature (the paper: 0.8)."""
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    """Nucleus sampling mass (the paper: 0.95)."""
    max_new_tokens: int = Field(default=1024, ge=1)
    """Most tokens generated per solution."""
    stop: list[str] = Field(default_factory=list)
    """Extra stop strings."""
    seed: int = 0
    """Base seed; each sample's seed derives from it, so reruns reproduce."""
    batch_size: int = Field(default=128, ge=1)
    """Rows per engine call (Ray Data batch size). On vLLM, small batches cost throughput: on the 2-core
    VM 16 reached 0.55-0.68x of a direct ``vllm.LLM`` call, 128 0.9x (``benchmarks/bench_generation.py``)."""
    concurrency: int = Field(default=1, ge=1)
    """Engine replicas (Ray Data actors)."""
    shard_size: int = Field(default=256, ge=1)
    """Rows per output shard, in every data stage (a shard is what a worker commits at once; a row is
    the unit of resume)."""
    queue_mib: int = Field(default=32, ge=1)
    """Most MiB of blocks Ray Data keeps queued between a data stage's operators (its object-store
    budget). Ray returns a block under 100 KiB (a batch of short rows) to its owner, the driver, so
    without a cap the queue behind a slow operator grows in the driver with the rows (docs/scale.md).
    Raise it when engine replicas wait for input (many GPUs, long outputs); the driver may then hold
    up to this much."""
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    """The served policy ``sampling.engine: endpoint`` sends its requests to."""


class JudgeConfig(Section):
    """An OpenAI-compatible chat model that labels steps (the paper used GPT-4)."""

    base_url: str = "https://api.openai.com/v1"
    """OpenAI-compatible endpoint of the judge model."""
    model: str = "gpt-4o"
    """Judge model name."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key: keys never live in config files."""
    max_concurrency: int = Field(default=8, ge=1)
    """Judge requests in flight."""
    requests_per_second: float = Field(default=5.0, gt=0.0)
    """Judge request rate limit (all replicas together)."""
    max_retries: int = Field(default=5, ge=0)
    """Retries of a failed judge request before the row keeps its error."""
    timeout_s: float = Field(default=60.0, gt=0.0)
    """Timeout of one judge request."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Judge sampling temperature."""
    max_tokens: int = Field(default=2048, ge=1)
    """Most tokens of a judge reply."""
    cache: bool = True
    """Cache judge replies by request (reruns cost nothing)."""
    cache_dir: LocalPath | None = None
    """Where replies are cached by request hash; empty: ``<run>/localized/judge-cache``."""
    backoff_s: float = Field(default=1.0, ge=0.0)
    """First retry delay; doubles each attempt (a server's Retry-After wins)."""
    prompt: Literal["stepdpo", "raystep"] = "raystep"
    """``stepdpo``: the paper's judge prompt word for word (Step-DPO's ``locate_error_by_gpt4.py``): the
    problem, the full reference solution and the wrong answer, closing with a ``Final Decision:`` line;
    every problem row needs its reference ``solution`` (MATH, GSM8K and the arithmetic world carry one).
    ``raystep``: the problem, the reference answer and numbered steps; works without a solution."""
    structured: Literal["auto", "json_schema", "off"] = "auto"
    """``json_schema``: ask for the verdict as JSON following a schema (OpenAI structured outputs; vLLM's
    guided decoding behind ``ray.serve.llm``), so every reply parses. ``auto``: the same, and a server that
    refuses ``response_format`` (HTTP 400/422) is asked again in free text. ``off``: free text only.
    Free-text parsing is the fallback in every mode."""
    analysis: bool = True
    """Structured replies start with the judge's step-by-step analysis (as the paper asks); off: labels only,
    the shortest reply."""
    serve: ServeConfig | None = None
    """An open judge model to host next to the pipeline with ``ray.serve.llm`` (``raystep serve --judge``,
    ``cluster/rayservice-judge.yaml``): ``serve.model`` is the judge's weights, ``serve.model_id`` must equal
    ``model``, and its ``api_key_env`` names the key the server checks (the one sent: ``api_key_env``)."""
    engine: EngineConfig | None = None
    """The served judge's vLLM engine (device, tensor parallelism, context, ``vllm_kwargs``); empty: the
    run's ``engine`` section."""

    @field_validator("structured", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` as false (and ``on`` as true): take them as the modes they spell."""
        if isinstance(value, bool):
            return "auto" if value else "off"
        return value

    @model_validator(mode="after")
    def _served_judge_matches(self) -> JudgeConfig:
        if self.serve is not None:
            if not self.serve.model:
                raise ValueError(
                    "localize.judge.serve.model must name the judge's weights (a hub name or path)"
                )
            if self.serve.model_id != self.model:
                raise ValueError(
                    f"localize.judge.serve.model_id ({self.serve.model_id!r}) must equal localize.judge.model "
                    f"({self.model!r}): the judge is asked for the model it serves"
                )
            if self.serve.api_key_env != self.api_key_env:
                raise ValueError(
                    f"localize.judge.serve.api_key_env ({self.serve.api_key_env!r}) must equal "
                    f"localize.judge.api_key_env ({self.api_key_env!r}): the key sent is the key checked"
                )
        return self


class RolloutConfig(Section):
    """Monte Carlo localization: success rate of continuations from each prefix."""

    num_rollouts: int = Field(default=8, ge=1)
    """Continuations sampled from each prefix."""
    threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    """A prefix whose success rate is <= threshold is taken as already wrong."""
    bisect: bool = True
    """Binary search over steps (log(steps) prefixes) instead of testing every prefix."""
    temperature: float = Field(default=0.8, ge=0.0)
    """Temperature of the continuations."""
    max_new_tokens: int = Field(default=1024, ge=1)
    """Most tokens per continuation."""


class LocalizeConfig(Section):
    """How the first wrong step is found."""

    methods: list[Literal["judge", "rollout", "verifier"]] = Field(default_factory=lambda: ["judge"])
    """Localizers to run: ``judge``, ``rollout``, ``verifier``."""
    combine: Literal["first", "agree", "vote"] = "first"
    """``first``: the first method's label; ``agree``: keep only rows where all methods agree."""
    verifier: str = "arithmetic"
    """Registered exact verifier name, for ``methods: [verifier]``."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    concurrency: int = Field(default=1, ge=1)
    """Localizer replicas (Ray Data actors); the judge's requests_per_second is split among them."""
    batch_size: int = Field(default=16, ge=1)
    """Samples per localizer call."""


class RectifyConfig(Section):
    """Resampling step k from the correct prefix (the paper: 20 samples, keep the correct ones)."""

    n: int = Field(default=20, ge=1)
    """Continuations sampled from the correct prefix (the paper: 20)."""
    temperature: float = Field(default=0.8, ge=0.0)
    """Temperature of the continuations."""
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    """Nucleus sampling mass of the continuations."""
    max_new_tokens: int = Field(default=1024, ge=1)
    """Most tokens per continuation."""
    max_pairs_per_sample: int = Field(default=1, ge=1)
    """Distinct chosen steps kept per wrong sample."""
    min_success_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Keep a chosen step only when its own continuations reach the answer at least this often."""
    success_rollouts: int = Field(default=0, ge=0)
    """Continuations per chosen step to measure that rate (0: do not measure)."""
    verify_chosen: bool = False
    """Run the localizer over the rectified solution and drop chosen steps it marks wrong."""


class LoraConfig(Section):
    enabled: bool = False
    """Train LoRA adapters instead of all weights."""
    r: int = Field(default=16, ge=1)
    """LoRA rank."""
    alpha: int = Field(default=32, ge=1)
    """LoRA scaling."""
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    """LoRA dropout."""
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Modules that get adapters."""


class TrainConfig(Section):
    """Step-DPO training on Ray Train + DeepSpeed. Defaults follow the paper's 7B recipe."""

    pairs: LocalPath | None = None
    """Pair files (JSONL/Parquet, public schema) to train on; empty: this run's ``pairs/``."""
    mode: Literal["stepdpo", "dpo", "sft"] = "stepdpo"
    """``dpo`` trains on full_chosen / full_rejected as whole responses (the ablation); ``sft`` is
    rejection-sampling fine-tuning: the per-token NLL of each pair's whole chosen solution
    (``initial_reason_steps + full_chosen``), no preference and no reference (the usual baseline)."""
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    """``sigmoid`` (DPO) or ``ipo``."""
    beta: float = Field(default=0.5, gt=0.0)
    """DPO temperature (the paper: 0.5 at 7B, 0.4 at 72B)."""
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5)
    """Conservative DPO label smoothing."""
    nll_weight: float = Field(default=0.0, ge=0.0)
    """Weight of an added NLL term on the chosen step."""
    reference: Literal["precomputed", "live"] = "precomputed"
    """``precomputed``: reference log-probs computed once and stored; ``live``: a frozen copy in memory."""
    prefix_sharing: bool = True
    """Pack prefix, chosen and rejected into one sequence (same loss, fewer tokens)."""
    pack_tokens: int = Field(default=4096, ge=64)
    """Token budget of one packed row when prefix sharing is on."""
    attention: Literal["auto", "flex", "sdpa", "varlen"] = "auto"
    """How packed rows attend (same numbers, different cost; see ``raystep.train.attention``).
    ``flex``: a block-sparse flex_attention ``BlockMask`` (fused kernels, CUDA; torch has no flex backward
    on CPU). ``varlen``: sdpa pair by pair on views of the packed rows (any device). ``sdpa``: one dense
    ``[B, 1, L, L]`` mask per row (the fallback; cost grows with the square of the row). ``auto``: flex on
    CUDA, varlen elsewhere."""
    learning_rate: float = Field(default=5e-7, gt=0.0)
    """Peak learning rate (the paper: 5e-7)."""
    weight_decay: float = Field(default=0.0, ge=0.0)
    """AdamW weight decay."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Fraction of steps spent warming up."""
    epochs: int = Field(default=8, ge=1)
    """Passes over the pairs."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps (overrides epochs)."""
    global_batch_size: int = Field(default=128, ge=1)
    """Pairs per optimizer step over all workers (the paper: 128)."""
    micro_batch_size: int = Field(default=1, ge=1)
    """Pairs per worker per forward pass; the rest is gradient accumulation."""
    max_length: int = Field(default=1024, ge=16)
    """Most tokens of prompt + prefix + step."""
    max_prompt_length: int = Field(default=512, ge=8)
    """Most tokens of prompt + prefix (truncated from the left)."""
    num_workers: int = Field(default=8, ge=1)
    """Ray Train workers (one per GPU)."""
    use_gpu: bool = True
    """Train on GPUs (NCCL, bf16) or CPUs (gloo, fp32)."""
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    """Ray resources per worker, e.g. ``{CPU: 8}``."""
    zero_stage: Literal[0, 1, 2, 3] = 3
    """DeepSpeed ZeRO stage."""
    offload: Literal["none", "cpu"] = "none"
    """ZeRO offload of optimizer state and parameters."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 on GPU, fp32 on CPU."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory."""
    checkpoint_every_steps: int = Field(default=50, ge=1)
    """Optimizer steps between checkpoints."""
    num_checkpoints_to_keep: int = Field(default=2, ge=1)
    """Checkpoints kept by Ray Train."""
    checkpoint_storage: LocalPath | None = None
    """Ray Train storage for checkpoints (local path, NFS mount or ``s3://``); empty: ``<run>/train``."""
    max_failures: int = Field(default=2, ge=-1)
    """Worker-group restarts Ray Train allows (resuming from the last checkpoint; -1: no limit)."""
    seed: int = 42
    """Seed of shuffling and initialisation."""
    log_to: list[Literal["mlflow", "wandb"]] = Field(default_factory=list)
    """Experiment trackers rank 0 logs every step's metrics to (Ray's ``setup_mlflow`` / ``setup_wandb``).
    W&B writes to ``<run>/wandb``, offline unless ``$WANDB_API_KEY`` is set (``wandb sync`` uploads later)."""
    tracking_uri: str | None = None
    """MLflow tracking URI (a server, ``sqlite:///…``); empty: ``$MLFLOW_TRACKING_URI``, else the SQLite
    store ``<run>/mlflow.db`` (``mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db``)."""
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @model_validator(mode="after")
    def _prompt_fits(self) -> TrainConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"train.max_prompt_length ({self.max_prompt_length}) must be < train.max_length ({self.max_length})"
            )
        if self.attention == "flex" and not self.use_gpu:
            raise ValueError(
                "train.attention=flex needs train.use_gpu=true: torch has no flex_attention backward on CPU "
                "(use auto, varlen or sdpa)"
            )
        return self


class ServeLimits(Section):
    """What one request may ask of the served model, checked by the ingress before any engine work.

    A request over a limit gets an OpenAI-style 4xx at once (before tokenizing or queueing), so one
    client's huge body, prompt or fan-out cannot fail or stall the others' requests.
    """

    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Largest request body in bytes; a bigger one gets 413 before it is read whole or parsed."""
    max_json_depth: int = Field(default=32, ge=2)
    """Deepest nesting of arrays and objects in a JSON body; deeper gets 400."""
    max_prompt_chars: int | None = Field(default=None, ge=1)
    """Most characters in one prompt (a chat request: all its messages' text); empty: 32 per token of
    ``engine.max_model_len`` (of 32768 tokens when that is empty), above what any real text needs."""
    max_choices: int = Field(default=16, ge=1)
    """Most completions one request may ask for: its prompts times ``n``."""


class ServeConfig(Section):
    """Hosting a model behind OpenAI-compatible routes."""

    model: ModelRef | None = None
    """The model folder or bucket URI to serve; empty: this run's exported ``model/``."""
    model_id: str = "raystep"
    """The name clients pass as ``model``."""
    host: str = "127.0.0.1"
    """Bind address (127.0.0.1 unless told otherwise; set an API key before binding wider)."""
    port: int = Field(default=8000, ge=1, le=65535)
    """HTTP port."""
    api_key_env: str = "RAYSTEP_API_KEY"
    """Name of the environment variable holding the key clients must send."""
    route_prefix: str = "/"
    """Route prefix of the app."""
    num_replicas: int = Field(default=1, ge=1)
    """Replicas when autoscaling is off."""
    min_replicas: int = Field(default=1, ge=0)
    """Autoscaling lower bound."""
    max_replicas: int = Field(default=1, ge=1)
    """Autoscaling upper bound."""
    max_ongoing_requests: int = Field(default=64, ge=1)
    """Requests one replica handles at once."""
    max_queued_requests: int = Field(default=-1, ge=-1)
    """Requests waiting for a replica beyond which Serve answers 503 at once (-1: no limit)."""
    ingress_cpus: float = Field(default=0.25, ge=0.0)
    """CPUs the ingress replica reserves. It only forwards HTTP; Serve's default (one whole CPU) left a
    4-CPU node with none for the Ray Data tasks of a stage sampling through the served model."""
    weight_swap: bool = False
    """Let a caller load another checkpoint of the same architecture and tokenizer into the running engine
    (``raystep.serve.swap``): the demo, sweep and ablation serve all their models with one engine start.
    A replica Serve restarts loads ``model`` again, so deployments leave it off."""
    limits: ServeLimits = Field(default_factory=ServeLimits)


class EvalConfig(Section):
    """Evaluation of any OpenAI-compatible endpoint."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible endpoint to evaluate."""
    model: str = "raystep"
    """Model name sent in requests."""
    api_key_env: str = "RAYSTEP_API_KEY"
    """Name of the environment variable holding the endpoint's key."""
    benchmarks: list[str] = Field(default_factory=lambda: ["gsm8k", "math500"])
    """Benchmarks: ``gsm8k``, ``gsm8k-stepdpo``, ``math500``, ``math``."""
    data_dir: LocalPath | None = None
    """Where local benchmark files live; empty: ``$RAYSTEP_DATA`` or the hub."""
    template: str = "qwen2-boxed"
    """Prompt template for the completions API."""
    api: Literal["completions", "chat"] = "completions"
    """``completions`` (the template applied here) or ``chat`` (the server's chat template)."""
    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature (0: greedy)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_tokens: int = Field(default=2048, ge=1)
    """Most tokens per answer."""
    k: int = Field(default=1, ge=1)
    """Samples per problem; k > 1 reports maj@k and pass@k."""
    concurrency: int = Field(default=16, ge=1)
    """Requests in flight."""
    max_retries: int = Field(default=5, ge=0)
    """Retries of a failed request before the row keeps its error."""
    timeout_s: float = Field(default=600.0, gt=0.0)
    """Timeout of one request."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first N problems of each benchmark."""
    name: str | None = None
    """Folder name under ``eval/``; empty: the model name."""
    use_ray_data: bool = False
    """Send requests from Ray Data (``HttpRequestProcessorConfig``) instead of one async client."""


class RunConfig(Section):
    """One run: a name, where it lives, and one section per stage."""

    name: str = "run"
    """Run name: the folder under ``storage.root``."""
    storage: StorageConfig = Field(default_factory=StorageConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    localize: LocalizeConfig = Field(default_factory=LocalizeConfig)
    rectify: RectifyConfig = Field(default_factory=RectifyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    max_attempts: int = Field(default=3, ge=1)
    """Attempts a failed unit of a data stage (a request or generation error, kept with its error)
    gets over reruns of the stage; a rerun retries the failed units below it and keeps the done ones."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"run name must be a plain folder name, got {value!r}")
        return value

    @property
    def run_dir(self) -> str:
        """The run folder (a path or URI string)."""
        root = self.storage.root
        return f"{root.rstrip('/')}/{self.name}" if is_uri(root) else str(Path(root) / self.name)


JudgeConfig.model_rebuild()  # ``serve`` refers to ServeConfig, defined after it
LocalizeConfig.model_rebuild()
RunConfig.model_rebuild()


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            lines.append(f"{source}: '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.beta=0.4`` -> (["train", "beta"], 0.4). The value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, for example train.beta=0.4")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` items to a raw config dict; a key that does not exist is an error naming it."""
    for item in overrides:
        parts, value = parse_override(item)
        node: dict[str, Any] = data
        model: type[BaseModel] | None = RunConfig
        for i, part in enumerate(parts):
            if model is not None and part not in model.model_fields:
                raise ConfigError(f"--set {item!r}: unknown key '{'.'.join(parts[: i + 1])}'")
            if i == len(parts) - 1:
                node[part] = value
                break
            annotation = model.model_fields[part].annotation if model is not None else None
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{'.'.join(parts[: i + 1])}' is not a section")
            node = child
    return data


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    source = str(path) if path else "<defaults>"
    data: dict[str, Any] = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {source}: {exc}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        data = loaded
    data = apply_overrides(data, list(overrides or []))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def dump_config(config: RunConfig) -> str:
    """The config as YAML, every default filled in (what the manifest records)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
