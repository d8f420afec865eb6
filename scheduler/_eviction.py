"""Eviction policies for one cache tier (see :class:`scheduler.EvictionPolicy`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["LRUEviction"]


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
