"""Problem loaders: GSM8K, MATH, MATH500, generic JSONL/Parquet files and Hugging Face hub names.

Every loader returns problem rows (``id, dataset, question, answer, solution?, subject?, level?``) with
``answer`` already the normalised gold (``raystep.grading.gold_answer``), so later stages compare
answers without knowing where a problem came from. A malformed record fails with its file and line, or,
when a ``Rejects`` sink is given (config ``data.rejects: true``), goes there and is counted.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from raystep.config import DataConfig
from raystep.errors import InputError
from raystep.grading import gold_answer, last_boxed
from raystep.records import Rejects, RowError, check_row, iter_json_lines

LOCAL_FILES: dict[tuple[str, str], str] = {
    ("gsm8k", "train"): "gsm8k/train.jsonl",
    ("gsm8k", "test"): "gsm8k/test.jsonl",
    ("gsm8k-stepdpo", "test"): "gsm8k/stepdpo_GSM8K_test_data.jsonl",
    ("math500", "test"): "math/math500_test.jsonl",
    ("math", "test"): "math/test.jsonl",
    ("math", "train"): "math/train.jsonl",
}
"""Where each known dataset lives under the data folder (``$RAYSTEP_DATA``)."""

HUB_NAMES: dict[str, str] = {
    "gsm8k": "openai/gsm8k",
    "math500": "HuggingFaceH4/MATH-500",
    "math": "EleutherAI/hendrycks_math",
}
"""The hub dataset used for a known source when no local file exists."""

HUB_CONFIGS: dict[str, list[str]] = {
    "openai/gsm8k": ["main"],
    "EleutherAI/hendrycks_math": [
        "algebra",
        "counting_and_probability",
        "geometry",
        "intermediate_algebra",
        "number_theory",
        "prealgebra",
        "precalculus",
    ],
}
"""Hub datasets split into named configs; all of them are loaded and concatenated."""

BENCHMARKS = ("gsm8k", "gsm8k-stepdpo", "math500", "math")
FILE_SOURCES = ("jsonl", "json", "parquet")

# our field -> the columns it is read from, in order, when ``column_map`` does not name one
_DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("id", "unique_id", "idx"),
    "question": ("question", "problem", "instruction", "prompt"),
    "answer": ("answer", "gold", "final_answer"),
    "solution": ("solution", "output"),
    "subject": ("subject", "type"),
    "level": ("level",),
    "dataset": ("dataset",),
}


class DatasetError(InputError):
    """A dataset that cannot be loaded at all (missing file, unreachable hub name, unknown source)."""


def default_data_dir() -> Path | None:
    """``$RAYSTEP_DATA``, else ``<repo>/../shared/data``; None when neither exists."""
    env = os.environ.get("RAYSTEP_DATA")
    if env:
        return Path(env) if Path(env).exists() else None
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path if path.exists() else None


# ----------------------------------------------------------------------------------------------------
# Reading raw records with their locations
# ----------------------------------------------------------------------------------------------------


def _iter_file(path: Path, rejects: Rejects | None) -> Iterator[tuple[str, Any]]:
    """``(location, record)`` for each record of a JSONL, JSON (array) or Parquet file."""
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise RowError(f"{path}: not a readable Parquet file: {exc}") from None
        for i, row in enumerate(table.to_pylist(), start=1):
            yield f"{path}:row {i}", row
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RowError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        except UnicodeDecodeError as exc:
            raise RowError(f"{path}: invalid UTF-8 (byte {exc.start})") from None
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise DatasetError(f"{path}: a .json dataset must be an array of objects")
        for i, row in enumerate(data, start=1):
            yield f"{path}:item {i}", row
    else:
        for lineno, _line, row in iter_json_lines(path, rejects):
            yield f"{path}:{lineno}", row


DATA_FIX = "set data.path to a local JSONL/Parquet file (or data.hub_name to a local dataset folder)"
"""How to do without the hub, for the data stages (an evaluation names its own setting instead)."""


def _load_hub(name: str, split: str, fix: str = DATA_FIX) -> Iterator[tuple[str, Any]]:
    """Records of a hub dataset (every named config of it, when it has them)."""
    try:
        import datasets as hf_datasets
    except ImportError as exc:
        raise DatasetError(
            f"loading hub dataset {name!r} needs the 'datasets' package (pip install raystep[hub]), or {fix}"
        ) from exc
    configs: list[str | None] = list(HUB_CONFIGS.get(name, [None]))
    for config_name in configs:
        try:
            ds = hf_datasets.load_dataset(name, config_name, split=split)
        except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
            label = f"{name}" + (f" ({config_name})" if config_name else "")
            raise DatasetError(
                f"cannot load hub dataset {label!r}, split {split!r}: {type(exc).__name__}: {exc}. "
                f"Without network access, download it elsewhere and {fix}."
            ) from None
        prefix = f"{name}" + (f"/{config_name}" if config_name else "") + f"[{split}]"
        for i, row in enumerate(ds, start=1):
            yield f"{prefix}:row {i}", row


# ----------------------------------------------------------------------------------------------------
# Turning records into problem rows
# ----------------------------------------------------------------------------------------------------


def _pick(raw: dict[str, Any], ours: str, column_map: dict[str, str]) -> tuple[str | None, Any]:
    """``(column, value)`` for one of our fields: the mapped column, else the first default present."""
    if ours in column_map:
        col = column_map[ours]
        return col, raw.get(col)
    for col in _DEFAULT_COLUMNS[ours]:
        if raw.get(col) is not None:
            return col, raw[col]
    return None, None


def _as_text(name: str, value: Any, allow_numbers: bool = False) -> str:
    if isinstance(value, str):
        return value
    if allow_numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"field '{name}' must be a string, got {type(value).__name__}")


def _level(value: Any) -> int | None:
    """MATH levels come as 3 or "Level 3" (and "Level ?" for a few problems: no level)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(?:Level\s*)?(\d+)\s*", value)
        return int(m.group(1)) if m else None
    raise ValueError(f"field 'level' must be an integer or 'Level N', got {type(value).__name__}")


