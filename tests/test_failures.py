"""Failures are loud and retryable: exit codes that mean one thing, input errors that name file and
line, failed rows retried on a rerun (and only those), corrupted files never a traceback or a hang."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raystep.config import DataConfig, load_config
from raystep.datasets import load_problems
from raystep.errors import BAD_INPUT, ROWS_FAILED, InputError
from raystep.records import Rejects, RowError, read_parquet, read_rows
from raystep.runs import RunDir
from raystep.stages.shards import ShardSet, failure_stats

GOOD_GSM8K = {"question": "Tom has 3 apples and buys 2. How many?", "answer": "3 + 2 = 5\n#### 5"}
GOOD_PAIR = {
    "prompt": "Q",
    "initial_reason_steps": "Step 1: a\n",
    "chosen": "Step 2: b",
    "rejected": "Step 2: c",
}


# -- failed units: recorded, reopened on a rerun up to max_attempts, done units untouched ------------


def _rows(unit: str, error: str | None) -> list[dict[str, Any]]:
    return [{"sample_id": unit, "k": i, "error": error} for i in range(2)]


def test_failed_units_are_reopened_on_a_rerun_and_the_done_ones_stay(tmp_path):
    shards = ShardSet(tmp_path / "stage")
    shards.write(_rows("a", None) + _rows("b", "HTTP 503"), ["a", "b"], failed={"b": 1})
    shards.write(_rows("c", None), ["c"])
    assert shards.failed_units() == {"b": 1} and shards.done_units() == {"a", "b", "c"}
    assert failure_stats(shards, 2) == {"failed_units": 1, "failed_units_final": 0, "max_attempts": 2}
    untouched = shards.files()[1].read_bytes()  # the shard of c alone

    # a rerun reopens b (its rows leave its shard), keeps a and c
    attempts = shards.reopen_failed("sample_id", max_attempts=2)
    assert attempts == {"b": 1} and shards.done_units() == {"a", "c"} and shards.failed_units() == {}
    assert sorted((r["sample_id"], r["k"]) for r in shards.rows()) == [("a", 0), ("a", 1), ("c", 0), ("c", 1)]
    assert shards.files()[1].read_bytes() == untouched

    # b fails again: attempt 2 of 2, after which it stays failed and is not reopened any more
    shards.write(_rows("b", "HTTP 503"), ["b"], failed={"b": attempts["b"] + 1})
    assert shards.failed_units() == {"b": 2}
    assert shards.reopen_failed("sample_id", max_attempts=2) == {}
    assert failure_stats(shards, 2)["failed_units_final"] == 1
    assert len(shards.rows()) == 6  # every unit once: no row lost, none twice


# -- input errors: file, line and field; exit code 2; nothing recorded ------------------------------


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def test_a_gsm8k_answer_without_its_final_number_is_an_input_error(tmp_path):
    bad = {"question": "How many?", "answer": "no final number here"}
    path = write_lines(tmp_path / "gsm8k.jsonl", [json.dumps(GOOD_GSM8K), json.dumps(bad)])
    with pytest.raises(RowError, match=re.escape(f"{path}:2: ") + ".*'#### <number>'"):
        load_problems(DataConfig(source="gsm8k", path=str(path)))
    rejects = Rejects(tmp_path / "rejects.jsonl")
    rows = load_problems(DataConfig(source="gsm8k", path=str(path)), rejects=rejects)
    assert [r["answer"] for r in rows] == ["5"] and rejects.count == 1
    unbalanced = {"problem": "x", "answer": "\\frac{1}{2"}
    math_file = write_lines(tmp_path / "math.jsonl", [json.dumps(unbalanced)])
    with pytest.raises(RowError, match=re.escape(f"{math_file}:1: ") + ".*unbalanced"):
        load_problems(DataConfig(source="math", path=str(math_file)))


def test_invalid_utf8_in_a_pairs_file_names_its_file_and_line(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(GOOD_PAIR), b'{"prompt": "\xff\xfe"}'])
    with pytest.raises(RowError, match=re.escape(f"{path}:2: invalid UTF-8")):
        read_rows(path, kind="pair")


def test_bad_problems_files_exit_2_with_one_line_and_record_nothing(tmp_path, capsys, ray_local):
    from raystep.cli import main

    base = ["--set", f"storage.root={tmp_path / 'runs'}", "--set", "data.source=gsm8k"]
    broken = write_lines(tmp_path / "broken.jsonl", [json.dumps(GOOD_GSM8K), "{not json", "x"])
    assert main(["collect", *base, "--set", f"data.path={broken}", "--set", "name=broken"]) == BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()[-1:]  # (a Ray start-up line may come first)
    assert err == [
        f"raystep collect: {broken}:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)"
    ]

    empty = write_lines(tmp_path / "empty.jsonl", [])
    assert main(["collect", *base, "--set", f"data.path={empty}", "--set", "name=empty"]) == BAD_INPUT
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == f"raystep collect: {empty}: no problems to collect"
    )
    run = tmp_path / "runs" / "empty"
    assert not list((run / "problems").glob("*.parquet"))  # the empty set is not recorded as the run's
    assert "problems" not in RunDir(run).read_manifest().get("stages", {})
    assert RunDir(run).read_manifest()["stages"]["collect"]["status"] == "failed"


# -- every loader, fed corrupted files: an input error naming file and line, or a counted reject -----

LINES = st.one_of(
    st.just(json.dumps(GOOD_GSM8K)),
    st.just(json.dumps(GOOD_PAIR)),
    st.just(""),
    st.just("{truncated"),
    st.just("[1, 2]"),
    st.just('{"question": 7, "answer": "#### 1"}'),
    st.just('{"question": "q"}'),
    st.just('{"prompt": "Q", "chosen": 3}'),
    st.just("[" * 100_000),
    st.binary(min_size=1, max_size=12).filter(lambda b: b"\n" not in b),
    st.text(max_size=20).filter(lambda t: "\n" not in t and "\r" not in t),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINES, max_size=6), with_rejects=st.booleans())
def test_corrupted_files_give_an_input_error_or_a_counted_reject(tmp_path, lines, with_rejects):
    path = write_lines(tmp_path / "input.jsonl", lines)
    for load in (
        lambda rj: load_problems(DataConfig(source="gsm8k", path=str(path)), rejects=rj),
        lambda rj: read_rows(path, kind="pair", rejects=rj),
    ):
        rejects = Rejects(tmp_path / "rejects.jsonl") if with_rejects else None
        try:
            rows = load(rejects)
        except InputError as exc:
            assert str(exc).startswith(f"{path}:"), exc  # the file, then the line
            continue
        finally:
            (tmp_path / "rejects.jsonl").unlink(missing_ok=True)
        nonblank = sum(1 for x in lines if (x.strip() if isinstance(x, (str, bytes)) else x))
        assert len(rows) + (rejects.count if rejects else 0) == nonblank  # nothing dropped silently


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=400), junk=st.binary(max_size=32))
def test_corrupted_parquet_between_stages_is_an_input_error(tmp_path, cut, junk):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist([{**GOOD_PAIR, "pair_id": "p0"}]), good)
    data = good.read_bytes()
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(data[:cut] + junk)
    try:
        rows = read_parquet(bad, kind="pair")
    except InputError as exc:
        assert str(exc).startswith(f"{bad}"), exc
    else:
        assert rows == [{**GOOD_PAIR, "pair_id": "p0"}]


# -- a judge outage: exit code 3, a rerun after it labels every row ---------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


@pytest.mark.slow
def test_a_judge_outage_fails_loudly_and_a_rerun_after_it_labels_every_row(tmp_path, ray_local, capsys):
    from fake_openai import FakeOpenAI, last_user_text, verdict_reply
    from test_localize_stage import make_samples, stage_config, stage_settings, sum_checker, write_samples

    from raystep.cli import main
    from raystep.stages import localize

    samples, truth = make_samples(3)
    judge = ["localize.methods=[judge]", "localize.judge.backoff_s=0.01", "localize.judge.max_retries=1"]
    down = [*judge, f"localize.judge.base_url=http://127.0.0.1:{closed_port()}/v1"]
    config = stage_config(tmp_path, *down)
    write_samples(RunDir.from_config(config).path, samples)
    args = [x for o in stage_settings(tmp_path, *down) for x in ("--set", o)]
    assert main(["localize", *args]) == ROWS_FAILED
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        f"raystep localize: {len(truth)} samples failed and were kept with their error "
        f"(0 after 3 attempts); a rerun retries {len(truth)} of them"
    )
    entry = RunDir.from_config(config).read_manifest()["stages"]["localize"]
    assert entry["status"] == "failed_rows" and entry["labelled"] == 0 and entry["failed_units"] == len(truth)

    def responder(body: dict[str, Any]) -> str:
        steps = re.findall(r"^Step \d+: (.*)$", last_user_text(body), re.M)
        return verdict_reply(sum_checker("", steps), len(steps), "lines")

    with FakeOpenAI(responder) as server:
        up = stage_config(tmp_path, *judge, f"localize.judge.base_url={server.url}")
        stats = localize.run(up)
        assert (
            stats["retried"] == len(truth) and stats["failed_units"] == 0 and stats["labelled"] == len(truth)
        )
        rows = ShardSet(Path(up.run_dir) / "localized").rows(kind="localized")
        assert {r["sample_id"]: r["first_wrong_step"] for r in rows} == truth  # each sample once, labelled
        # the same as an uninterrupted run
        fresh = stage_config(tmp_path / "fresh", *judge, f"localize.judge.base_url={server.url}")
        write_samples(RunDir.from_config(fresh).path, samples)
        localize.run(fresh)
        clean = ShardSet(Path(fresh.run_dir) / "localized").rows(kind="localized")
        label = lambda rs: sorted((r["sample_id"], r["first_wrong_step"], r["error"]) for r in rs)  # noqa: E731
        assert label(rows) == label(clean)
    assert RunDir.from_config(up).read_manifest()["stages"]["localize"]["status"] == "done"


def test_config_has_max_attempts():
    assert load_config(None, ["max_attempts=5"]).max_attempts == 5


# -- eval: a data folder the user named must hold the benchmark; no silent wait on the hub ----------


def test_eval_data_dir_without_the_benchmark_names_eval_data_dir_at_once(tmp_path, capsys, monkeypatch):
    import raystep.datasets
    from raystep.cli import main

    hub_calls: list[str] = []
    real_hub = raystep.datasets._load_hub

    def recorded_hub(name: str, *args: Any, **kwargs: Any) -> Any:
        hub_calls.append(name)
        return real_hub(name, *args, **kwargs)

    monkeypatch.setattr(raystep.datasets, "_load_hub", recorded_hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # were the hub tried, it would fail here rather than wait
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "data"
    folder.mkdir()
    args = [
        "eval",
        *("--set", f"storage.root={tmp_path / 'runs'}"),
        *("--set", f"eval.data_dir={folder}"),
        *("--set", "eval.benchmarks=[math500]"),
        *("--set", "eval.base_url=http://127.0.0.1:9/v1"),
    ]
    assert main(args) == BAD_INPUT
    assert hub_calls == []  # the named folder lacks the file: no detour through the hub
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "eval.data_dir" in line and str(folder) in line and "math/math500_test.jsonl" in line
    assert "data.path" not in line
