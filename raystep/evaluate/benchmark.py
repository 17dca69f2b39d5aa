"""Evaluate one benchmark against an endpoint: plan the requests, send the missing ones, grade, report.

The folder ``<out>/<benchmark>/`` is the unit of resume: ``settings.json`` pins what the answers were
produced with (a rerun with other settings is refused rather than silently mixed), ``samples.jsonl``
grows as graded answers arrive, and at the end it is rewritten with each item exactly once before
``summary.json``, ``report.md`` and the plots are written.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from raystep.config import EvalConfig
from raystep.endpoint import EndpointClient
from raystep.errors import InputError
from raystep.evaluate import samples as sample_log
from raystep.evaluate.report import summarize, write_report
from raystep.records import append_jsonl
from raystep.retry import api_key
from raystep.steps import build_messages, build_prompt

SETTINGS_FIELDS = ("benchmark", "model", "api", "template", "temperature", "top_p", "max_tokens")
"""What an answer depends on. ``k`` and ``limit`` are left out: raising them extends an evaluation."""

Flush = Callable[[list[dict[str, Any]]], None]


class EvalError(InputError):
    """An evaluation that cannot run as asked (mixed settings, unknown benchmark); the CLI prints it."""


def sampling_for(cfg: EvalConfig, sample: int) -> dict[str, Any]:
    """Greedy by default; with temperature > 0 each sample index gets its own seed."""
    return {
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "seed": sample if cfg.temperature > 0 else None,
    }


def plan_requests(problems: list[dict[str, Any]], benchmark: str, cfg: EvalConfig) -> list[dict[str, Any]]:
    """One item per (problem, sample index), carrying everything its result row needs."""
    if cfg.api == "completions" and cfg.template == "chat":
        raise EvalError("eval.template 'chat' renders with the model's chat template: use eval.api=chat")
    items = []
    for p in problems:
        base = {
            "id": str(p["id"]),
            "benchmark": benchmark,
            "dataset": p.get("dataset", benchmark),
            "subject": p.get("subject"),
            "level": p.get("level"),
            "question": p["question"],
            "gold": p["answer"],
        }
        if cfg.api == "chat":
            messages = build_messages(cfg.template, p["question"])
            request = {"messages": messages, "prompt": messages[-1]["content"]}
        else:
            request = {"prompt": build_prompt(cfg.template, p["question"])}
        for s in range(cfg.k):
            items.append({**base, **request, "sample": s})
    return items


def check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume a folder whose answers came from other settings (mixing them would be silent)."""
    path = folder / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = [
            f"{k}: {old.get(k)!r} -> {settings.get(k)!r}"
            for k in SETTINGS_FIELDS
            if old.get(k) != settings.get(k)
        ]
        if diff:
            raise EvalError(
                f"{folder} already holds answers made with other settings ({'; '.join(diff)}); "
                "choose another eval.name / --out, or delete the folder"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def graded_rows(results: list[dict[str, Any]], grader: Any, model: str) -> list[dict[str, Any]]:
    """Turn items merged with their request results into sample rows with verdicts."""
    is_answered = [r.get("response") is not None and not r.get("error") for r in results]
    answered = [r for r, ok in zip(results, is_answered, strict=True) if ok]
    verdicts = iter(grader.grade([r["response"] for r in answered], [r["gold"] for r in answered]))
    rows = []
    for r, ok in zip(results, is_answered, strict=True):
        row = {
            "id": r["id"],
            "sample": r["sample"],
            "benchmark": r["benchmark"],
            "dataset": r["dataset"],
            "subject": r.get("subject"),
            "level": r.get("level"),
            "question": r["question"],
            "prompt": r["prompt"],
            "gold": r["gold"],
            "response": r.get("response"),
            "pred": None,
            "extract_method": "none",
            "correct": False,
            "grade_status": "no_response",
            "prompt_tokens": r.get("prompt_tokens"),
            "completion_tokens": r.get("completion_tokens"),
            "finish_reason": r.get("finish_reason"),
            "latency_s": r.get("latency_s"),
            "attempts": r.get("attempts"),
            "error": r.get("error"),
            "model": model,
        }
        if ok:
            v = next(verdicts)
            row.update(pred=v.pred, extract_method=v.method, correct=bool(v.correct), grade_status=v.status)
        rows.append(row)
    return rows


async def _send_all(todo: list[dict[str, Any]], cfg: EvalConfig, flush: Flush) -> None:
    """Send requests concurrently (bounded by the client's semaphore); hand results over in chunks."""
    client = EndpointClient(
        cfg.base_url,
        cfg.model,
        api=cfg.api,
        api_key=api_key(cfg.api_key_env),
        concurrency=cfg.concurrency,
        max_retries=cfg.max_retries,
        timeout_s=cfg.timeout_s,
    )

    async def one(item: dict[str, Any]) -> dict[str, Any]:
        return {**item, **await client.complete(item, sampling_for(cfg, item["sample"]))}

    tasks = [asyncio.create_task(one(item)) for item in todo]
    chunk = max(1, min(16, cfg.concurrency))
    buffer: list[dict[str, Any]] = []
    try:
        for fut in asyncio.as_completed(tasks):
            buffer.append(await fut)
            if len(buffer) >= chunk:
                await asyncio.to_thread(flush, buffer)
                buffer = []
        if buffer:
            await asyncio.to_thread(flush, buffer)
    finally:
        for task in tasks:
            task.cancel()
        await client.close()


def pending_requests(cfg: EvalConfig, benchmark: str, folder: Path, problems: list[dict[str, Any]]) -> int:
    """How many requests an evaluation into ``folder`` still has to send (0: every answer is there)."""
    log_path = folder / "samples.jsonl"
    if not log_path.exists():
        return len(plan_requests(problems, benchmark, cfg))
    done = sample_log.answered_keys(sample_log.read_log(log_path))
    return sum((i["id"], i["sample"]) not in done for i in plan_requests(problems, benchmark, cfg))


def evaluate_benchmark(
    cfg: EvalConfig,
    benchmark: str,
    folder: Path,
    problems: list[dict[str, Any]],
    grader: Any,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``problems`` into ``folder``, resuming whatever is already there; return the summary."""
    start = time.time()
    settings = {"benchmark": benchmark, **{k: getattr(cfg, k) for k in SETTINGS_FIELDS if k != "benchmark"}}
    check_settings(folder, settings)
    log_path = folder / "samples.jsonl"
    items = plan_requests(problems, benchmark, cfg)
    sample_log.repair_tail(log_path)
    done = sample_log.answered_keys(sample_log.read_log(log_path))
    todo = [i for i in items if (i["id"], i["sample"]) not in done]

    bar = tqdm(
        total=len(items), initial=len(items) - len(todo), desc=f"eval {benchmark}", disable=not progress
    )

    def flush(results: list[dict[str, Any]]) -> None:
        append_jsonl(log_path, graded_rows(results, grader, cfg.model))
        bar.update(len(results))

    try:
        if todo and cfg.use_ray_data:
            from raystep.evaluate.ray_data import send_with_ray_data

            send_with_ray_data(todo, cfg, flush)
        elif todo:
            asyncio.run(_send_all(todo, cfg, flush))
    finally:
        bar.close()

    rows = sample_log.finalize(log_path, [(i["id"], i["sample"]) for i in items])
    meta = {
        **settings,
        "base_url": cfg.base_url,
        "k": cfg.k,
        "limit": cfg.limit,
        "engine": "ray-data-http" if cfg.use_ray_data else "openai-async",
        "requested_this_run": len(todo),
        "seconds_this_run": round(time.time() - start, 3),
    }
    summary = summarize(rows, meta)
    write_report(folder, summary)
    return summary
