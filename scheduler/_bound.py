"""The offline upper bound on GPU hit rate: Belady's MIN over one pooled cache.

Any placement policy on ``R`` replicas with ``G`` GPU slots each holds at most ``R * G``
adapters on GPUs at a time, and loads an adapter only for a request that missed. So the
union of all replicas' GPU slots behaves like one cache of ``R * G`` slots that loads on
demand (copies of one adapter on several replicas only waste room), and no such cache
hits more often than Belady's MIN, which on a miss evicts the entry whose next use is
farthest in the future. Its hit rate over the same request sequence is therefore an upper
bound for every policy that starts each load when the missing request is placed.

Failure mode: a replica whose slots are all pinned defers a load until one is released
(the simulator counts these as ``deferred_loads``), which serves requests out of arrival
order, and then a policy can beat MIN on the arrival order. With one slot and requests
a, b, a, b: MIN hits none, but if b's load waits until a's requests finish, the second a
and the second b both hit. The bound is exact for runs without deferred loads and an
estimate otherwise.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BeladyBound", "belady_bound"]


@dataclass(frozen=True, slots=True)
class BeladyBound:
    """Hits and lookups of MIN; base-model requests (key ``""``) are not counted."""

    hits: int
    requests: int
    capacity: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 1.0


def belady_bound(keys: Sequence[str], capacity: int) -> BeladyBound:
    """MIN's hits on ``keys`` (in order) with ``capacity`` slots, demand loading.

    O(n log n): next-use indices in one backward pass, and a max-heap on next use with
    lazy deletion (an entry is live only while it matches the key's current next use).
    Empty keys are base-model requests: always served, never cached, not counted.

    Raises:
        ValueError: ``capacity`` is negative.
    """
    if capacity < 0:
        raise ValueError(f"capacity={capacity} must be >= 0")
    requests = [key for key in keys if key]
    count = len(requests)
    never = count  # a next use past the end: "not used again"
    next_use = [never] * count
    seen: dict[str, int] = {}
    for i in range(count - 1, -1, -1):
        key = requests[i]
        next_use[i] = seen.get(key, never)
        seen[key] = i
    if capacity == 0:
        return BeladyBound(0, count, capacity)
    cached: dict[str, int] = {}  # key -> its next use
    heap: list[tuple[int, str]] = []  # (-next use, key), stale entries skipped
    hits = 0
    for i, key in enumerate(requests):
        upcoming = next_use[i]
        if key in cached:
            hits += 1
        elif len(cached) >= capacity:
            while True:
                negative_use, victim = heapq.heappop(heap)
                if cached.get(victim) == -negative_use:
                    del cached[victim]
                    break
        cached[key] = upcoming
        heapq.heappush(heap, (-upcoming, key))
    return BeladyBound(hits, count, capacity)
