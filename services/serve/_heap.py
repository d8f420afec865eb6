"""Give freed heap memory back to the OS in long-running replica processes.

A replica allocates and frees per-request objects all day (bodies, token lists, Ray task
specs). With glibc's malloc, freed chunks stay mapped in their arena until its top is
free, so a process whose Python heap is flat (tracemalloc says so over a soak) still
grows in RSS. Two counters, both per process:

* ``MALLOC_ARENA_MAX`` (set by ``loramux up`` before Ray starts its workers, and in the
  deploy files) caps the arenas each thread may spread over;
* :func:`start_heap_trimmer` calls ``malloc_trim(0)`` every ``interval_s`` on a daemon
  thread, returning free pages of every arena (it takes the arena locks for
  milliseconds; a minute apart that is noise).

Failure mode: where the C library has no ``malloc_trim`` (musl, macOS) the trimmer does
not start and says so in the log; nothing else changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

__all__ = ["ARENA_MAX", "start_heap_trimmer"]

logger = logging.getLogger(__name__)

# glibc's arena cap for the service's processes (its default is 8 per core).
ARENA_MAX = "2"

_started = threading.Lock()
_running = False


def start_heap_trimmer(interval_s: float = 60.0) -> bool:
    """Start this process's trimmer once (later calls do nothing); returns whether a
    trimmer runs."""
    global _running
    with _started:
        if _running:
            return True
        try:
            trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            logger.info("this C library has no malloc_trim: freed heap is not trimmed")
            return False
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int

        def run() -> None:
            while True:
                time.sleep(interval_s)
                trim(0)

        threading.Thread(target=run, name="loramux-heap-trim", daemon=True).start()
        _running = True
        return True
