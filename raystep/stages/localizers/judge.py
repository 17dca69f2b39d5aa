"""An LLM judge over the OpenAI chat API, as in the Step-DPO paper (which used GPT-4).

The judge sees the problem, the reference answer and the numbered steps, marks each step correct,
neutral or incorrect and stops at the first incorrect one; neutral counts as an error (a step that
makes no progress is not a step worth keeping). Replies are free-form, so the parser reads the common
shapes: ``Step 3: incorrect``, ``**Step 2** - Neutral``, JSON lists or objects.

Calls are the expensive, flaky part of localization, hence: a thread pool bounded by
``max_concurrency``, a requests-per-second pacer, our own retry loop with exponential backoff on 429,
5xx, time-outs, connection errors and malformed replies (the SDK's retries are off so every attempt is
counted), and an on-disk cache keyed by a hash of the full request, so a rerun makes no request at all.
A row whose attempts all fail keeps its error; it is never dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openai

from raystep.config import JudgeConfig
from raystep.stages.localizers.base import labelled

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0
LABELS = ("correct", "neutral", "incorrect")

SYSTEM_PROMPT = (
    "You are a meticulous math teacher who grades solutions step by step. "
    "You judge whether each step is mathematically valid and moves the solution forward."
)

USER_TEMPLATE = """Review the following solution to a math problem, one step at a time.

### Problem
{question}
{reference}
### Solution steps
{steps}

For each step, in order, decide whether it is:
- correct: valid and makes progress towards the answer;
- neutral: not wrong, but makes no progress (irrelevant, a repetition, or an empty restatement);
- incorrect: contains an error in calculation, logic, or understanding of the problem.

Write one line per step in the form "Step <n>: <correct|neutral|incorrect> - <short reason>".
Stop at the first step you mark incorrect and do not judge the steps after it.
If every step is correct, end with "All steps are correct."
"""


class VerdictParseError(ValueError):
    """A reply that names no step label: retried, then recorded as the row's error."""


class MalformedReply(ValueError):
    """A response body that is not a chat completion (no JSON, no choices, no content)."""


def format_steps(steps: list[str]) -> str:
    """Numbered steps; a ``Step k:`` header already present in the text is not repeated."""
    lines = []
    for k, step in enumerate(steps, start=1):
        body = re.sub(rf"^\s*Step {k}:\s*", "", str(step)).strip()
        lines.append(f"Step {k}: {body}")
    return "\n".join(lines)


def build_messages(question: str, steps: list[str], answer: str | None = None) -> list[dict[str, str]]:
    """The judge request; the reference answer is included when known (ProcessBench has none)."""
    reference = f"\n### Reference answer\n{answer}\n" if answer not in (None, "") else ""
    user = USER_TEMPLATE.format(question=question.strip(), reference=reference, steps=format_steps(steps))
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# --- verdict parsing -------------------------------------------------------------------------------

_NEGATED = re.compile(r"\b(?:not|isn't|is not|n't)\s+(?:fully\s+|entirely\s+)?correct\b", re.I)
_LABEL_WORD = re.compile(
    r"\b(incorrect(?:ly)?|wrong(?:ly)?|erroneous|errors?|invalid|neutral|correct(?:ly)?|right|valid)\b"
    r"|([\u2713\u2717\u2714\u2718\u274c\u2705])",
    re.I,
)
_LABEL_MAP = {
    "incorrect": "incorrect",
    "wrong": "incorrect",
    "erroneous": "incorrect",
    "error": "incorrect",
    "invalid": "incorrect",
    "neutral": "neutral",
    "correct": "correct",
    "right": "correct",
    "valid": "correct",
    "\u2713": "correct",
    "\u2714": "correct",
    "\u2705": "correct",
    "\u2717": "incorrect",
    "\u2718": "incorrect",
    "\u274c": "incorrect",
}
_STEP_MENTION = re.compile(r"\bstep\s*\**\s*#?\s*(\d+)\b", re.I)
_ALL_CORRECT = re.compile(
    r"\b(?:all|every)\s+(?:the\s+)?steps?\s+(?:are|is)\s+correct\b|\bno\s+(?:incorrect|wrong)\s+steps?\b",
    re.I,
)
_FIRST_WRONG = re.compile(
    r"first\s+(?:incorrect|wrong|erroneous)\s+step\s*(?:is|:)?\s*(?:step\s*)?\**\s*(\d+|none|-1)", re.I
)


