"""Run folders on object storage: ``storage.root=s3://bucket/runs`` for the data stages.

The stand-in for S3 is moto's ``ThreadedMotoServer``: a real HTTP server speaking the S3 protocol on
127.0.0.1 (a free port). pyarrow, boto3 and the Ray workers reach it through the standard AWS
environment variables (``AWS_ENDPOINT_URL`` and dummy credentials), as they would reach S3 or MinIO.
Reading objects back with boto3 (not pyarrow) checks that the rows really are in the bucket.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_collect_rectify import make_config, problems_file, taught_model  # noqa: F401 (fixtures)

from raystep import records
from raystep.config import load_config
from raystep.fs import ObjectPath, location
from raystep.runs import RunDir
from raystep.stages import collect, localize, rectify
from raystep.stages.localizers.judge import JudgeCache
from raystep.stages.shards import ShardSet

pytest.importorskip("moto.server", reason="moto[server] (the dev extra) runs the local S3 server")

BUCKET = "bucket"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A moto S3 server with one bucket; the AWS variables pointing at it are set for this module."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",  # honoured by pyarrow's S3FileSystem and boto3
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups for credentials
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        try:
            yield env
        finally:
            server.stop()


def bucket_objects(prefix: str) -> dict[str, str]:
    """Every object under ``prefix``: key -> ETag, listed with boto3."""
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def download(key: str) -> bytes:
    import boto3

    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_run_dir_accepts_a_bucket_and_names_a_uri_it_cannot_open(s3_env, tmp_path) -> None:
    run = RunDir(f"s3://{BUCKET}/runs/unit")
    assert (
        isinstance(run.path, ObjectPath) and str(run.stage("samples")) == f"s3://{BUCKET}/runs/unit/samples"
    )
    run.update_manifest("collect", status="running")
    run.update_manifest("collect", status="done", rows=3)
    assert run.read_manifest()["stages"]["collect"] == {"status": "done", "rows": 3}
    assert run.read_manifest()["run_dir"] == f"s3://{BUCKET}/runs/unit"

    shards = ShardSet(run.stage("samples"))
    first = shards.write([{"id": "a", "x": 1}, {"id": "b", "x": 2}], ["a", "b"], failed={"b": 1})
    assert shards.done_units() == {"a", "b"} and shards.failed_units() == {"b": 1}
    assert shards.reopen_failed("id", max_attempts=3) == {"b": 1}  # the shard rewritten without b
    assert shards.done_units() == {"a"} and shards.rows() == [{"id": "a", "x": 1}]
    assert pq.read_table(io.BytesIO(download("runs/unit/samples/part-00000.parquet"))).to_pylist() == [
        {"id": "a", "x": 1}
    ]
    assert first == location(f"s3://{BUCKET}/runs/unit/samples/part-00000.parquet")
    assert not any(k.endswith(".tmp") for k in bucket_objects("runs/unit/"))  # puts, no renames

    cache = JudgeCache(run.path / "localized" / "judge-cache")  # the judge's replies, one object each
    assert cache.get("ab12") is None
    cache.put("ab12", {"verdict": 2})
    assert cache.get("ab12") == {"verdict": 2} and "runs/unit/localized/judge-cache/ab/ab12.json" in (
        bucket_objects("runs/unit/")
    )

    problems = tmp_path / "problems.jsonl"  # data.rejects on a bucket: the malformed row is kept there
    problems.write_text('{"id": "a", "question": "1+1?", "answer": "2"}\n{broken\n')
    config = load_config(
        None,
        [f"storage.root=s3://{BUCKET}/runs", "name=rj", "data.source=jsonl", f"data.path={problems}"]
        + ["data.rejects=true"],
    )
    assert collect.ensure_problems(config, RunDir.from_config(config)) == 1
    kept = [json.loads(line) for line in download("runs/rj/problems/rejects.jsonl").decode().splitlines()]
    assert [(r["source"], r["line"], r["raw"]) for r in kept] == [(str(problems), 2, "{broken")]

    with pytest.raises(ValueError, match="raystep train needs a local or mounted run folder"):
        run.require_local("raystep train")  # train, eval, serve write plain files: they say so

    assert isinstance(RunDir(tmp_path / "local").path, Path)  # local folders stay plain paths
    assert RunDir(f"file://{tmp_path}/local").path == tmp_path / "local"
    for bad in ("ftp://host/runs", "nosuch://bucket/runs"):
        with pytest.raises(ValueError) as err:
            RunDir(bad)
        message = str(err.value)
        assert message.startswith(f"{bad}: not a filesystem pyarrow can open") and "\n" not in message


@pytest.mark.slow
def test_collect_localize_rectify_on_a_bucket_and_a_rerun_resumes(
    s3_env,
    taught_model,  # noqa: F811  (the imported fixture)
    problems_file,  # noqa: F811
    tmp_path,
    monkeypatch,
) -> None:
    import ray
    from conftest import RAY_INIT_KWARGS, start_local_ray

    if ray.is_initialized():
        ray.shutdown()  # the workers need the S3 variables: a Ray of our own
    start_local_ray(runtime_env={"env_vars": {**RAY_INIT_KWARGS["runtime_env"]["env_vars"], **s3_env}})
    monkeypatch.chdir(tmp_path)  # nothing may land in a local folder named after the URI
    try:
        config = make_config(
            f"s3://{BUCKET}/runs",
            "s3run",
            taught_model,
            problems_file,
            "sampling.temperature=3.0",  # derails some samples of problems the model can solve
            "sampling.top_p=1.0",
            "localize.methods=[verifier]",
            "localize.verifier=tests.checkers:arithmetic_checker",
        )
        assert config.run_dir == f"s3://{BUCKET}/runs/s3run"
        first = [collect.run(config), localize.run(config), rectify.run(config)]
        objects = bucket_objects("runs/s3run/")

        run = RunDir.from_config(config)
        samples = records.read_parquet(run.path / "samples", kind="sample")
        assert len(samples) == 12 and first[0]["samples_todo"] == 12
        assert sum(k.startswith("runs/s3run/samples/part-") for k in objects) >= 6  # shard_size 2
        wrong = sum(not s["correct"] for s in samples)
        assert first[1]["wrong_samples"] == wrong and first[1]["todo"] == wrong > 0
        localized = records.read_parquet(run.path / "localized", kind="localized")
        assert len(localized) == wrong
        pairs = records.read_parquet(run.path / "pairs", kind="pair")
        assert pairs, "derailed samples of solvable problems rectify into pairs"
        exported = download("runs/s3run/pairs/pairs.jsonl").decode().splitlines()
        assert len(exported) == len(pairs) == first[2]["pairs_jsonl"]
        assert "runs/s3run/localized/first_wrong_step.png" in objects
        assert "runs/s3run/collect/per_problem_accuracy.json" in objects
        manifest = run.read_manifest()
        assert {manifest["stages"][s]["status"] for s in ("collect", "localize", "rectify")} == {"done"}
        assert not any(k.endswith(".tmp") for k in objects)
        assert list(tmp_path.iterdir()) == []  # the run folder is in the bucket only

        again = [collect.run(config), localize.run(config), rectify.run(config)]
        assert again[0]["samples_todo"] == 0 and again[0]["samples_resumed"] == 12
        assert again[1]["todo"] == 0 and again[1]["already_done"] == wrong
        assert again[2]["continuations_todo"] == 0
        after = bucket_objects("runs/s3run/")
        for folder in ("samples", "localized", "rectified"):  # not one shard rewritten
            mine = {k: v for k, v in objects.items() if k.startswith(f"runs/s3run/{folder}/part-")}
            assert mine and mine == {
                k: v for k, v in after.items() if k.startswith(f"runs/s3run/{folder}/part-")
            }
        assert records.read_parquet(run.path / "pairs", kind="pair") == pairs  # rebuilt the same
    finally:
        ray.shutdown()  # the next test's ray_local starts a plain one
