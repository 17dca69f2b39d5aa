"""The benchmarks' driver-memory meter (Linux: reads ``/proc``): private pages and shared object-store
pages apart, their peaks sampled in a thread while a block of code runs.

``ru_maxrss`` alone misleads twice: it is one number for the whole process (the imports of vLLM and
torch set it before any row arrives), and Linux counts the object-store pages a process has touched
in its RSS.
"""

from __future__ import annotations

import resource
import threading


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident() -> dict[str, float]:
    """This process's resident memory now (MiB), split as Linux reports it: ``private`` (anonymous
    pages and mapped files: the heap, Python, the libraries) and ``object_store`` (shared-memory
    pages: Ray's object store, mapped into every worker; a page counts here once the process has
    touched it, though it belongs to the store)."""
    kib = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                kib[name] = int(value.split()[0])
    return {
        "rss": kib["VmRSS"] / 1024,
        "private": (kib["RssAnon"] + kib["RssFile"]) / 1024,
        "object_store": kib["RssShmem"] / 1024,
    }


class MemoryPeaks:
    """Peaks of ``resident()`` while a block of code runs, sampled every ``every`` seconds in a thread
    (``ru_maxrss`` is one number for the whole process and counts object-store pages as the driver's)."""

    def __init__(self, every: float = 0.5):
        self.every = every
        self.peaks = resident()
        self.private: list[float] = []  # every sample's private MiB, in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        now = resident()
        self.peaks = {k: max(v, now[k]) for k, v in self.peaks.items()}
        self.private.append(now["private"])

    def second_half_rise(self) -> float:
        """How far the private peak of the block's second half rose over its first half's (MiB): about
        0 when the driver's memory has levelled off; half the run times the rate when it keeps growing."""
        half = len(self.private) // 2
        if half == 0:
            return 0.0
        return max(self.private[half:]) - max(self.private[:half])

    def __enter__(self) -> MemoryPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.peaks.items()} | {
            "private_second_half_rise": round(self.second_half_rise(), 1)
        }
