"""``raystep localize-bench``: the configured localizers scored against labels and against each other.

Every localizer runs over the same solutions: each method of ``localize.methods``, with ``judge``
expanded into one judge per prompt (``--judge-prompts``) and structured mode (``--judge-structured``).
The report holds, per localizer and for their combination (``localize.combine``):

- ProcessBench's scores against the rows' labels: accuracy on the wrong solutions (exact first-error
  index), accuracy on the correct ones (predicting -1), their harmonic mean "F1", and the plain
  accuracy over all rows. A row a localizer could not label counts as a miss and is counted separately;
  a judge's unreadable replies are counted too.
- the agreement matrix: for every pair, the share of rows both labelled on which their labels agree.

Rows come from one of three places:

- a labelled file in ProcessBench's form (``--data``), or ``Qwen/ProcessBench`` from the hub: ``problem,
  steps, label`` with ``label`` the 0-based index of the first wrong step or -1 (optional ``answer``,
  ``solution``);
- the arithmetic world (``data.source: synth`` and no ``--data``): the world's problems, solved with one
  slip in a random step (or correctly, ``--wrong-rate``); the exact verifier gives the labels, so each
  localizer's accuracy against it is reported;
- a run's samples (``--samples``): the policy's own solutions. On the arithmetic world the verifier labels
  them; elsewhere only the agreement matrix is reported.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raystep.config import JudgeConfig, RunConfig
from raystep.records import RowError, read_parquet, read_rows, write_jsonl

HUB_NAME = "Qwen/ProcessBench"


# --- rows ---------------------------------------------------------------------------------------------


def check_labelled(row: Any) -> dict[str, Any]:
    """A benchmark row in our shape; raises ``ValueError`` naming what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    problem = row.get("problem", row.get("question"))
    steps = row.get("steps")
    label = row.get("label")
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError("missing field 'problem'")
    if not isinstance(steps, (list, tuple)) or not steps or not all(isinstance(s, str) for s in steps):
        raise ValueError("field 'steps' must be a non-empty list of strings")
    if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
        raise ValueError(f"field 'label' must be an int in -1..{len(steps) - 1}, got {label!r}")
    answer = row.get("answer", row.get("reference_answer"))
    solution = row.get("solution", row.get("reference_solution"))
    out = {
        "id": str(row.get("id", "")),
        "question": problem,
        "steps": list(steps),
        "label": label,
        "answer": None if answer is None else str(answer),
    }
    if isinstance(solution, str) and solution.strip():
        out["solution"] = solution
    return out


def load_labelled(
    path: str | None = None, split: str = "gsm8k", limit: int | None = None
) -> list[dict[str, Any]]:
    """Rows from a local file (``.jsonl``, ``.json``, ``.parquet`` or a folder of shards) or the hub."""
    raw: list[tuple[str, int, Any]] = []
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such benchmark file")
        if p.is_dir() or p.suffix == ".parquet":
            raw = [(str(p), i, r) for i, r in enumerate(read_parquet(p), start=1)]
        elif p.suffix == ".json":
            data = json.loads(p.read_text())
            data = data.get(split, data.get("data")) if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise RowError(f"{p}: expected a JSON list of rows (or {{split: [...]}})")
            raw = [(str(p), i, r) for i, r in enumerate(data, start=1)]
        else:
            with p.open(encoding="utf-8") as fh:
                for i, line in enumerate(fh, start=1):
                    if line.strip():
                        try:
                            raw.append((str(p), i, json.loads(line)))
                        except json.JSONDecodeError as exc:
                            raise RowError(f"{p}:{i}: invalid JSON: {exc}") from None
    else:
        try:
            import datasets
        except ImportError as exc:  # pragma: no cover - datasets is a dev/hub extra
            raise RuntimeError("loading ProcessBench from the hub needs `pip install raystep[hub]`") from exc
        try:
            ds = datasets.load_dataset(HUB_NAME, split=split)
        except Exception as exc:
            raise RuntimeError(
                f"cannot load {HUB_NAME} split {split!r} from the hub ({type(exc).__name__}: {exc}); "
                "pass a local file with --data"
            ) from exc
        raw = [(f"{HUB_NAME}:{split}", i, dict(r)) for i, r in enumerate(ds, start=1)]
    rows = []
    for source, line, item in raw[: limit or None]:
        try:
            rows.append(check_labelled(item))
        except ValueError as exc:
            raise RowError(f"{source}:{line}: {exc}") from None
    for i, row in enumerate(rows):
        row["id"] = row["id"] or f"{split}-{i}"
        row["sample_id"] = row["id"]
    return rows


def verifier_label(verifier: Any, row: dict[str, Any]) -> int:
    """ProcessBench's label from an exact verifier: 0-based first wrong step, -1 when all are right."""
    return int(verifier(str(row["question"]), [str(s) for s in row["steps"]])) - 1


