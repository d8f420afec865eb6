"""The default placement: residency tiers, bounded loads, demand-driven replication."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from scheduler._demand import DemandTracker
from scheduler._eviction import DemandAwareEviction
from scheduler._policies._common import (
    pow2_pair,
    require_positive,
    require_replicas,
)
from scheduler._policies._hashing import RendezvousRanking
from scheduler._types import AdapterDemand, EvictionPolicy, ReplicaView, Tier
from scheduler.exceptions import PolicyOptionError

__all__ = ["CacheAwarePolicy"]

_HOLDER_TIERS = (Tier.GPU, Tier.HOST, Tier.DISK, Tier.LOADING)
# How many of a cold adapter's spill candidates are reordered to prefer a free GPU slot:
# only the front of the ranking is ever used, so the rest keeps rendezvous order.
_SPILL_WINDOW = 4


class CacheAwarePolicy:
    """Residency first, loads bounded, hot adapters spread over a stable set of homes.

    **Homes.** Each adapter has a rendezvous (highest-random-weight) order of replicas,
    the same in every router for the same seed. Its first ``k`` replicas are its homes.

    **Bounded load.** ``cap = max(load_floor, ceil((1 + epsilon) * (total_load + 1) / R))``
    as in consistent hashing with bounded loads (Mirrokni et al.), with a floor because
    a replica batching a few requests is not overloaded. A replica whose load (in-flight
    + queued) is at or above the cap is only ranked in the last group.

    **Replication.** ``need = share * (total_load + 1) / cap``, where ``share`` is the
    adapter's request rate over the total rate (from the :class:`DemandTracker`), is
    how many replicas its share of the load fills up to the cap. ``k`` grows to
    ``ceil(need)`` as soon as ``need > k`` and shrinks only when ``need`` falls below
    ``shrink_ratio * (k - 1)``, to ``ceil(need / shrink_ratio)``; the band stops a
    borderline adapter from flapping between copies. While ``k >= 2`` all homes under
    the cap form the first group, least ``load + cold_penalty`` first (a home that lacks
    the adapter pays ``cold_penalty`` requests' worth for the load), so the copies are
    made where the demand is and reused.

    **Ranking.** Only under-cap replicas are ranked (at least one always is: the least
    loaded is at most the mean), and not all of them, since only the front is used:

    1. hot adapters (``k >= 2``): its homes;
    2. per tier GPU, host, disk, loading: holders that are homes, then other holders,
       least loaded first (so copies outside the home set drain once an adapter cools
       and the cache evicts them);
    3. homes without the adapter (a cold adapter's stable first choice);
    4. the next few replicas in rendezvous order, those with a free GPU slot first (a
       load there evicts nothing).

    A router whose candidates all reject ranks again with fresher loads.

    Base-model requests (``key == ""``) use the power of two choices.

    **Demand.** ``adapter.rate`` is used when the caller sets it, else the tracker's
    rate. With no ``demand`` tracker given the policy owns one and counts each
    :meth:`on_placed`; a tracker passed in is read only (its owner observes requests).

    Failure modes: when an adapter turns hot, each new home pays one cold load, and a
    burst that arrives faster than the rate estimate rises (one half-life) overfills the
    first home up to the cap before spreading; a cold adapter's home may have no free
    slot, and its load evicts the coldest resident there (thrash is left to the
    demand-aware eviction, which keeps the frequently used). Residency read from a
    stale view can send requests to a copy that is gone (a cold load, not an error).
    """

    name = "cache_aware"

    def __init__(
        self,
        *,
        seed: int = 0,
        epsilon: float = 0.25,
        load_floor: int = 4,
        cold_penalty: float = 2.0,
        shrink_ratio: float = 0.5,
        half_life_s: float = 30.0,
        demand: DemandTracker | None = None,
        max_hot_keys: int = 4096,
    ) -> None:
        require_positive("epsilon", epsilon, policy=self.name)
        require_positive("load_floor", load_floor, policy=self.name)
        require_positive("half_life_s", half_life_s, policy=self.name)
        require_positive("max_hot_keys", max_hot_keys, policy=self.name)
        if cold_penalty < 0:
            raise PolicyOptionError(f"policy {self.name!r}: cold_penalty={cold_penalty!r} < 0")
        if not 0 < shrink_ratio < 1:
            raise PolicyOptionError(
                f"policy {self.name!r}: shrink_ratio={shrink_ratio!r} must be in (0, 1)"
            )
        self.epsilon = epsilon
        self.load_floor = load_floor
        self.cold_penalty = cold_penalty
        self.shrink_ratio = shrink_ratio
        self._owns_demand = demand is None
        self.demand = DemandTracker(half_life_s) if demand is None else demand
        self._max_hot_keys = max_hot_keys
        self._rng = random.Random(seed)
        self._rendezvous = RendezvousRanking(seed)
        self._homes: dict[str, int] = {}

    def home_count(self, key: str) -> int:
        """How many homes ``key`` has now (1 unless it is being replicated)."""
        return self._homes.get(key, 1)

    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]:
        require_replicas(replicas, self.name)
        key = adapter.key
        if not key:
            return [pow2_pair(self._rng, replicas)]
        loads = [r.in_flight + r.queued for r in replicas]
        total = sum(loads)
        cap = max(self.load_floor, math.ceil((1.0 + self.epsilon) * (total + 1) / len(replicas)))
        order = self._rendezvous.order(key, replicas)
        k = self._update_home_count(adapter, total, cap, len(replicas), now)
        homes = order[:k]
        home_set = set(homes)
        held = [
            i
            for i, r in enumerate(replicas)
            if key in r.gpu or key in r.host or key in r.disk or key in r.loading
        ]
        tiers = {i: replicas[i].tier_of(key) for i in held}

        groups: list[list[int]] = []
        taken: set[int] = set()
        if k >= 2:
            penalty = self.cold_penalty
            hot = [i for i in homes if loads[i] < cap]
            hot.sort(key=lambda i: loads[i] + (0.0 if tiers.get(i) is Tier.GPU else penalty))
            groups.append(hot)
            taken.update(hot)
        if held:
            under_held = [i for i in held if loads[i] < cap and i not in taken]
            under_held.sort(key=loads.__getitem__)
            for tier in _HOLDER_TIERS:
                groups.append([i for i in under_held if tiers[i] is tier and i in home_set])
                groups.append([i for i in under_held if tiers[i] is tier and i not in home_set])
            taken.update(held)
        groups.append([i for i in homes if i not in taken and loads[i] < cap])
        taken.update(homes)
        groups.append(self._spill_window(replicas, order, loads, cap, taken))
        return [[replicas[i] for i in group] for group in groups if group]

    @staticmethod
    def _spill_window(
        replicas: Sequence[ReplicaView],
        order: Sequence[int],
        loads: Sequence[int],
        cap: int,
        taken: set[int],
    ) -> list[int]:
        """The next few under-cap replicas in rendezvous order, free GPU slots first."""
        window: list[int] = []
        for i in order:
            if loads[i] < cap and i not in taken:
                window.append(i)
                if len(window) == _SPILL_WINDOW:
                    break
        window.sort(key=lambda i: not _has_free_slot(replicas[i]))
        return window

    def _update_home_count(
        self, adapter: AdapterDemand, total_load: int, cap: int, replica_count: int, now: float
    ) -> int:
        key = adapter.key
        rate = adapter.rate or self.demand.rate(key, now)
        total_rate = self.demand.total_rate(now)
        share = min(1.0, rate / total_rate) if total_rate > 0 else 0.0
        need = share * (total_load + 1) / cap
        current = self._homes.get(key, 1)
        if need > current:
            updated = math.ceil(need)
        elif need < self.shrink_ratio * (current - 1):
            updated = max(1, math.ceil(need / self.shrink_ratio))
        else:
            updated = current
        updated = min(updated, replica_count)
        if updated == 1:
            self._homes.pop(key, None)
        else:
            if key not in self._homes and len(self._homes) >= self._max_hot_keys:
                # A key that stops being requested never shrinks; forget the oldest.
                del self._homes[next(iter(self._homes))]
            self._homes[key] = updated
        return updated

    def on_placed(self, adapter: AdapterDemand, replica: ReplicaView, now: float) -> None:
        """Counts the request (base-model ones too) in the policy's own demand tracker.

        A tracker passed in as ``demand`` is not touched: its owner observes requests.
        """
        if self._owns_demand:
            self.demand.observe(adapter.key, now)

    def new_eviction_policy(self) -> EvictionPolicy:
        return DemandAwareEviction(half_life_s=self.demand.half_life_s)


def _has_free_slot(replica: ReplicaView) -> bool:
    return len(replica.gpu) + len(replica.loading) < replica.gpu_slots
