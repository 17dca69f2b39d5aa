"""The run config: one validated YAML file per run, overridable with ``--set section.key=value``.

Every stage reads only its own section (plus ``storage`` and ``model``), so a stage can be rerun alone
with the same file. Unknown or mistyped keys are errors that name the key: a silently ignored typo in
a training recipe costs a GPU-day.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the file and the key."""


class Section(BaseModel):
    """Base of every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(Section):
    """Where the run folder lives: a local path, an NFS mount or a URI such as ``s3://bucket/runs``."""

    root: str = "runs"


class ModelConfig(Section):
    """The policy model: a local folder or a hub name (loaded by the engines and the trainer)."""

    path: str = "Qwen/Qwen2-7B-Instruct"
    tokenizer: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
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
    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=2, ge=1)
    intermediate_size: int = Field(default=192, ge=1)
    num_examples: int = Field(default=4000, ge=1)
    """Worked solutions of the ``sft`` split the warm-up trains on."""
    slip_rate: float = Field(default=0.3, ge=0.0, le=1.0)
    """Share of warm-up solutions carrying one slip (step drawn at random)."""
    slips: list[str] | None = None
    """Slip kinds drawn from (empty: the world's own; the story world's are reasoning slips only)."""
    steps: int = Field(default=1500, ge=1)
    batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=5e-3, gt=0.0)
    warmup_ratio: float = Field(default=0.05, ge=0.0, lt=1.0)
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

    world: Literal["story", "chain"] = "story"
    """``story``: two people, transfers and distractor sentences over small numbers, so a tiny policy's
    mistakes are reasoning slips (``raystep.synth.story``). ``chain``: one amount and a chain of
    operations over larger numbers, whose mistakes are mostly arithmetic (``raystep.synth.world``)."""
    seed: int = 0
    num_problems: int = Field(default=200, ge=1)
    """Problems per split when ``data.limit`` is empty."""
    min_steps: int | None = Field(default=None, ge=1)
    """Fewest steps of a solution (default 2 in both worlds; in a story, events that change the asked
    amount)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Most steps (default 3 in both worlds; a story adds one step per distractor)."""
    min_operand: int | None = Field(default=None, ge=1)
    max_operand: int | None = Field(default=None, ge=1)
    """Operands of ``+`` / ``-`` (default 2..9 in both worlds)."""
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
    path: str | None = None
    """A local file; when empty the loader's default location (or the hub) is used."""
    hub_name: str | None = None
    split: str = "train"
    column_map: dict[str, str] = Field(default_factory=dict)
    """For generic files: our field name -> the file's column name."""
    limit: int | None = Field(default=None, ge=1)
    rejects: bool = False
    """Send malformed rows to ``<stage>/rejects.jsonl`` (counted) instead of failing on the first one."""
    synth: SynthConfig = Field(default_factory=SynthConfig)
    """The arithmetic world's knobs, read only when ``source`` is ``synth``."""


