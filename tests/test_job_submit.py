"""End to end through `ray job submit`: a real local Ray head on 127.0.0.1, the repo uploaded as the
job's working dir, the tiny pipeline run as a job, the run folder checked, the cluster stopped."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head` bound to loopback, with its own temp dir; stopped whatever happens."""
    import ray

    ray.shutdown()  # the session's in-process Ray, if any, must not be confused with this cluster
    gcs, dash = free_port(), free_port()
    # Ray 2.60 clusters use token auth (the dashboard and job API refuse requests without the token):
    # give the head and the clients one token of this test's own, as a user would export theirs.
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex,
    }
    temp = Path("/tmp") / f"rs-job-{os.getpid()}"
    start = [
        RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=4",
        "--include-dashboard=true", f"--temp-dir={temp}", "--disable-usage-stats",
        # the job agent's own port: the default (52365) is taken by any other Ray on the machine (a demo, a
        # second test session), and then every submit fails with "No available agent"
        f"--dashboard-agent-listen-port={free_port()}",
    ]  # fmt: skip
    out = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            probe = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True)
            if probe.returncode == 0:
                break
            time.sleep(2)
        yield address, env
    finally:
        stop_cluster(temp)


def stop_cluster(temp: Path) -> None:
    """Stop the processes of the cluster whose temp dir is ``temp``, and only those: ``ray stop`` would
    kill every Ray on the machine (a user's demo, another test session)."""
    import psutil

    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(temp) in " ".join(proc.info["cmdline"] or ()):
            mine.append(proc)
    for proc in mine:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(mine, timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_pipeline_submitted_as_a_ray_job_succeeds_and_fills_the_run_folder(
    ray_head, tiny_model, shared_data, tmp_path
):
    address, env = ray_head
    storage = tmp_path / "runs"
    submit = [
        RAY, "job", "submit", "--address", address, "--no-wait",
        "--working-dir", ".", "--runtime-env", "jobs/runtime_env.yaml", "--",
        "python", "-m", "raystep.cli", "pipeline", "--config", "jobs/configs/tiny-cpu.yaml",
        "--stages", "collect",
        "--set", f"storage.root={storage}", "--set", f"model.path={tiny_model}",
        "--set", f"data.path={shared_data / 'gsm8k' / 'train.jsonl'}", "--set", "data.limit=4",
        "--set", "sampling.n=2", "--set", "sampling.max_new_tokens=24",
    ]  # fmt: skip
    # one stage: the job's plumbing (upload, runtime env, token auth, the run folder) is what this test is
    # for; localize and rectify on vLLM run in tests/test_vllm_pipeline.py, each an engine start of its own
    deadline = time.time() + 120
    while True:  # the head answers `ray job list` before its job agent takes jobs ("try again later")
        out = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        if (
            out.returncode == 0
            or "No available agent" not in out.stdout + out.stderr
            or time.time() > deadline
        ):
            break
        time.sleep(3)
    assert out.returncode == 0, out.stdout + out.stderr
    job_id = next(
        w
        for line in out.stdout.splitlines()
        for w in line.replace("'", " ").split()
        if w.startswith("raysubmit_")
    )

    status = ""
    deadline = time.time() + 600
    while time.time() < deadline:
        st = subprocess.run(
            [RAY, "job", "status", "--address", address, job_id], env=env, capture_output=True, text=True
        )
        status = st.stdout.upper()
        if any(s in status for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(3)
    logs = subprocess.run(
        [RAY, "job", "logs", "--address", address, job_id], env=env, capture_output=True, text=True
    )
    assert "SUCCEEDED" in status, status + logs.stdout[-4000:]

    run = storage / "tiny-cpu"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["collect"]["status"] == "done", manifest["stages"].get("collect")
    assert manifest["stages"]["pipeline"]["status"] == "done"
    from raystep.records import read_parquet

    samples = read_parquet(run / "samples", kind="sample")
    assert len(samples) == 4 * 2
    assert len({s["sample_id"] for s in samples}) == 8
    assert all(s["grade_status"] != "error" and s["response"] for s in samples)  # vLLM answered each
    assert manifest["config"]["model"]["path"] == str(tiny_model)
