"""Eviction policies for one cache tier (see :class:`scheduler.EvictionPolicy`)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable

from scheduler._demand import DemandTracker

__all__ = ["DemandAwareEviction", "LRUEviction"]


class LRUEviction:
    """Least recently used: evicts the candidate touched longest ago.

    Failure mode: a scan of many one-off adapters flushes hot ones, since recency is all
    it sees; the demand-aware policy exists for that.
    """

    def __init__(self) -> None:
        self._order: OrderedDict[str, None] = OrderedDict()

    def on_insert(self, key: str, size_bytes: int, now: float) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def on_access(self, key: str, now: float) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def on_remove(self, key: str) -> None:
        self._order.pop(key, None)

    def victim(self, candidates: Iterable[str], now: float) -> str | None:
        allowed = set(candidates)
        for key in self._order:
            if key in allowed:
                return key
        # Candidates the policy never saw inserted are the least known: evict them first.
        return next(iter(sorted(allowed)), None)


class DemandAwareEviction:
    """Evicts the candidate with the least decayed demand per byte (LFU with aging, GDSF).

    Each access counts in a :class:`DemandTracker` (the estimator the placement policy
    uses), so a key's count halves every ``half_life_s`` without use: this exponential
    aging does what LFU-DA's inflation does, letting a once-hot adapter go. With
    ``size_aware`` the priority is ``count / size_bytes`` as in GreedyDual-Size-Frequency
    with unit cost: of equally used adapters the larger goes first, since its bytes buy
    fewer hits. That suits a tier budgeted in bytes; a tier counted in slots (GPU adapter
    slots hold one adapter whatever its size) wants ``size_aware=False``, else a large
    hot adapter loses its slot to a small cold one. Ties go to the least recently used,
    then the smallest key.

    Candidates the policy never saw inserted have no count and go first. Counts outlive
    an eviction (up to the tracker's ``max_keys``), so an adapter that comes back is
    judged by its history rather than as new.

    ``victim`` is O(candidates) (one exponential each); a tier holds tens to hundreds
    of entries, so this is microseconds.

    Failure mode: a new adapter starts with a count of one and is the first victim
    until it has been used a few times, so under heavy churn a rising adapter can be
    evicted and reloaded before it proves itself (the half-life bounds how long older
    counts keep the advantage).
    """

    def __init__(
        self, *, half_life_s: float = 30.0, size_aware: bool = True, max_keys: int = 100_000
    ) -> None:
        self.size_aware = size_aware
        self._counts = DemandTracker(half_life_s, max_keys=max_keys)
        self._sizes: dict[str, int] = {}
        self._last_access: dict[str, float] = {}

    def on_insert(self, key: str, size_bytes: int, now: float) -> None:
        self._sizes[key] = max(1, size_bytes)
        self.on_access(key, now)

    def on_access(self, key: str, now: float) -> None:
        self._counts.observe(key, now)
        self._last_access[key] = now

    def on_remove(self, key: str) -> None:
        self._sizes.pop(key, None)
        self._last_access.pop(key, None)

    def priority(self, key: str, now: float) -> float:
        """The value of keeping ``key``: decayed uses (per byte when size aware)."""
        rate = self._counts.rate(key, now)
        if self.size_aware:
            return rate / self._sizes.get(key, 1)
        return rate

    def victim(self, candidates: Iterable[str], now: float) -> str | None:
        last_access = self._last_access
        return min(
            candidates,
            key=lambda key: (self.priority(key, now), last_access.get(key, -math.inf), key),
            default=None,
        )