class SamplingConfig(Section):
    """Generation of solutions (collect) and the engine that runs it."""

    engine: Literal["hf", "vllm"] = "hf"
    n: int = Field(default=8, ge=1)
    temperature: float = Field(default=0.8, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=1024, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int = 0
    batch_size: int = Field(default=16, ge=1)
    """Rows per engine call (Ray Data batch size)."""
    concurrency: int = Field(default=1, ge=1)
    """Engine replicas (Ray Data actors)."""
    num_gpus_per_replica: float = Field(default=0.0, ge=0.0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    enable_prefix_caching: bool = True
    shard_size: int = Field(default=256, ge=1)
    """Problems per output shard: the unit of resume."""


class JudgeConfig(Section):
    """An OpenAI-compatible chat model that labels steps (the paper used GPT-4)."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key: keys never live in config files."""
    max_concurrency: int = Field(default=8, ge=1)
    requests_per_second: float = Field(default=5.0, gt=0.0)
    max_retries: int = Field(default=5, ge=0)
    timeout_s: float = Field(default=60.0, gt=0.0)
    temperature: float = Field(default=0.0, ge=0.0)
    max_tokens: int = Field(default=2048, ge=1)
    cache: bool = True
    cache_dir: str | None = None
    """Where replies are cached by request hash; empty: ``<run>/localized/judge-cache``."""
    backoff_s: float = Field(default=1.0, ge=0.0)
    """First retry delay; doubles each attempt (a server's Retry-After wins)."""


class RolloutConfig(Section):
    """Monte Carlo localization: success rate of continuations from each prefix."""

    num_rollouts: int = Field(default=8, ge=1)
    threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    """A prefix whose success rate is <= threshold is taken as already wrong."""
    bisect: bool = True
    temperature: float = Field(default=0.8, ge=0.0)
    max_new_tokens: int = Field(default=1024, ge=1)


class LocalizeConfig(Section):
    """How the first wrong step is found."""

    methods: list[Literal["judge", "rollout", "verifier"]] = Field(default_factory=lambda: ["judge"])
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
    temperature: float = Field(default=0.8, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=1024, ge=1)
    max_pairs_per_sample: int = Field(default=1, ge=1)
    min_success_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Keep a chosen step only when its own continuations reach the answer at least this often."""
    success_rollouts: int = Field(default=0, ge=0)
    """Continuations per chosen step to measure that rate (0: do not measure)."""
    verify_chosen: bool = False
    """Run the localizer over the rectified solution and drop chosen steps it marks wrong."""


class LoraConfig(Section):
    enabled: bool = False
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class TrainConfig(Section):
    """Step-DPO training on Ray Train + DeepSpeed. Defaults follow the paper's 7B recipe."""

    pairs: str | None = None
    """Pair files (JSONL/Parquet, public schema) to train on; empty: this run's ``pairs/``."""
    mode: Literal["stepdpo", "dpo", "sft"] = "stepdpo"
    """``dpo`` trains on full_chosen / full_rejected as whole responses (the ablation); ``sft`` is
    rejection-sampling fine-tuning: the per-token NLL of each pair's whole chosen solution
    (``initial_reason_steps + full_chosen``), no preference and no reference (the usual baseline)."""
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    beta: float = Field(default=0.5, gt=0.0)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5)
    nll_weight: float = Field(default=0.0, ge=0.0)
    reference: Literal["precomputed", "live"] = "precomputed"
    prefix_sharing: bool = True
    pack_tokens: int = Field(default=4096, ge=64)
    """Token budget of one packed row when prefix sharing is on."""
    learning_rate: float = Field(default=5e-7, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    epochs: int = Field(default=8, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    global_batch_size: int = Field(default=128, ge=1)
    micro_batch_size: int = Field(default=1, ge=1)
    max_length: int = Field(default=1024, ge=16)
    max_prompt_length: int = Field(default=512, ge=8)
    num_workers: int = Field(default=8, ge=1)
    use_gpu: bool = True
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    zero_stage: Literal[0, 1, 2, 3] = 3
    offload: Literal["none", "cpu"] = "none"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 on GPU, fp32 on CPU."""
    gradient_checkpointing: bool = True
    checkpoint_every_steps: int = Field(default=50, ge=1)
    num_checkpoints_to_keep: int = Field(default=2, ge=1)
    checkpoint_storage: str | None = None
    """Ray Train storage for checkpoints (local path, NFS mount or ``s3://``); empty: ``<run>/train``."""
    max_failures: int = Field(default=2, ge=-1)
    seed: int = 42
    log_to: list[Literal["mlflow", "wandb"]] = Field(default_factory=list)
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @model_validator(mode="after")
    def _prompt_fits(self) -> TrainConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"train.max_prompt_length ({self.max_prompt_length}) must be < train.max_length ({self.max_length})"
            )
        return self


class ServeConfig(Section):
    """Hosting a model behind OpenAI-compatible routes."""

    engine: Literal["hf", "vllm"] = "hf"
    model: str | None = None
    """The model folder or bucket URI to serve; empty: this run's exported ``model/``."""
    model_id: str = "raystep"
    """The name clients pass as ``model``."""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_key_env: str = "RAYSTEP_API_KEY"
    route_prefix: str = "/"
    num_replicas: int = Field(default=1, ge=1)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=64, ge=1)
    max_queued_requests: int = Field(default=-1, ge=-1)
    """Requests waiting for a replica beyond which Serve answers 503 at once (-1: no limit)."""
    num_cpus_per_replica: float = Field(default=1.0, ge=0.0)
    """CPU app only: CPUs reserved by each replica (torch uses that many threads)."""
    max_batch_size: int = Field(default=8, ge=1)
    batch_wait_timeout_s: float = Field(default=0.02, ge=0.0)
    max_tokens_cap: int = Field(default=2048, ge=1)
    max_context: int | None = Field(default=None, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    accelerator_type: str | None = None


class EvalConfig(Section):
    """Evaluation of any OpenAI-compatible endpoint."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "raystep"
    api_key_env: str = "RAYSTEP_API_KEY"
    benchmarks: list[str] = Field(default_factory=lambda: ["gsm8k", "math500"])
    data_dir: str | None = None
    """Where local benchmark files live; empty: ``$RAYSTEP_DATA`` or the hub."""
    template: str = "qwen2-boxed"
    api: Literal["completions", "chat"] = "completions"
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=2048, ge=1)
    k: int = Field(default=1, ge=1)
    """Samples per problem; k > 1 reports maj@k and pass@k."""
    concurrency: int = Field(default=16, ge=1)
    max_retries: int = Field(default=5, ge=0)
    timeout_s: float = Field(default=600.0, gt=0.0)
    limit: int | None = Field(default=None, ge=1)
    name: str | None = None
    """Folder name under ``eval/``; empty: the model name."""
    use_ray_data: bool = False


class RunConfig(Section):
    """One run: a name, where it lives, and one section per stage."""

    name: str = "run"
    storage: StorageConfig = Field(default_factory=StorageConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    localize: LocalizeConfig = Field(default_factory=LocalizeConfig)
    rectify: RectifyConfig = Field(default_factory=RectifyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

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
        return f"{root.rstrip('/')}/{self.name}" if "://" in root else str(Path(root) / self.name)


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
