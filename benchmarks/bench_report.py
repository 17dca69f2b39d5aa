"""The run report at scale: a synthetic run folder with 100,000 pairs, the report's size and build time,
and a real headless Chromium's time to first render, filtering and opening a pair.

    python benchmarks/bench_report.py [--pairs 100000] [--root /tmp/bench-report] [--no-inline-compare]

The run folder is written with the stages' own writers (``ShardSet`` shards with their schemas, the
manifest, ``pairs.jsonl``, ``train/reference.parquet``, the step log, two evaluations and their
``raystep compare``), shaped like a MATH run: 5 levels, 7 subjects, prompts of a few hundred
characters, prefixes of up to 6 steps, a judge reply per sample, two pairs per sample. Then:

1. ``raystep report RUN`` in its own process (the page with chunked data beside it): wall time, peak
   memory, sizes;
2. Chromium opens ``index.html#pairs`` from disk (``file://``) three times: time to the first render
   of the pairs table, and to its row previews; then filters (k, level, a success-rate range), pages,
   and opens a pair, each timed inside the page and from the driver;
3. side by side, the same report with every pair text inlined into ``index.html`` (``--inline-max-mb``
   unbounded): its size and time to first render, as the ratio the chunked layout buys.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raystep import records  # noqa: E402
from raystep.evaluate.compare import compare  # noqa: E402
from raystep.evaluate.report import summarize as eval_summary  # noqa: E402
from raystep.evaluate.report import write_report  # noqa: E402
from raystep.report import build_report  # noqa: E402
from raystep.runs import RunDir  # noqa: E402
from raystep.stages.shards import ShardSet  # noqa: E402
from raystep.train.metrics import StepLog  # noqa: E402
from raystep.train.reference import write_reference  # noqa: E402

SUBJECTS = (
    "Algebra",
    "Counting & Probability",
    "Geometry",
    "Intermediate Algebra",
    "Number Theory",
    "Prealgebra",
    "Precalculus",
)
WORDS = (
    "the value of x is so we get then substitute into equation both sides divide multiply add subtract "
    "which gives therefore note that since area triangle circle radius sum of all integers prime factor "
    "probability choose ways total number remainder when divided by"
).split()


def sentence(rng: random.Random, words: int) -> str:
    body = " ".join(rng.choices(WORDS, k=words))
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return f"{body} ${a} \\cdot {b} = {a * b}$."


def build_run(root: Path, n_pairs: int, seed: int = 0) -> Path:
    """A run folder with ``n_pairs`` pairs (2 per wrong sample, 4 wrong samples per problem)."""
    rng = random.Random(seed)
    run = RunDir(root / "bench")
    if run.path.exists():
        shutil.rmtree(run.path)
    n_samples_with_pairs = n_pairs // 2
    n_problems = max(1, n_samples_with_pairs // 4)
    problems = [
        {
            "id": f"math-{i:06d}",
            "dataset": "math" if i % 5 else "gsm8k",
            "question": "Let $n$ be " + sentence(rng, rng.randint(25, 60)) + " Find $n$.",
            "answer": str(rng.randint(1, 999)),
            "subject": SUBJECTS[i % len(SUBJECTS)],
            "level": 1 + i % 5,
        }
        for i in range(n_problems)
    ]
    run.update_manifest(config={"name": "bench", "note": "synthetic run for benchmarks/bench_report.py"})
    ShardSet(run.stage("problems"), schema=records.PROBLEM_FIELDS).write(
        problems, [p["id"] for p in problems]
    )
    run.update_manifest("problems", problems=len(problems))

    samples, localized, pairs = [], [], []
    sample_shards = ShardSet(run.stage("samples"), schema=records.SAMPLE_FIELDS)
    loc_shards = ShardSet(run.stage("localized"), schema=records.LOCALIZED_FIELDS)
    pair_shards = ShardSet(run.stage("pairs"), schema=records.PAIR_FIELDS)
    unit_size = 512
    for start in range(0, n_problems, unit_size):
        block = problems[start : start + unit_size]
        s_rows, l_rows, p_rows = [], [], []
        for p in block:
            for s in range(8):
                n_steps = rng.randint(3, 7)
                steps = [
                    f"Step {j}: " + sentence(rng, rng.randint(8, 24)) + "\n" for j in range(1, n_steps + 1)
                ]
                wrong = s < 4
                sid = f"{p['id']}-s{s}"
                row = {
                    **p,
                    "sample_id": sid,
                    "sample_index": s,
                    "seed": s,
                    "prompt": p["question"],
                    "response": "".join(steps),
                    "steps": steps,
                    "pred": p["answer"] if not wrong else str(int(p["answer"]) + 1),
                    "correct": not wrong,
                    "grade_status": "ok",
                    "num_tokens": 40 * n_steps,
                    "error": None,
                }
                s_rows.append(row)
                if not wrong:
                    continue
                k = rng.randint(1, n_steps)
                judge_k = k if rng.random() < 0.85 else max(1, k - 1)
                labels = {str(j): ("correct" if j < judge_k else "incorrect") for j in range(1, judge_k + 1)}
                reply = "\n".join(
                    f"Step {j}: {lab} - " + " ".join(rng.choices(WORDS, k=8)) for j, lab in labels.items()
                )
                evidence = {
                    "combine": "first",
                    "methods": {
                        "judge": {
                            "first_wrong_step": judge_k,
                            "error": None,
                            "evidence": {"model": "gpt-4o", "labels": labels, "reply": reply, "attempts": 1},
                        },
                        "verifier": {"first_wrong_step": k, "error": None, "evidence": {"verifier": "exact"}},
                    },
                }
                l_rows.append(
                    {
                        **row,
                        "first_wrong_step": judge_k,
                        "localizer": "judge+verifier:first",
                        "evidence": json.dumps(evidence),
                    }
                )
                prefix = "".join(steps[: judge_k - 1]) + f"Step {judge_k}:"
                rejected = steps[judge_k - 1][len(f"Step {judge_k}:") :]
                rate = rng.choice((0.25, 0.5, 0.75, 1.0))
                for c in range(2):
                    chosen = " " + sentence(rng, rng.randint(8, 24)) + "\n"
                    p_rows.append(
                        {
                            "dataset": p["dataset"],
                            "prompt": p["question"],
                            "initial_reason_steps": prefix,
                            "chosen": chosen,
                            "rejected": rejected,
                            "full_chosen": chosen + "".join(steps[judge_k:]),
                            "full_rejected": "".join(steps[judge_k - 1 :])[len(f"Step {judge_k}:") :],
                            "answer": p["answer"],
                            "pair_id": f"{sid}-k{judge_k}-c{c}",
                            "problem_id": p["id"],
                            "sample_id": sid,
                            "step_index": judge_k,
                            "localizer": "judge+verifier:first",
                            "chosen_success_rate": None,
                            "rectify_success_rate": rate,
                            "policy_model": "Qwen2-7B-Instruct",
                            "sampling": '{"n": 8, "temperature": 0.8, "top_p": 0.95}',
                        }
                    )
        sample_shards.write(s_rows, [p["id"] for p in block])
        loc_shards.write(l_rows, [r["sample_id"] for r in l_rows])
        pair_shards.write(p_rows, sorted({r["sample_id"] for r in p_rows}))
        samples += [{"correct": r["correct"]} for r in s_rows]
        localized += [{"sample_id": r["sample_id"]} for r in l_rows]
        pairs += p_rows
    wrong = sum(not r["correct"] for r in samples)
    run.update_manifest("collect", status="done", samples=len(samples), wrong=wrong, problems=n_problems)
    run.update_manifest("localize", status="done", localized=len(localized), labelled=len(localized))
    run.update_manifest("rectify", status="done", pairs=len(pairs), localized=len(localized))
    records.write_jsonl(run.path / "pairs" / "pairs.jsonl", (records.to_public_pair(p) | p for p in pairs))

    table = {i: (-rng.uniform(20, 80), -rng.uniform(20, 80)) for i in range(len(pairs))}
    write_reference(run.stage("train") / "reference.parquet", pairs, table, {"bench": True})
    log = StepLog(run.stage("train"))
    log.start(0, 500)
    for step in range(1, 501):
        log.log(
            {
                "step": step,
                "loss": 0.69 * 0.995**step,
                "rewards/chosen": 0.001 * step,
                "rewards/rejected": -0.002 * step,
                "rewards/margin": 0.003 * step,
                "rewards/accuracy": min(1.0, 0.5 + step / 1000),
                "lr": 5e-7 * min(1.0, step / 50),
                "tokens_per_s": 40000 + rng.uniform(-2000, 2000),
            }
        )
    log.finish(500)
    run.update_manifest("train", status="done", pairs=len(pairs), steps=500)

    folders = {}
    for name, p_right in (("base", 0.53), ("stepdpo", 0.586)):
        erng = random.Random(1)
        rows = []
        for i in range(5000):
            right = erng.random() < (p_right if i % 7 else 0.5)
            rows.append(
                {
                    "id": f"test-{i:05d}",
                    "sample": 0,
                    "benchmark": "math",
                    "subject": SUBJECTS[i % 7],
                    "level": 1 + i % 5,
                    "question": "Compute " + sentence(erng, 30),
                    "gold": "7",
                    "response": "".join(f"Step {j}: " + sentence(rng, 15) + "\n" for j in range(1, 5)),
                    "pred": "7" if right else "8",
                    "correct": right,
                    "grade_status": "ok",
                    "error": None,
                }
            )
        folder = run.stage("eval") / name / "math"
        records.write_jsonl(folder / "samples.jsonl", rows)
        write_report(folder, eval_summary(rows, {"benchmark": "math", "model": name, "k": 1}))
        folders[name] = folder
    compare(folders["base"], folders["stepdpo"])
    return run.path


def chromium(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or ""), options=options)
    driver.set_page_load_timeout(300)
    driver.set_script_timeout(300)
    return driver


def wait(driver: Any, script: str, timeout: float = 300.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if driver.execute_script(script):
            return time.perf_counter() - start
        time.sleep(0.01)
    raise TimeoutError(script)


PREVIEWS_DONE = (
    "var b=document.getElementById('pairs-body');return b&&b.getAttribute('data-previews')==='done';"
)


def first_render(driver: Any, index: Path) -> dict[str, float]:
    driver.get("about:blank")
    t0 = time.perf_counter()
    driver.get(index.as_uri() + "#pairs")
    wait(driver, "return document.body && document.body.getAttribute('data-ready')==='1';")
    wait(driver, PREVIEWS_DONE)
    wall = time.perf_counter() - t0
    marks = driver.execute_script(
        "var n=performance.getEntriesByType('navigation')[0];"
        "return {first: RS_REPORT.firstRenderMs, previews: RS_REPORT.previewsMs,"
        " dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd,"
        " heap: performance.memory ? performance.memory.usedJSHeapSize : null};"
    )
    return {
        "first_render_ms": marks["first"],
        "previews_ms": marks["previews"],
        "driver_wall_s": wall,
        **marks,
    }


def interactions(driver: Any) -> dict[str, Any]:
    from selenium.webdriver.support.ui import Select

    out: dict[str, Any] = {}

    def timed(label: str, action) -> None:
        t0 = time.perf_counter()
        action()
        wait(driver, PREVIEWS_DONE)
        ms = driver.execute_script(
            "var r = RS_REPORT; return [r.pairs.filterMs, r.pairs.renderMs, r.lastMs, r.pairs.rows.length];"
        )
        out[label] = {
            "matching": ms[3],
            "filter_ms": round(ms[0], 1),
            "table_ms": round(ms[1], 1),
            "to_previews_ms": round(ms[2], 1),
            "driver_wall_ms": round(1000 * (time.perf_counter() - t0), 1),
        }

    timed("filter k=3", lambda: Select(driver.find_element("id", "filter-k")).select_by_value("3"))
    timed(
        "and level 5",
        lambda: Select(driver.find_element("id", "filter-lvl")).select_by_visible_text(
            next(
                o.text
                for o in Select(driver.find_element("id", "filter-lvl")).options
                if o.text.startswith("5 (")
            )
        ),
    )
    timed("and rate >= 0.75", lambda: driver.find_element("id", "filter-rate-min").send_keys("0.75"))
    timed("reset filters", lambda: driver.find_element("id", "filter-reset").click())
    timed("sort by ref margin", lambda: driver.find_element("css selector", 'th[data-col="margin"]').click())
    timed("next page", lambda: driver.find_element("id", "page-next").click())
    timed("jump to last page", lambda: driver.find_elements("css selector", "#pager button")[-1].click())
    t0 = time.perf_counter()
    driver.find_element("css selector", "tr.pair-row").click()
    wait(driver, "return RS_REPORT.openMs !== undefined;")
    out["open a pair"] = {
        "in_page_ms": round(driver.execute_script("return RS_REPORT.openMs;"), 1),
        "driver_wall_ms": round(1000 * (time.perf_counter() - t0), 1),
    }
    return out


def folder_size(path: Path) -> tuple[int, int]:
    files = [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files), len(files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--root", default=None, help="where to write the synthetic run (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=3, help="page loads to time (median reported)")
    parser.add_argument("--no-inline-compare", action="store_true", help="skip the all-inline page")
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    args = parser.parse_args()
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="bench-report-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = build_run(root, args.pairs)
    run_bytes, _ = folder_size(run)
    print(
        f"synthetic run: {args.pairs:,} pairs, {run_bytes / 1e6:.1f} MB on disk, written in {time.perf_counter() - t0:.1f} s"
    )

    # the command a user runs, in its own process: its wall time (imports included) and peak memory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "raystep.cli", "report", str(run)], env=env, capture_output=True, text=True
    )
    build_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"raystep report failed: {proc.stderr}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report = run / "report"
    total, files = folder_size(report)
    jsonl = (run / "pairs" / "pairs.jsonl").stat().st_size
    html = (report / "index.html").stat().st_size
    data = report / "data"  # absent when the pair data fit inside index.html
    index = (data / "pairs-index.js").stat().st_size if data.is_dir() else 0
    first_pv = (data / "pv-00000.js").stat().st_size if data.is_dir() else 0
    print(
        f"`raystep report`: {build_s:.1f} s wall, peak RSS {peak_mb:.0f} MB; {files} files, {total / 1e6:.1f} MB "
        f"in all ({total / jsonl:.2f}x the {jsonl / 1e6:.1f} MB of pairs/pairs.jsonl)"
    )
    print(
        f"  loaded to open the page: index.html {html / 1e6:.2f} MB + data/pairs-index.js {index / 1e6:.2f} MB "
        f"+ first preview chunk {first_pv / 1e6:.2f} MB = {(html + index + first_pv) / 1e6:.2f} MB"
    )

    inline_dir = run / "report-inline"
    if not args.no_inline_compare:
        t0 = time.perf_counter()
        build_report(run, inline_dir, inline_max_bytes=10**12)
        inline_build = time.perf_counter() - t0
        print(
            f"all-inline page: {(inline_dir / 'index.html').stat().st_size / 1e6:.1f} MB, built in {inline_build:.1f} s"
        )

    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(Path(profile))
        try:
            version = driver.capabilities.get("browserVersion")
            loads = [first_render(driver, report / "index.html") for _ in range(args.repeats)]
            med = {
                k: statistics.median(x[k] for x in loads)
                for k in ("first_render_ms", "previews_ms", "driver_wall_s")
            }
            print(
                f"chromium {version} headless, file://, #pairs, median of {args.repeats}: first render "
                f"{med['first_render_ms']:.0f} ms, row previews {med['previews_ms']:.0f} ms, "
                f"driver wall {med['driver_wall_s']:.2f} s; JS heap {loads[-1]['heap'] / 1e6 if loads[-1]['heap'] else float('nan'):.0f} MB"
            )
            for label, t in interactions(driver).items():
                print(f"  {label}: {json.dumps(t)}")
            if not args.no_inline_compare:
                inline_loads = [first_render(driver, inline_dir / "index.html") for _ in range(args.repeats)]
                imed = statistics.median(x["first_render_ms"] for x in inline_loads)
                print(
                    f"all-inline page first render {imed:.0f} ms (median of {args.repeats}): "
                    f"chunked is {imed / med['first_render_ms']:.1f}x faster to first render and loads "
                    f"{(inline_dir / 'index.html').stat().st_size / (html + index + first_pv):.0f}x fewer bytes to open"
                )
        finally:
            driver.quit()
    if not args.keep and not args.root:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
