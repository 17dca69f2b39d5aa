"""The run config: shipped files load, overrides reach nested keys with types, bad keys are named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raystep.config import ConfigError, RunConfig, apply_overrides, dump_config, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "jobs" / "configs"


SHIPPED = sorted(p.name for p in CONFIGS.glob("*.yaml"))


def test_every_shipped_config_is_listed() -> None:
    assert len(SHIPPED) >= 3 and "tiny-cpu.yaml" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name: str) -> None:
    config = load_config(CONFIGS / name)
    assert isinstance(config, RunConfig)
    # every key in the file is a known key: re-dumping loses nothing that the file set
    raw = yaml.safe_load((CONFIGS / name).read_text())
    dumped = config.model_dump(mode="json")
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, dict):
                    continue
                got = dumped[section][key]
                if isinstance(value, str) and got != value:  # a relative path, made absolute at load
                    assert got == os.path.abspath(value), f"{section}.{key}"
                else:
                    assert got == value, f"{section}.{key}"


def test_relative_paths_become_absolute_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray workers, Ray Train's controller and Serve replicas run elsewhere: every local path is absolute."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policy").mkdir()
    c = load_config(
        None,
        [
            "model.path=policy",  # exists here: a local folder
            "model.tokenizer=Qwen/Qwen2-7B-Instruct",  # does not exist: a hub name, kept
            "data.path=problems.jsonl",
            "train.pairs=pairs/",
            "eval.data_dir=data",
            "localize.judge.cache_dir=~/cache",
            "train.checkpoint_storage=s3://bucket/ckpt",
        ],
    )
    assert c.storage.root == str(tmp_path / "runs")  # the default, with no --set at all
    assert c.run_dir == str(tmp_path / "runs" / "run")
    assert c.model.path == str(tmp_path / "policy")
    assert c.model.tokenizer == "Qwen/Qwen2-7B-Instruct"
    assert c.data.path == str(tmp_path / "problems.jsonl")
    assert c.train.pairs == str(tmp_path / "pairs")
    assert c.eval.data_dir == str(tmp_path / "data")
    assert c.localize.judge.cache_dir == os.path.expanduser("~/cache")
    assert c.train.checkpoint_storage == "s3://bucket/ckpt"  # URIs are left alone
    c.train.pairs = "other.jsonl"  # assignments are resolved too
    assert c.train.pairs == str(tmp_path / "other.jsonl")
    # loading the dumped config from another directory changes nothing: resolution happens once
    monkeypatch.chdir(tmp_path / "policy")
    assert RunConfig.model_validate_json(c.model_dump_json()) == c


def test_tiny_cpu_runs_on_a_laptop() -> None:
    c = load_config(CONFIGS / "tiny-cpu.yaml")
    assert c.sampling.engine == "vllm" and c.engine.device == "cpu"
    assert c.train.use_gpu is False and c.train.zero_stage in (2, 3) and c.train.num_workers == 2
    assert c.data.limit is not None and c.data.limit <= 16 and c.sampling.n <= 8
    assert "judge" not in c.localize.methods  # no API key needed
    assert c.serve.host == "127.0.0.1"


def test_qwen2_7b_is_the_papers_recipe() -> None:
    c = load_config(CONFIGS / "qwen2-7b-instruct.yaml")
    assert c.model.path == "Qwen/Qwen2-7B-Instruct"
    assert c.sampling.engine == "vllm"
    t = c.train
    assert (t.learning_rate, t.beta, t.epochs, t.global_batch_size) == (5e-7, 0.5, 8, 128)
    assert (t.max_length, t.max_prompt_length, t.zero_stage) == (1024, 512, 3)
    assert (t.lr_scheduler, t.warmup_ratio, t.num_workers, t.use_gpu) == ("cosine", 0.1, 8, True)
    assert c.localize.methods == ["judge"] and c.rectify.n == 20
    assert (c.sampling.temperature, c.sampling.top_p) == (0.8, 0.95)
    assert c.localize.judge.api_key_env == "OPENAI_API_KEY"
    assert "sk-" not in (CONFIGS / "qwen2-7b-instruct.yaml").read_text()  # keys never live in files


def test_defaults_without_a_file() -> None:
    c = load_config()
    assert c.train.beta == 0.5 and c.serve.host == "127.0.0.1"


def test_overrides_reach_nested_keys_with_types(tmp_path: Path) -> None:
    c = load_config(
        CONFIGS / "tiny-cpu.yaml",
        [
            "train.beta=0.4",
            "train.lora.enabled=true",
            "train.lora.r=8",
            "localize.judge.model=my-judge",
            "localize.methods=[rollout, verifier]",
            "sampling.stop=['</s>', 'Step 9:']",
            "data.column_map={question: q, answer: a}",
            "eval.limit=null",
            "name=other",
        ],
    )
    assert c.train.beta == 0.4 and isinstance(c.train.beta, float)
    assert c.train.lora.enabled is True and c.train.lora.r == 8
    assert c.localize.judge.model == "my-judge"
    assert c.localize.methods == ["rollout", "verifier"]
    assert c.sampling.stop == ["</s>", "Step 9:"]
    assert c.data.column_map == {"question": "q", "answer": "a"}
    assert c.eval.limit is None
    assert c.name == "other"
    # untouched keys keep the file's values
    assert c.train.num_workers == 2


def test_override_creates_missing_sections() -> None:
    data = apply_overrides({}, ["localize.rollout.num_rollouts=3"])
    assert data == {"localize": {"rollout": {"num_rollouts": 3}}}
    assert RunConfig.model_validate(data).localize.rollout.num_rollouts == 3


def test_override_value_is_yaml() -> None:
    assert parse_override("train.epochs=3") == (["train", "epochs"], 3)
    assert parse_override("model.path=a=b") == (["model", "path"], "a=b")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("train.beta")


@pytest.mark.parametrize(
    "item, key",
    [
        ("train.betta=0.4", "train.betta"),
        ("trian.beta=0.4", "trian"),
        ("localize.judge.modle=x", "localize.judge.modle"),
        ("train.beta.x=1", "train.beta"),
    ],
)
def test_unknown_key_in_set_is_named(item: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, [item])


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  beta: 0.4\n  learning_rat: 1e-6\nsampling:\n  engin: hf\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "unknown key 'train.learning_rat'" in text
    assert "unknown key 'sampling.engin'" in text
    assert str(path) in text
    top = tmp_path / "top.yaml"
    top.write_text("trainer:\n  beta: 0.4\n")
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_config(top)


@pytest.mark.parametrize(
    "item, key",
    [
        ("train.beta=-1", "train.beta"),
        ("train.beta=abc", "train.beta"),
        ("sampling.engine=tgi", "sampling.engine"),
        ("sampling.top_p=1.5", "sampling.top_p"),
        ("train.zero_stage=4", "train.zero_stage"),
        ("serve.port=70000", "serve.port"),
        ("localize.methods=[gpt]", "localize.methods.0"),
        ("name=a/b", "name"),
    ],
)
def test_invalid_values_name_the_key(item: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, [item])


def test_cross_field_check_names_both_keys() -> None:
    with pytest.raises(ConfigError, match="max_prompt_length"):
        load_config(None, ["train.max_prompt_length=2048", "train.max_length=1024"])


def test_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(listy)


def test_dump_round_trips(tmp_path: Path) -> None:
    c = load_config(CONFIGS / "qwen2-7b-instruct.yaml", ["train.beta=0.3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(c))
    assert load_config(path) == c


def _raystep(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "raystep.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


def test_raystep_config_cli() -> None:
    ok = _raystep(
        "config",
        "--config",
        "jobs/configs/tiny-cpu.yaml",
        "--set",
        "train.beta=0.25",
        "--set",
        "data.limit=3",
    )
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)
    assert resolved["train"]["beta"] == 0.25 and resolved["data"]["limit"] == 3
    assert resolved["sampling"]["engine"] == "vllm"
    assert set(resolved) == set(RunConfig.model_fields)  # every section, defaults filled in

    bad = _raystep("config", "--config", "jobs/configs/tiny-cpu.yaml", "--set", "train.betta=0.25")
    assert bad.returncode == 2
    assert "train.betta" in bad.stderr and "config error" in bad.stderr


def test_config_reference_in_docs_is_current() -> None:
    from raystep.config_reference import render, undocumented

    assert undocumented() == [], "add a docstring under each of these fields in raystep/config.py"
    page = (REPO / "docs" / "config.md").read_text()
    assert page == render(), "docs/config.md is stale: raystep config --reference > docs/config.md"
    for key in ("train.beta", "localize.judge.api_key_env", "data.column_map", "serve.host"):
        assert f"| `{key}` |" in page
    cli = _raystep("config", "--reference")
    assert cli.returncode == 0 and cli.stdout == page
