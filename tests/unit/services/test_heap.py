"""The heap trimmer of the replica processes (see services.serve._heap)."""

from __future__ import annotations

import threading

from services.serve._heap import start_heap_trimmer


def test_the_trimmer_starts_once_per_process() -> None:
    def trimmers() -> int:
        return sum(t.name == "loramux-heap-trim" for t in threading.enumerate())

    assert start_heap_trimmer(interval_s=0.05) is True  # glibc: malloc_trim exists
    assert start_heap_trimmer(interval_s=0.05) is True
    assert trimmers() == 1