def _norm_label(value: Any) -> str | None:
    if isinstance(value, bool):
        return "correct" if value else "incorrect"
    if isinstance(value, (int, float)):
        return {1: "correct", 0: "neutral", -1: "incorrect"}.get(int(value))
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _NEGATED.search(text):
        return "incorrect"
    m = _LABEL_WORD.search(text)
    if not m:
        return None
    word = (m.group(1) or m.group(2)).lower()
    return _LABEL_MAP.get(word) or _LABEL_MAP[re.sub(r"(?:ly|s)$", "", word)]


def _labels_from_json(obj: Any) -> dict[int, str] | None:
    """Labels from the JSON shapes judges like to produce; None when the shape is not one of them."""
    if isinstance(obj, dict):
        for key in ("steps", "verdicts", "labels", "judgements", "judgments", "results"):
            if key in obj:
                return _labels_from_json(obj[key])
        labels: dict[int, str] = {}
        for key, value in obj.items():
            m = re.fullmatch(r"\s*(?:step\s*)?(\d+)\s*", str(key), re.I)
            label = _norm_label(
                value.get("label", value.get("verdict")) if isinstance(value, dict) else value
            )
            if m and label:
                labels[int(m.group(1))] = label
        return labels or None
    if isinstance(obj, list):
        labels = {}
        for i, item in enumerate(obj, start=1):
            if isinstance(item, dict):
                step = item.get("step", item.get("index", i))
                raw = next(
                    (item[k] for k in ("label", "verdict", "judgement", "judgment", "result") if k in item),
                    None,
                )
                label = _norm_label(raw)
                try:
                    step = int(re.sub(r"\D", "", str(step)) or i)
                except ValueError:
                    step = i
            else:
                step, label = i, _norm_label(item)
            if label:
                labels.setdefault(step, label)
        return labels or None
    return None


def _json_candidates(text: str) -> list[Any]:
    blocks = re.findall(r"```(?:json)?\s*(.*?)```", text, re.S)
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if starts:
        s = min(starts)
        e = max(text.rfind("]"), text.rfind("}"))
        if e > s:
            blocks.append(text[s : e + 1])
    out = []
    for block in blocks:
        try:
            out.append(json.loads(block))
        except (json.JSONDecodeError, ValueError):
            continue
    return out


def parse_verdicts(text: str, num_steps: int) -> tuple[int, dict[int, str]]:
    """(first wrong step, labels) from a judge reply; first wrong is 1-based, 0 when none.

    Neutral counts as wrong. Raises ``VerdictParseError`` when the reply labels no step at all and does
    not say that every step is correct.
    """
    labels: dict[int, str] = {}
    for obj in _json_candidates(text):
        found = _labels_from_json(obj)
        if found:
            labels = found
            break
    if not labels:
        mentions = list(_STEP_MENTION.finditer(text))
        for i, m in enumerate(mentions):
            end = mentions[i + 1].start() if i + 1 < len(mentions) else len(text)
            segment = text[m.end() : end]
            # a label belongs to its step's line: stop at the first blank line
            segment = re.split(r"\n\s*\n", segment, maxsplit=1)[0]
            label = _norm_label(segment)
            step = int(m.group(1))
            if label and 1 <= step <= num_steps:
                labels.setdefault(step, label)
    labels = {k: v for k, v in labels.items() if 1 <= k <= num_steps}
    wrong = sorted(k for k, v in labels.items() if v in ("incorrect", "neutral"))
    if wrong:
        return wrong[0], labels
    first = _FIRST_WRONG.search(text)
    if first and first.group(1).isdigit() and 1 <= int(first.group(1)) <= num_steps:
        step = int(first.group(1))
        labels.setdefault(step, "incorrect")
        return step, labels
    if labels or _ALL_CORRECT.search(text) or (first and not first.group(1).isdigit()):
        return 0, labels
    raise VerdictParseError(f"no step verdict found in reply: {text[:200]!r}")


# --- transport: pacing, cache, retries -------------------------------------------------------------


