"""The parent side of grading: responses in, verdicts out, math-verify in worker processes.

math-verify's own timeouts use ``signal.alarm``, which only works in a process's main thread (not in
Ray actors' threads or thread pools) and cannot interrupt a long C call such as a huge integer power.
So each worker (``raystep.grading.worker``) runs math-verify in its main thread with its own timeouts,
and this pool enforces an outer per-item deadline: a stuck worker is killed and replaced, the item is
graded wrong with status ``timeout`` and counted. Nothing ever hangs.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raystep.grading.equivalence import fast_verdict
from raystep.grading.extract import METHODS, extract_answer

STATUSES = ("ok", "timeout", "unparsable", "error")


class GradingError(RuntimeError):
    """The grader itself cannot work (workers do not start); a single bad answer never raises."""


@dataclass
class Verdict:
    """One graded response. ``status`` other than ``ok`` is always graded wrong, and counted."""

    correct: bool
    pred: str | None
    method: str
    status: str
    detail: str = ""
    """Why a non-``ok`` status was given, or which path decided (``exact`` or ``math_verify``)."""
    seconds: float = 0.0
    """Time from handing the item to a worker to its verdict (0 on the exact path)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    started: float
    ready: bool = False
    item: int | None = None
    deadline: float = 0.0
    buf: bytearray = field(default_factory=bytearray)