def world_rows(config: RunConfig, wrong_rate: float = 1.0, seed: int = 0) -> list[dict[str, Any]]:
    """Solutions to the arithmetic world's problems (``data``), shaped like collect's samples.

    A share ``wrong_rate`` of them carries one slip (``world.solution_with_mistake``: a random step and
    kind), the rest are the correct worked solutions; the exact verifier labels every one.
    """
    from raystep.stages.localizers import load_verifier
    from raystep.steps import STEP_PRIMER, build_prompt, split_steps
    from raystep.synth.world import (
        MISTAKES,
        generate,
        problem_row,
        solution,
        solution_with_mistake,
        spec_from_config,
    )

    data = config.data
    if data.source != "synth":
        raise ValueError(f"world rows need data.source: synth, got {data.source!r}")
    verifier = load_verifier("arithmetic")
    count = data.limit or data.synth.num_problems
    rng = random.Random(f"raystep-localize-bench:{seed}")
    rows = []
    for i, problem in enumerate(generate(spec_from_config(data), count, data.synth.seed, data.split)):
        base = problem_row(problem, data.split, i, data.synth.seed)
        wrong = rng.random() < wrong_rate
        text = (
            solution_with_mistake(problem, rng.randint(1, len(problem.events)), rng.choice(MISTAKES), rng)
            if wrong
            else solution(problem)
        )
        response = STEP_PRIMER + text[len("Step 1:") :]  # as collect stores it: the primer, then the rest
        row = {
            **base,
            "sample_id": f"{base['id']}-bench",
            "prompt": build_prompt(config.model.template, base["question"], STEP_PRIMER),
            "response": response,
            "steps": list(split_steps(response).steps),
        }
        row["label"] = verifier_label(verifier, row)
        rows.append(row)
    return rows


