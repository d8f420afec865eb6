"""Per-adapter demand: an exponentially decayed request rate with a half-life."""

from __future__ import annotations

import heapq
import math

from scheduler._types import AdapterDemand
from scheduler.exceptions import PolicyOptionError

__all__ = ["DemandTracker"]


class DemandTracker:
    """Exponentially decayed request rate per key, O(1) per observation and query.

    Each key keeps a decayed count ``c`` and the time it was last brought up to date;
    ``c`` halves every ``half_life_s`` seconds and grows by the weight of each request.
    For a steady stream of ``λ`` requests/s, ``c`` settles at ``λ · τ`` with
    ``τ = half_life_s / ln 2``, so ``rate = c / τ`` estimates ``λ`` in requests/s. The
    total over all keys decays the same way and is kept as one number, so the total rate
    is O(1) as well.

    Memory is bounded by ``max_keys``: inserting a key beyond the bound first forgets the
    coldest half of the keys (one O(n log n) sweep per ``max_keys / 2`` new keys, so O(1)
    amortised). A forgotten key that comes back starts from zero.

    Failure mode: right after a burst starts the rate lags (one half-life to reach half
    of the new rate); right after it stops the rate lingers for a few half-lives. Shorter
    half-lives react faster but are noisier for rare keys.

    Not thread-safe: one tracker per router (or simulator).

    Raises:
        PolicyOptionError: ``half_life_s`` or ``max_keys`` not positive.
    """

    def __init__(self, half_life_s: float = 30.0, *, max_keys: int = 100_000) -> None:
        if not half_life_s > 0:
            raise PolicyOptionError(f"DemandTracker half_life_s={half_life_s!r} must be > 0")
        if max_keys < 2:
            raise PolicyOptionError(f"DemandTracker max_keys={max_keys!r} must be >= 2")
        self.half_life_s = half_life_s
        self.max_keys = max_keys
        self._tau = half_life_s / math.log(2)
        self._counts: dict[str, tuple[float, float]] = {}
        self._total = 0.0
        self._total_at = 0.0

    def __len__(self) -> int:
        return len(self._counts)

    def __contains__(self, key: object) -> bool:
        return key in self._counts

    def _decayed(self, count: float, then: float, now: float) -> float:
        if now <= then:
            return count
        return count * math.exp((then - now) / self._tau)

    def observe(self, key: str, now: float, weight: float = 1.0) -> float:
        """Count a request for ``key`` at ``now`` (seconds); returns the key's new rate.

        Times are expected to be non-decreasing; an earlier time counts as ``now`` of the
        latest update (never decays backwards).
        """
        entry = self._counts.get(key)
        if entry is None:
            if len(self._counts) >= self.max_keys:
                self._forget_coldest(now)
            count, then = 0.0, now
        else:
            count, then = entry
        count = self._decayed(count, then, now) + weight
        self._counts[key] = (count, max(then, now))
        self._total = self._decayed(self._total, self._total_at, now) + weight
        self._total_at = max(self._total_at, now)
        return count / self._tau

    def rate(self, key: str, now: float) -> float:
        """The key's decayed request rate in requests/s at ``now`` (0.0 if unseen)."""
        entry = self._counts.get(key)
        if entry is None:
            return 0.0
        return self._decayed(entry[0], entry[1], now) / self._tau

    def total_rate(self, now: float) -> float:
        """The decayed request rate over all keys, forgotten ones included."""
        return self._decayed(self._total, self._total_at, now) / self._tau

    def demand(self, key: str, now: float, *, size_bytes: int = 0, rank: int = 0) -> AdapterDemand:
        """The :class:`AdapterDemand` a policy reads, with this tracker's rate for ``key``."""
        return AdapterDemand(key=key, size_bytes=size_bytes, rank=rank, rate=self.rate(key, now))

    def _forget_coldest(self, now: float) -> None:
        """Drop the coldest half of the keys (decayed to ``now``)."""
        drop = len(self._counts) - self.max_keys // 2
        coldest = heapq.nsmallest(
            drop,
            self._counts,
            key=lambda key: self._decayed(*self._counts[key], now),
        )
        for key in coldest:
            del self._counts[key]