class Grader:
    """Grades responses against golds with math-verify in ``workers`` processes.

    ``timeout_s`` is the hard limit for one item once a worker takes it. math-verify's own per-call
    timeouts (``inner_timeout_s``; whole seconds, as ``signal.alarm`` takes) default to half of it, so
    most slow items end inside the worker, which then lives on. ``fast_path=False`` sends every answer
    to math-verify (to measure or test it alone).
    Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        max_answer_chars: int = 100_000,
        max_memory_mb: int = 4096,
        startup_timeout_s: float = 120.0,
        progress: bool = False,
        fast_path: bool = True,
        inner_timeout_s: int | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self.inner_timeout = inner_timeout_s if inner_timeout_s is not None else max(1, int(timeout_s // 2))
        self.max_answer_chars = max_answer_chars
        self.max_memory_mb = max_memory_mb
        self.startup_timeout_s = startup_timeout_s
        self.progress = progress
        self.fast_path = fast_path
        self.stats: dict[str, int] = {
            "graded": 0,
            "fast_path": 0,
            "math_verify": 0,
            "restarts": 0,
            **{s: 0 for s in STATUSES},
            **{f"method_{m}": 0 for m in METHODS},
        }
        self._pool: list[_Worker] = []
        self._spawner: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def close(self) -> None:
        """Stop every worker (EOF on stdin, then kill what is left)."""
        self._closed = True
        pool, self._pool = self._pool, []
        for w in pool:
            try:
                if w.proc.stdin:
                    w.proc.stdin.close()
            except OSError:
                pass
        for w in pool:
            try:
                w.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            if w.proc.stdout:
                w.proc.stdout.close()
        if self._spawner is not None:
            self._spawner.shutdown(wait=False)
            self._spawner = None

    def _spawn(self) -> _Worker:
        """Start a worker from the grader's own long-lived thread: on Linux a worker dies with the
        thread that started it (``PR_SET_PDEATHSIG``), and callers' threads may come and go."""
        if self._spawner is None:
            self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raystep-grader")
        return self._spawner.submit(self._popen).result()

    def _popen(self) -> _Worker:
        root = str(Path(__file__).resolve().parents[2])  # the folder holding raystep/
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [
            sys.executable,
            "-u",
            "-m",
            "raystep.grading.worker",
            str(self.inner_timeout),
            str(self.max_memory_mb),
        ]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]
        return _Worker(proc=proc, started=time.monotonic())

    def _kill(self, w: _Worker) -> None:
        w.proc.kill()
        w.proc.wait()
        for pipe in (w.proc.stdin, w.proc.stdout):
            try:
                if pipe:
                    pipe.close()
            except OSError:
                pass

    def _replace(self, w: _Worker) -> None:
        self._kill(w)
        self._pool[self._pool.index(w)] = self._spawn()
        self.stats["restarts"] += 1

    # -- grading -----------------------------------------------------------------------------------

    def grade(self, responses: list[str], golds: list[str]) -> list[Verdict]:
        """One verdict per response, in order. Never raises for a bad answer; never hangs."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
        with self._lock:
            if self._closed:
                raise GradingError("this Grader is closed")
            verdicts: list[Verdict | None] = [None] * len(responses)
            todo: deque[tuple[int, str, str]] = deque()
            preds: list[tuple[str | None, str]] = []
            for i, (response, gold) in enumerate(zip(responses, golds, strict=True)):
                pred, method = extract_answer(response)
                preds.append((pred, method))
                gold = str(gold)
                if pred is None:
                    verdicts[i] = Verdict(False, None, method, "unparsable", "no answer found")
                elif len(pred) > self.max_answer_chars:
                    verdicts[i] = Verdict(False, pred[:200], method, "unparsable", "answer too long")
                else:
                    fast = fast_verdict(pred, gold) if self.fast_path else None
                    if fast is not None:
                        verdicts[i] = Verdict(fast, pred, method, "ok", "exact")
                        self.stats["fast_path"] += 1
                    else:
                        todo.append((i, pred, gold))
            if todo:
                self._run_workers(todo, preds, verdicts)
            out = [v for v in verdicts if v is not None]
            assert len(out) == len(responses)
            for v in out:
                self.stats["graded"] += 1
                self.stats[v.status] += 1
                self.stats[f"method_{v.method}"] += 1
            return out

    def _run_workers(
        self,
        todo: deque[tuple[int, str, str]],
        preds: list[tuple[str | None, str]],
        verdicts: list[Verdict | None],
    ) -> None:
        for w in list(self._pool):
            if w.item is not None:  # left busy by an interrupted call: its answer must not land here
                w.item = None
                self._replace(w)
        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="grading", unit="ans")
        remaining = len(todo)
        jobs = {i: (pred, gold) for i, pred, gold in todo}
        attempts: dict[int, int] = {}

        def retry(i: int) -> bool:
            """Requeue an item whose worker died under it, once; a second death is the item's verdict."""
            attempts[i] = attempts.get(i, 0) + 1
            if attempts[i] > 1:
                return False
            todo.appendleft((i, *jobs[i]))
            return True

        sel = selectors.DefaultSelector()
        try:
            while remaining:
                now = time.monotonic()
                for w in self._pool:
                    if w.ready and w.item is None and todo:
                        i, pred, gold = todo.popleft()
                        w.item, w.deadline = i, time.monotonic() + self.timeout_s
                        try:
                            assert w.proc.stdin is not None
                            w.proc.stdin.write(
                                (json.dumps({"i": i, "pred": pred, "gold": gold}) + "\n").encode()
                            )
                            w.proc.stdin.flush()
                        except (BrokenPipeError, OSError):
                            todo.appendleft((i, pred, gold))
                            w.item = None
                            self._replace(w)
                waits = []
                for w in self._pool:
                    if w.item is not None:
                        waits.append(w.deadline)
                    elif not w.ready:
                        waits.append(w.started + self.startup_timeout_s)
                timeout = max(0.0, min(waits) - now) if waits else 0.05
                for w in self._pool:
                    if w.item is not None or not w.ready:
                        assert w.proc.stdout is not None
                        sel.register(w.proc.stdout, selectors.EVENT_READ, w)
                events = sel.select(timeout)
                for key in list(sel.get_map().values()):
                    sel.unregister(key.fileobj)
                for key, _ in events:
                    w = key.data
                    done = self._read(w, preds, verdicts, retry)
                    remaining -= done
                    if bar is not None and done:
                        bar.update(done)
                now = time.monotonic()
                for w in list(self._pool):
                    if w.item is not None and now >= w.deadline:
                        i = w.item
                        pred, method = preds[i]
                        verdicts[i] = Verdict(
                            False,
                            pred,
                            method,
                            "timeout",
                            f"no verdict within {self.timeout_s}s",
                            self._elapsed(w),
                        )
                        self.stats["math_verify"] += 1
                        remaining -= 1
                        if bar is not None:
                            bar.update(1)
                        self._replace(w)
                    elif not w.ready and now >= w.started + self.startup_timeout_s:
                        self._kill(w)
                        raise GradingError(
                            f"a grading worker did not start within {self.startup_timeout_s}s "
                            f"({sys.executable} -m raystep.grading.worker)"
                        )
        finally:
            sel.close()
            if bar is not None:
                bar.close()

    def _elapsed(self, w: _Worker) -> float:
        return round(time.monotonic() - (w.deadline - self.timeout_s), 4)

    def _read(
        self,
        w: _Worker,
        preds: list[tuple[str | None, str]],
        verdicts: list[Verdict | None],
        retry: Callable[[int], bool],
    ) -> int:
        """Consume what a worker wrote; returns how many items it finished. A dead worker is replaced
        and its item retried once on another (a second death is graded ``error``)."""
        assert w.proc.stdout is not None
        try:
            chunk = os.read(w.proc.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return 0
        if not chunk:  # the worker died (for example killed for memory)
            done = 0
            if w.item is not None and retry(w.item):
                w.item = None
            elif w.item is not None:
                i = w.item
                pred, method = preds[i]
                verdicts[i] = Verdict(
                    False, pred, method, "error", f"worker exited ({w.proc.poll()})", self._elapsed(w)
                )
                self.stats["math_verify"] += 1
                done = 1
            elif not w.ready:
                self._kill(w)
                raise GradingError("a grading worker exited at start (is math-verify installed?)")
            self._replace(w)
            return done
        w.buf.extend(chunk)
        done = 0
        while b"\n" in w.buf:
            line, _, rest = bytes(w.buf).partition(b"\n")
            w.buf = bytearray(rest)
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # not a protocol line
            if not isinstance(msg, dict):
                continue
            if msg.get("ready"):
                w.ready = True
                continue
            i = msg["i"]
            if w.item != i:
                continue  # a late answer for an item already timed out; cannot happen after a kill
            pred, method = preds[i]
            correct = bool(msg["correct"]) and msg["status"] == "ok"
            verdicts[i] = Verdict(correct, pred, method, msg["status"], msg["detail"], self._elapsed(w))
            self.stats["math_verify"] += 1
            w.item = None
            done += 1
        return done


def grade_responses(
    responses: list[str], golds: list[str], workers: int = 2, timeout_s: float = 5.0
) -> list[Verdict]:
    """One-shot grading: start workers, grade, stop them."""
    with Grader(workers=workers, timeout_s=timeout_s) as grader:
        return grader.grade(responses, golds)
