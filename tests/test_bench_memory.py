"""The scale benchmark's driver-memory meter: private pages and shared (object-store) pages apart."""

from __future__ import annotations

import mmap
import os
import tempfile

import pytest
from memory_meter import MemoryPeaks, resident

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")

MIB = 1024 * 1024


def test_private_pages_count_as_private_not_object_store() -> None:
    before = resident()
    with MemoryPeaks() as memory:
        block = bytearray(b"x" * (64 * MIB))  # written: resident, anonymous; alive at the last sample
    del block
    assert memory.peaks["private"] - before["private"] >= 48, memory.rounded()
    assert memory.peaks["object_store"] - before["object_store"] < 16, memory.rounded()


def test_touched_shared_memory_counts_as_object_store_pages() -> None:
    before = resident()
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryFile(dir=folder) as f:
        f.truncate(64 * MIB)
        with mmap.mmap(f.fileno(), 64 * MIB, flags=mmap.MAP_SHARED) as shared:
            with MemoryPeaks() as memory:
                for offset in range(0, 64 * MIB, mmap.PAGESIZE):
                    shared[offset] = 1  # touched, as the driver touches object-store pages it reads
    if folder is None:
        pytest.skip("no /dev/shm: shared pages are file pages here")
    assert memory.peaks["object_store"] - before["object_store"] >= 48, memory.rounded()
    assert memory.peaks["rss"] >= memory.peaks["private"], memory.rounded()


def test_the_second_half_rise_tells_levelled_off_from_growing() -> None:
    """Memory taken early and then held reads as levelled off; memory taken late, as still growing."""
    import time

    with MemoryPeaks(every=0.02) as early:
        held = bytearray(b"x" * (32 * MIB))
        time.sleep(0.6)
    del held
    with MemoryPeaks(every=0.02) as late:
        time.sleep(0.6)
        taken = bytearray(b"x" * (32 * MIB))
        time.sleep(0.05)
    del taken
    assert early.second_half_rise() < 8, early.private
    assert late.second_half_rise() >= 24, late.private