def to_problem(
    raw: Any, dataset: str, index: int, column_map: dict[str, str] | None = None, id_prefix: str | None = None
) -> dict[str, Any]:
    """One problem row from a raw record of any supported format; ``ValueError`` names what is wrong.

    Formats: OpenAI GSM8K (``question``, ``answer`` = worked solution ending ``#### N``), Step-DPO's
    eval files (``idx, instruction, output, answer: [N]``), MATH/MATH500 (``problem, solution, answer?,
    subject|type, level, unique_id``; without ``answer`` the gold is the solution's last boxed answer),
    and any file whose columns ``column_map`` names (our field -> its column). Records without an id
    get ``<id_prefix>-<index>`` (index = position in the source, so ids are stable across reruns).
    """
    if not isinstance(raw, dict):
        raise ValueError(f"expected an object, got {type(raw).__name__}")
    cmap = column_map or {}
    for ours, col in cmap.items():
        if ours in ("question", "answer") and col not in raw:
            raise ValueError(f"missing field '{col}' (column_map {ours} -> {col})")

    q_col, question = _pick(raw, "question", cmap)
    if question is None:
        raise ValueError(f"missing field '{cmap.get('question', 'question')}'")
    question = _as_text(q_col or "question", question)
    if not question.strip():
        raise ValueError(f"field '{q_col}' is empty")

    s_col, solution = _pick(raw, "solution", cmap)
    solution = _as_text(s_col or "solution", solution) if solution is not None else None

    a_col, answer = _pick(raw, "answer", cmap)
    if isinstance(answer, (list, tuple)):
        if not answer:
            raise ValueError(f"field '{a_col}' is an empty list")
        answer = answer[0]
    if answer is not None:
        answer = _as_text(a_col or "answer", answer, allow_numbers=True)
        if "####" in answer and solution is None:
            solution = answer  # OpenAI GSM8K: the answer field is the worked solution
        gold = gold_answer(dataset, answer)
    elif solution is not None:
        if "####" in solution:
            gold = gold_answer("gsm8k", solution)
        else:
            gold = last_boxed(solution) or ""
            if not gold:
                raise ValueError(f"missing field 'answer', and field '{s_col}' has no \\boxed{{}} answer")
    else:
        raise ValueError(f"missing field '{cmap.get('answer', 'answer')}'")
    if not gold.strip():
        raise ValueError(f"field '{a_col or s_col}' gives an empty answer")
    check_gold(dataset, gold, a_col or s_col or "answer")

    _, ident = _pick(raw, "id", cmap)
    if ident is not None and not isinstance(ident, (str, int)):
        raise ValueError(f"field 'id' must be a string or integer, got {type(ident).__name__}")
    _, row_dataset = _pick(raw, "dataset", cmap)
    row: dict[str, Any] = {
        "id": str(ident) if ident is not None else f"{id_prefix or dataset}-{index}",
        "dataset": row_dataset if isinstance(row_dataset, str) and row_dataset else dataset,
        "question": question,
        "answer": gold,
    }
    if solution is not None:
        row["solution"] = solution
    _, subject = _pick(raw, "subject", cmap)
    if subject is not None:
        row["subject"] = _as_text("subject", subject)
    _, level = _pick(raw, "level", cmap)
    level = _level(level)
    if level is not None:
        row["level"] = level
    check_row(row, "problem")
    return row


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def check_gold(dataset: str, gold: str, column: str) -> None:
    """A gold answer the grader can use: GSM8K's is a number (its ``#### N``), any other is balanced
    LaTeX. Caught at load, so a broken row never becomes a gold answer like "no final number here"."""
    if dataset.lower().startswith("gsm8k") and not _NUMBER.fullmatch(gold):
        raise ValueError(
            f"field '{column}' has no final '#### <number>' answer (gold would be {gold[:40]!r})"
        )
    depth = 0
    for ch in gold:
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            break
    if depth != 0:
        raise ValueError(f"field '{column}': answer {gold[:40]!r} has unbalanced braces")


