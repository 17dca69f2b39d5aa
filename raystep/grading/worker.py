"""A grading worker process: math-verify in its main thread, where its ``signal.alarm`` timeouts work.

Run as ``python -m raystep.grading.worker [inner_timeout_s] [max_memory_mb]`` by ``pool.Grader``; it
reads ``{"i", "pred", "gold"}`` JSON lines on stdin and writes ``{"i", "correct", "status", "detail"}``
lines on stdout. No fork of a threaded parent, nothing to pickle, safe to start inside a Ray actor.
"""

from __future__ import annotations

import json
import os
import sys


def _wrap(answer: str) -> str:
    """math-verify finds answers inside math delimiters; a bare answer is wrapped in ``$...$``."""
    s = answer.strip()
    if s.startswith("$") or s.startswith("\\(") or s.startswith("\\["):
        return s
    return f"${s}$"


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies: a worker stuck in a C call (a huge power)
    never reads its stdin EOF and holds the GIL, so nothing inside it could notice. Elsewhere, the
    worker exits on stdin EOF once its current item ends."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(0)


def _worker_main(inner_timeout: int, max_memory_mb: int) -> None:
    """Read ``{"i", "pred", "gold"}`` lines, write ``{"i", "correct", "status", "detail"}`` lines."""
    import logging

    if max_memory_mb > 0:
        try:
            import resource

            limit = max_memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass

    _die_with_parent()

    from math_verify import parse, verify

    timeouts: list[str] = []

    class _TimeoutLog(logging.Handler):
        """math-verify swallows its own timeouts into a log line; catch that line to count them."""

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Timeout"):
                timeouts.append(record.name)

    for name in ("math_verify.parser", "math_verify.grader"):
        lg = logging.getLogger(name)
        lg.addHandler(_TimeoutLog())
        lg.propagate = False
        lg.setLevel(logging.WARNING)

    # the protocol gets its own copy of stdout; stray prints from any library go to stderr instead
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        timeouts.clear()
        status, correct, detail = "ok", False, "math_verify"
        try:
            gold = parse(_wrap(req["gold"]), parsing_timeout=inner_timeout)
            if timeouts:
                status, detail = "timeout", "parsing the gold timed out"
            elif not gold:
                status, detail = "error", "math-verify cannot parse the gold answer"
            else:
                pred = parse(_wrap(req["pred"]), parsing_timeout=inner_timeout)
                if timeouts:
                    status, detail = "timeout", "parsing the answer timed out"
                elif not pred:
                    status, detail = "unparsable", "math-verify cannot parse the answer"
                else:
                    correct = bool(verify(gold, pred, timeout_seconds=inner_timeout))
                    if timeouts and not correct:
                        status, detail = "timeout", "comparison timed out"
        except MemoryError:
            status, correct, detail = "error", False, "out of memory"
        except RecursionError:
            status, correct, detail = "unparsable", False, "nesting too deep"
        except Exception as exc:  # noqa: BLE001 - any failure of one item is that item's verdict
            status, correct, detail = "error", False, f"{type(exc).__name__}: {exc}"[:300]
        out.write(json.dumps({"i": req["i"], "correct": correct, "status": status, "detail": detail}) + "\n")
        out.flush()


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]) if len(sys.argv) > 1 else 2, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