class RatePacer:
    """Spaces request starts at least ``1/rps`` apart across threads (no bursts)."""

    def __init__(self, requests_per_second: float):
        self.interval = 1.0 / requests_per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class JudgeCache:
    """One JSON file per request hash: atomic writes, shareable by actors on a shared run folder."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(value, ensure_ascii=False))
        os.replace(tmp, path)


def api_key_for(base_url: str, env_name: str) -> str:
    """The key from the environment variable the config names; local servers need none."""
    key = os.environ.get(env_name)
    if key:
        return key
    host = urlparse(base_url).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        return "EMPTY"
    raise ValueError(f"the judge at {base_url} needs an API key: set the environment variable ${env_name}")


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, (openai.APIConnectionError, MalformedReply, VerdictParseError)):
        return True  # APITimeoutError is an APIConnectionError
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS
    return isinstance(exc, openai.APIResponseValidationError)


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {str(exc)[:200]}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class JudgeLocalizer:
    """The paper's judge behind bounded concurrency, pacing, retries and a request cache."""

    def __init__(
        self,
        config: JudgeConfig,
        cache_dir: str | os.PathLike[str] | None = None,
        requests_per_second: float | None = None,
        client: openai.OpenAI | None = None,
    ):
        self.config = config
        self.name = "judge"
        self.client = client or openai.OpenAI(
            base_url=config.base_url,
            api_key=api_key_for(config.base_url, config.api_key_env),
            max_retries=0,
            timeout=config.timeout_s,
        )
        self.cache = JudgeCache(cache_dir) if (config.cache and cache_dir is not None) else None
        self.pacer = RatePacer(requests_per_second or config.requests_per_second)
        self.stats: dict[str, int] = {
            "requests": 0,
            "cache_hits": 0,
            "retries": 0,
            "failed_rows": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
        }
        self._lock = threading.Lock()

    def _count(self, **delta: int) -> None:
        with self._lock:
            for k, v in delta.items():
                self.stats[k] += v

    def request_body(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.config.model,
            "messages": build_messages(str(row["question"]), list(row["steps"]), row.get("answer")),
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }

    def _call(self, body: dict[str, Any]) -> tuple[str, dict[str, int]]:
        self.pacer.wait()
        self._count(requests=1)
        raw = self.client.chat.completions.with_raw_response.create(**body)
        try:
            data = json.loads(raw.http_response.text)
            content = data["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise MalformedReply(f"not a chat completion: {raw.http_response.text[:120]!r}") from exc
        if not isinstance(content, str):
            raise MalformedReply("the reply has no text content")
        usage = data.get("usage") or {}
        tokens = {
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
        }
        self._count(**tokens)
        return content, tokens

    def judge_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One row: cache, else up to ``1 + max_retries`` attempts; never raises."""
        try:
            return self._judge_row(row)
        except Exception as exc:  # a malformed row must not take its batch down
            self._count(failed_rows=1)
            return labelled(
                row, self.name, 0, {"model": self.config.model}, f"judge failed: {_describe(exc)}"
            )

    def _judge_row(self, row: dict[str, Any]) -> dict[str, Any]:
        steps = list(row["steps"])
        body = self.request_body(row)
        key = JudgeCache.key(body)
        evidence: dict[str, Any] = {"model": self.config.model, "request": key[:16], "cached": False}
        if not steps:
            return labelled(row, self.name, 0, evidence, "no steps to judge")
        cached = self.cache.get(key) if self.cache else None
        parsed = None
        if cached is not None:
            try:
                parsed = parse_verdicts(str(cached["reply"]), len(steps))
            except (KeyError, VerdictParseError):
                parsed = None  # an entry this parser cannot read: ask again and overwrite it
        if cached is not None and parsed is not None:
            self._count(cache_hits=1)
            step, labels = parsed
            evidence.update(cached=True, labels=_labels_json(labels), reply=cached["reply"], attempts=0)
            evidence["usage"] = {"prompt_tokens": 0, "completion_tokens": 0}
            return labelled(row, self.name, step, evidence)
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        errors: list[str] = []
        attempts = 1 + self.config.max_retries
        for attempt in range(attempts):
            try:
                reply, tokens = self._call(body)
                for k, v in tokens.items():
                    usage[k] += v
                step, labels = parse_verdicts(reply, len(steps))
            except Exception as exc:
                errors.append(_describe(exc))
                if not _retryable(exc) or attempt == attempts - 1:
                    break
                self._count(retries=1)
                delay = _retry_after(exc)
                if delay is None:
                    delay = self.config.backoff_s * (2**attempt) * (1 + random.random() * 0.25)
                time.sleep(min(delay, MAX_BACKOFF_S))
                continue
            if self.cache:
                self.cache.put(key, {"reply": reply, "usage": tokens, "model": self.config.model})
            evidence.update(labels=_labels_json(labels), reply=reply, attempts=attempt + 1, usage=usage)
            if errors:
                evidence["retried_errors"] = errors
            return labelled(row, self.name, step, evidence)
        self._count(failed_rows=1)
        evidence.update(attempts=len(errors), usage=usage, errors=errors)
        return labelled(
            row, self.name, 0, evidence, f"judge failed after {len(errors)} attempt(s): {errors[-1]}"
        )

    def locate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not rows:
            return []
        with ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, len(rows))) as pool:
            return list(pool.map(self.judge_row, rows))


def _labels_json(labels: dict[int, str]) -> dict[str, str]:
    return {str(k): v for k, v in sorted(labels.items())}