def _convert_all(
    records: Iterator[tuple[str, Any]],
    dataset: str,
    column_map: dict[str, str],
    limit: int | None,
    rejects: Rejects | None,
    id_prefix: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Problem rows of ``records``, one at a time (only the ids seen are kept, to refuse a duplicate)."""
    kept = 0
    seen: set[str] = set()
    for index, (where, raw) in enumerate(records):
        try:
            row = to_problem(raw, dataset, index, column_map, id_prefix)
            if row["id"] in seen:
                raise ValueError(f"duplicate id {row['id']!r}")
        except ValueError as exc:
            if rejects is None:
                raise RowError(f"{where}: {exc}") from None
            source, _, line = where.rpartition(":")
            rejects.add(source, _line_number(line), str(exc), _jsonable(raw))
            continue
        seen.add(row["id"])
        yield row
        kept += 1
        if limit is not None and kept >= limit:
            break  # before reading on: records past the limit are neither loaded nor rejected


def _line_number(text: str) -> int:
    m = re.search(r"\d+", text)
    return int(m.group(0)) if m else 0


def _jsonable(raw: Any) -> Any:
    try:
        json.dumps(raw)
        return raw
    except (TypeError, ValueError):
        return repr(raw)


# ----------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------


def _local_file(source: str, split: str, data_dir: Path | None) -> Path | None:
    rel = LOCAL_FILES.get((source, split))
    if rel is None and source in ("math500", "gsm8k-stepdpo"):
        rel = LOCAL_FILES[(source, "test")]  # these exist only as a test set
    if rel is None or data_dir is None:
        return None
    path = data_dir / rel
    return path if path.exists() else None


GENERATED_SOURCES: dict[str, str] = {"synth": "raystep.synth.world:load_problems"}
"""``data.source`` names whose problems a generator makes (no file, no hub): name -> ``"module:function"``
taking the ``data`` section. A world plugs in here by name, as verifiers do in ``localizers.verifier``,
so loading datasets never imports a world."""


def register_source(name: str, import_path: str) -> None:
    """Add (or replace) a generated ``data.source``; ``import_path`` is ``module:function``."""
    if ":" not in import_path:
        raise ValueError(
            f"source {name!r}: import path must look like 'module:function', got {import_path!r}"
        )
    GENERATED_SOURCES[name] = import_path


def _generated(source: str) -> Callable[[DataConfig], list[dict[str, Any]]]:
    module, _, func = GENERATED_SOURCES[source].partition(":")
    return getattr(importlib.import_module(module), func)


def load_problems(
    data: DataConfig, data_dir: Path | None = None, rejects: Rejects | None = None, fix: str = DATA_FIX
) -> list[dict[str, Any]]:
    """Problem rows for the ``data`` section (``source``, ``path``, ``hub_name``, ``split``, ``limit``).

    ``fix`` says how to do without the hub when a known source has no local file and the hub fails.
    """
    return list(iter_problems(data, data_dir, rejects, fix))


def iter_problems(
    data: DataConfig, data_dir: Path | None = None, rejects: Rejects | None = None, fix: str = DATA_FIX
) -> Iterator[dict[str, Any]]:
    """``load_problems`` one row at a time: a corpus is read as it is written out (collect's
    ``problems/`` shards), never held whole. Errors in the configuration raise at the first row.

    Ids are unique for every source (they are the units of resume): a file's duplicate is a row error
    (rejected, or raised, as any malformed row); a generator's is a ``DatasetError``.
    """
    if data.source in GENERATED_SOURCES:
        yield from _unique_ids(_generated(data.source)(data), data.source)
        return
    records, dataset, id_prefix = _records(data, data_dir or default_data_dir(), rejects, fix)
    yield from _convert_all(records, dataset, dict(data.column_map), data.limit, rejects, id_prefix)


def _records(
    data: DataConfig, data_dir: Path, rejects: Rejects | None, fix: str
) -> tuple[Iterator[tuple[str, Any]], str, str | None]:
    """The raw records of a file, folder, hub or known source, with the ``dataset`` label of their rows
    and the prefix of their ids (known sources only)."""
    source = data.source
    if data.path:
        path = Path(data.path).expanduser()
        if not path.exists():
            raise DatasetError(f"data.path {path} does not exist")
        files = (
            sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
            if path.is_dir()
            else [path]
        )
        if not files:
            raise DatasetError(f"data.path {path}: no .jsonl, .json or .parquet files in it")
        records = (rec for f in files for rec in _iter_file(f, rejects))
        return records, _dataset_label(source, path.stem), None

    if source in FILE_SOURCES:
        raise DatasetError(f"data.source {source!r} needs data.path (the file or folder to read)")
    if source == "hub" or data.hub_name:
        name = data.hub_name
        if not name:
            raise DatasetError("data.source 'hub' needs data.hub_name (for example 'openai/gsm8k')")
        return _load_hub(name, data.split), _dataset_label(source, name.rstrip("/").split("/")[-1]), None
    if source not in BENCHMARKS:
        known = ", ".join((*BENCHMARKS, *FILE_SOURCES, "hub", *GENERATED_SOURCES))
        raise DatasetError(f"unknown data.source {source!r}; known: {known}")

    dataset = _dataset_label(source, source)
    local = _local_file(source, data.split, data_dir)
    if local is not None:
        return _iter_file(local, rejects), dataset, f"{dataset}-{data.split}"
    hub = HUB_NAMES.get(source)
    if hub is None:
        raise DatasetError(
            f"no local file for {source!r} (looked for {LOCAL_FILES.get((source, 'test'))} under {data_dir}); "
            f"{fix}"
        )
    return _load_hub(hub, data.split, fix), dataset, f"{dataset}-{data.split}"


def _unique_ids(rows: Iterable[dict[str, Any]], source: str) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise DatasetError(f"data.source {source!r} made the id {row['id']!r} twice (ids must be unique)")
        seen.add(row["id"])
        yield row


def _dataset_label(source: str, fallback: str) -> str:
    """The ``dataset`` value of rows: the known benchmark name, else the file or hub name."""
    if source == "gsm8k-stepdpo":
        return "gsm8k"
    if source in BENCHMARKS:
        return source
    return fallback


def load_benchmark(
    name: str,
    data_dir: Path | None = None,
    limit: int | None = None,
    setting: str = "eval.data_dir",
    hub: bool = True,
) -> list[dict[str, Any]]:
    """A test set by name: ``gsm8k`` (test), ``gsm8k-stepdpo``, ``math500`` or ``math`` (the full MATH test:
    ``<data>/math/test.jsonl`` when present, else the hub).

    With ``hub`` off (a folder the user named in ``setting``) a missing file is an error naming that
    setting at once, rather than a long wait on the hub; errors after a hub attempt name it too.
    """
    if name not in BENCHMARKS:
        raise DatasetError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    rel = LOCAL_FILES[(name, "test")]
    if not hub and _local_file(name, "test", data_dir) is None:
        raise DatasetError(
            f"{setting} is {data_dir}, which has no {rel} for benchmark {name!r}: put the file there, "
            f"or leave {setting} empty to read $RAYSTEP_DATA or the hub"
        )
    fix = f"put it at {rel} under {setting}"
    data = DataConfig(source=name, split="test", limit=limit)
    return load_problems(data, data_dir=data_dir, fix=fix)