def sample_rows(config: RunConfig, path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """A run's samples (collect's shards or a file of sample rows) whose generation did not fail; on the
    arithmetic world labelled by the exact verifier, elsewhere unlabelled (``label`` None)."""
    rows = [r for r in read_rows(path, kind="sample") if not r.get("error")][: limit or None]
    verifier = None
    if config.data.source == "synth":
        from raystep.stages.localizers import load_verifier

        verifier = load_verifier("arithmetic")
    for row in rows:
        row["label"] = verifier_label(verifier, row) if verifier else None
    return rows


# --- scores ---------------------------------------------------------------------------------------------


def prediction(row: dict[str, Any]) -> int | None:
    """ProcessBench's index from a localized row: 0-based first wrong step, -1 for none, None on error."""
    if row.get("error"):
        return None
    return int(row["first_wrong_step"]) - 1 if int(row["first_wrong_step"]) >= 1 else -1


def score(labels: Sequence[int], preds: Sequence[int | None]) -> dict[str, Any]:
    """Accuracy on wrong solutions, on correct ones, their harmonic mean (ProcessBench's F1), and the
    accuracy over all rows."""
    wrong = [(lab, p) for lab, p in zip(labels, preds, strict=True) if lab != -1]
    right = [(lab, p) for lab, p in zip(labels, preds, strict=True) if lab == -1]
    acc_wrong = sum(p == lab for lab, p in wrong) / len(wrong) if wrong else None
    acc_correct = sum(p == -1 for _, p in right) / len(right) if right else None
    f1 = None
    if acc_wrong is not None and acc_correct is not None:
        f1 = 2 * acc_wrong * acc_correct / (acc_wrong + acc_correct) if acc_wrong + acc_correct else 0.0
    matched = sum(p == lab for lab, p in zip(labels, preds, strict=True))
    return {
        "n": len(labels),
        "n_wrong": len(wrong),
        "n_correct": len(right),
        "acc_wrong": acc_wrong,
        "acc_correct": acc_correct,
        "f1": f1,
        "accuracy": matched / len(labels) if labels else None,
        "errors": sum(p is None for p in preds),
    }


def agreement(preds: dict[str, list[int | None]]) -> dict[str, Any]:
    """For every pair of localizers: how many rows both labelled, and the share of those they agree on."""
    names = list(preds)
    rate: list[list[float | None]] = []
    both: list[list[int]] = []
    for a in names:
        rate_row: list[float | None] = []
        both_row: list[int] = []
        for b in names:
            pairs = [
                (x, y) for x, y in zip(preds[a], preds[b], strict=True) if x is not None and y is not None
            ]
            both_row.append(len(pairs))
            rate_row.append(sum(x == y for x, y in pairs) / len(pairs) if pairs else None)
        rate.append(rate_row)
        both.append(both_row)
    return {"names": names, "rate": rate, "both_labelled": both}


def judge_counts(located: list[dict[str, Any]]) -> dict[str, int]:
    """A judge's reading of its replies: unreadable ones (each counted, retried or not) and by reader."""
    counts: dict[str, int] = {"unparsed_replies": 0, "unparsed_rows": 0}
    for row in located:
        ev = json.loads(row["evidence"]) if row.get("evidence") else {}
        counts["unparsed_replies"] += int(ev.get("parse_failures") or 0)
        counts["unparsed_rows"] += "VerdictParseError" in str(row.get("error") or "")
        if ev.get("parsed_by"):
            key = f"parsed_by_{ev['parsed_by']}"
            counts[key] = counts.get(key, 0) + 1
    return counts


# --- running --------------------------------------------------------------------------------------------


def judge_variants(
    config: RunConfig, prompts: Sequence[str] | None = None, modes: Sequence[str] | None = None
) -> list[tuple[str, JudgeConfig]]:
    """``(name, JudgeConfig)`` for every prompt x structured mode; a single one keeps the name ``judge``."""
    judge = config.localize.judge
    prompts = list(prompts or [judge.prompt])
    modes = list(modes or [judge.structured])
    out = []
    for prompt in prompts:
        for mode in modes:
            name = "judge"
            if len(prompts) * len(modes) > 1:
                name = f"judge:{prompt}" + (f"/{mode}" if len(modes) > 1 else "")
            out.append(
                (
                    name,
                    JudgeConfig.model_validate({**judge.model_dump(), "prompt": prompt, "structured": mode}),
                )
            )
    return out


def _locate_all(localizer: Any, rows: list[dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from raystep.stages.localizers import locate_safely

    located: list[dict[str, Any]] = []
    with tqdm(total=len(rows), desc=f"localize-bench {localizer.name}", unit="solution") as bar:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            located.extend(locate_safely(localizer, chunk))
            bar.update(len(chunk))
    return located


def run_bench(
    config: RunConfig,
    rows: list[dict[str, Any]],
    out_dir: Path,
    localizers: Sequence[Any] | None = None,
    judges: Sequence[tuple[str, JudgeConfig]] | None = None,
) -> dict[str, Any]:
    """Run every localizer over ``rows``, write predictions and the report under ``out_dir``.

    ``localizers``: given ones (not closed here), else built from the config with ``judges`` standing in
    for ``judge``. The top-level scores are the combination's (``localize.combine``) over the localizers
    that the config names, the first judge variant standing for ``judge``.
    """
    from raystep.stages.localizers import (
        CombinedLocalizer,
        build_localizers,
        close_localizer,
        require_reference,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    own = localizers is None
    if localizers is None:
        for _, judge in judges or []:
            require_reference(rows, judge, "localize-bench rows")
        if "judge" in config.localize.methods and not judges:
            require_reference(rows, config.localize.judge, "localize-bench rows")
        localizers = build_localizers(config, cache_dir=out_dir / "judge-cache", judges=judges)
    names = [loc.name for loc in localizers]
    if len(set(names)) != len(names):
        raise ValueError(f"localizer names must be unique, got {names}")
    located: dict[str, list[dict[str, Any]]] = {}
    try:
        for loc in localizers:
            located[loc.name] = _locate_all(loc, rows, config.localize.batch_size)
    finally:
        if own:
            for loc in localizers:
                close_localizer(loc)
    # the configured combination: one judge (the first variant) with the other methods
    members = [loc for loc in localizers if not loc.name.startswith("judge:")]
    first_judge = next((loc for loc in localizers if loc.name.startswith("judge:")), None)
    if first_judge is not None:
        members.insert(
            next((i for i, m in enumerate(config.localize.methods) if m == "judge"), 0), first_judge
        )
    combined = CombinedLocalizer(members, config.localize.combine) if len(members) > 1 else None
    combined_rows = (
        [combined.reduce(row, [located[m.name][i] for m in members]) for i, row in enumerate(rows)]
        if combined
        else located[members[0].name]
    )
    preds = {name: [prediction(r) for r in located[name]] for name in names}
    top_preds = [prediction(r) for r in combined_rows]
    labels = [r.get("label") for r in rows]
    labelled = all(lab is not None for lab in labels) and bool(rows)
    per_localizer: dict[str, dict[str, Any]] = {}
    for name in names:
        entry: dict[str, Any] = score(labels, preds[name]) if labelled else {"n": len(rows)}
        entry["errors"] = sum(p is None for p in preds[name])
        if name.startswith("judge"):
            entry.update(judge_counts(located[name]))
        per_localizer[name] = entry
    top = (
        score(labels, top_preds)
        if labelled
        else {"n": len(rows), "errors": sum(p is None for p in top_preds)}
    )
    report: dict[str, Any] = {
        "localizer": combined.name if combined else members[0].name,
        "methods": list(config.localize.methods),
        "combine": config.localize.combine,
        "labels": "given" if labelled else "none",
        **top,
        "localizers": per_localizer,
        "agreement": agreement(preds),
    }
    write_jsonl(
        out_dir / "predictions.jsonl",
        (
            {
                "id": r.get("id"),
                "sample_id": r.get("sample_id"),
                "label": r.get("label"),
                "pred": p,
                "preds": {name: preds[name][i] for name in names},
                "errors": {name: located[name][i].get("error") for name in names},
                "evidence": {name: located[name][i].get("evidence") for name in names},
            }
            for i, (r, p) in enumerate(zip(rows, top_preds, strict=True))
        ),
    )
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


# --- output ---------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def format_report(report: dict[str, Any]) -> str:
    """The combination's scores (as before), then a table per localizer and the agreement matrix."""
    lines = [
        f"localizer {report['localizer']}: n={report['n']} (wrong {report.get('n_wrong', '-')}, correct "
        f"{report.get('n_correct', '-')}, errors {report['errors']})",
    ]
    if report.get("labels") == "given":
        lines += [
            f"  acc on wrong   {_pct(report['acc_wrong'])}",
            f"  acc on correct {_pct(report['acc_correct'])}",
            f"  F1             {_pct(report['f1'])}",
        ]
    per = report.get("localizers") or {}
    if len(per) > 1 or any("unparsed_replies" in v for v in per.values()):
        lines += ["", markdown_tables(report)]
    return "\n".join(lines)


def markdown_tables(report: dict[str, Any]) -> str:
    """The per-localizer scores and the agreement matrix as Markdown tables (what the docs quote)."""
    per = report["localizers"]
    labelled = report.get("labels") == "given"
    head = "| localizer | n | accuracy | acc on wrong | acc on correct | F1 | errors | unparsed replies |"
    out = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, s in per.items():
        unparsed = str(s["unparsed_replies"]) if "unparsed_replies" in s else "-"
        if labelled:
            cells = [_pct(s["accuracy"]), _pct(s["acc_wrong"]), _pct(s["acc_correct"]), _pct(s["f1"])]
        else:
            cells = ["-"] * 4
        out.append(f"| {name} | {s['n']} | " + " | ".join(cells) + f" | {s['errors']} | {unparsed} |")
    agree = report["agreement"]
    names = agree["names"]
    out += ["", "agreement (share of rows both labelled where the labels are equal):", ""]
    out.append("| | " + " | ".join(names) + " |")
    out.append("| --- |" + " ---: |" * len(names))
    for name, rates in zip(names, agree["rate"], strict=True):
        out.append(f"| {name} | " + " | ".join(_pct(r) for r in rates) + " |")
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from raystep.config_args import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument(
        "--data", help="local JSONL/JSON/Parquet file in ProcessBench form (default: the hub, or the world)"
    )
    parser.add_argument(
        "--split", default="gsm8k", help="ProcessBench split: gsm8k, math, olympiadbench, omnimath"
    )
    parser.add_argument("--samples", help="a run's samples/ folder (or a sample file) to localize instead")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    parser.add_argument(
        "--judge-prompts",
        help="comma-separated judge prompts to compare (stepdpo,raystep); default: the config's",
    )
    parser.add_argument(
        "--judge-structured", help="comma-separated structured modes to compare (auto,json_schema,off)"
    )
    parser.add_argument(
        "--wrong-rate", type=float, default=1.0, help="arithmetic world: share of solutions with a slip"
    )
    parser.add_argument("--seed", type=int, default=0, help="arithmetic world: which slips")
    parser.add_argument("--out", help="report folder (default: <run>/localize_bench/<split or world>)")


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def main(args: argparse.Namespace) -> int:
    from raystep.config_args import config_from_args

    config = config_from_args(args)
    if args.samples:
        rows, where = sample_rows(config, args.samples, args.limit), "samples"
    elif not args.data and config.data.source == "synth":
        if args.limit:
            config = config.model_copy(update={"data": config.data.model_copy(update={"limit": args.limit})})
        rows, where = world_rows(config, args.wrong_rate, args.seed), "world"
    else:
        rows, where = load_labelled(args.data, args.split, args.limit), args.split
    judges = None
    if "judge" in config.localize.methods and (args.judge_prompts or args.judge_structured):
        judges = judge_variants(config, _csv(args.judge_prompts), _csv(args.judge_structured))
    out = Path(args.out) if args.out else Path(config.run_dir) / "localize_bench" / where
    report = run_bench(config, rows, out, judges=judges)
    print(format_report(report))
    print(f"report: {out / 'report.json'}")
    return 0
