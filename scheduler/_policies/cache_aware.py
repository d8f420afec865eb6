"""The default placement: residency tiers, bounded loads, demand-driven replication."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from scheduler._demand import DemandTracker
from scheduler._eviction import DemandAwareEviction
from scheduler._policies._common import pow2_pair, require_positive, require_replicas
from scheduler._policies._hashing import RendezvousRanking
from scheduler._types import AdapterDemand, EvictionPolicy, ReplicaView
from scheduler.exceptions import PolicyOptionError

__all__ = ["CacheAwarePolicy"]

# How many spill candidates (non-holders past the homes) are ranked, free GPU slot first.
_SPILL_WINDOW = 4
# Group indices: the hot homes, then per tier (GPU, host, disk, loading) the holders
# that are homes and those that are not, then the homes without a copy, then the spill.
_HOT_GROUP = 0
_COLD_HOME_GROUP = 9
_SPILL_GROUP = 10
_GROUP_COUNT = 11


class CacheAwarePolicy:
    """Residency first, loads bounded, hot adapters spread over a stable set of homes.

    **Homes.** Each adapter has a rendezvous (highest-random-weight) order of replicas,
    the same in every router for the same seed; its first ``k`` replicas are its homes.
    Adding or removing a replica changes the first choice of about 1/R of the adapters.

    **Bounded load.** ``cap = max(load_floor, ceil((1 + epsilon) * (total_load + 1) / R))``
    as in consistent hashing with bounded loads (Mirrokni et al.), with a floor because
    a replica batching a few requests is not overloaded. A replica whose load (in-flight
    + queued) is at or above the cap is not ranked, whatever it holds.

    **Replication.** ``need = share * (total_load + 1) / cap``, where ``share`` is the
    adapter's request rate over the total rate (from the :class:`DemandTracker`), is
    how many replicas its share of the load fills up to the cap. ``k`` grows to
    ``ceil(need)`` as soon as ``need > k`` and shrinks only when ``need`` falls below
    ``shrink_ratio * (k - 1)``, to ``ceil(need / shrink_ratio)``; the band stops a
    borderline adapter from flapping between copies. While ``k >= 2`` all homes under
    the cap form the first group, least ``load + cold_penalty`` first (a home without
    a GPU copy pays ``cold_penalty`` requests' worth for the load), so the copies are
    made where the demand is and then reused.

    **Ranking.** Only under-cap replicas are ranked (at least one always is: the least
    loaded is at most the mean), and only the first ``k + scan_width`` of them in the
    adapter's rendezvous order: a decision costs one O(R) pass for the mean load plus
    O(k + scan_width) residency checks. The groups, best first:

    1. hot adapters (``k >= 2``): its homes;
    2. per tier GPU, host, disk, loading: holders that are homes, then other holders,
       least loaded first (copies outside the home set drain once an adapter cools,
       and the cache evicts them);
    3. homes without the adapter (a cold adapter's stable first choice);
    4. the next few replicas in rendezvous order, those with a free GPU slot first (a
       load there evicts nothing).

    A router whose candidates all reject ranks again with fresher loads. Base-model
    requests (``key == ""``) use the power of two choices.

    **Demand.** ``adapter.rate`` is used when the caller sets it, else the tracker's
    rate. With no ``demand`` tracker given the policy owns one and counts each
    :meth:`on_placed`; a tracker passed in is only read (its owner observes requests).

    Failure modes: a copy outside the scanned prefix of the rendezvous order (left by a
    replica-set change or a spill far down the order) is not seen and drains unused.
    When an adapter turns hot each new home pays one cold load, and a burst faster than
    the rate estimate rises (one half-life) fills the first home to the cap before
    spreading. A cold adapter's home may have no free slot; its load then evicts the
    coldest resident there (thrash is left to the demand-aware eviction, which keeps
    the frequently used). Residency read from a stale view can send a request to a copy
    that is gone (a cold load, not an error).

    Raises:
        PolicyOptionError: an option out of range.
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
        scan_width: int = 8,
        half_life_s: float = 30.0,
        demand: DemandTracker | None = None,
        max_hot_keys: int = 4096,
    ) -> None:
        for option, value in (
            ("epsilon", epsilon),
            ("load_floor", load_floor),
            ("scan_width", scan_width),
            ("half_life_s", half_life_s),
            ("max_hot_keys", max_hot_keys),
        ):
            require_positive(option, value, policy=self.name)
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
        self.scan_width = scan_width
        self._owns_demand = demand is None
        self.demand = DemandTracker(half_life_s) if demand is None else demand
        self._max_hot_keys = max_hot_keys
        self._rng = random.Random(seed)
        self._rendezvous = RendezvousRanking(seed)
        self._homes: dict[str, int] = {}

    def home_count(self, key: str) -> int:
        """How many homes ``key`` has now (1 unless it is being replicated)."""
        return self._homes.get(key, 1)

    def homes(self, key: str, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        """The replicas that are ``key``'s homes now, first home first."""
        order = self._rendezvous.order(key, replicas)
        return [replicas[position] for position in order[: self.home_count(key)]]

    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]:
        require_replicas(replicas, self.name)
        key = adapter.key
        if not key:
            return [pow2_pair(self._rng, replicas)]
        total = sum([r.in_flight + r.queued for r in replicas])
        cap = max(self.load_floor, math.ceil((1.0 + self.epsilon) * (total + 1) / len(replicas)))
        order = self._rendezvous.order(key, replicas)
        k = self._update_home_count(adapter, total, cap, len(replicas), now)
        hot = k >= 2
        penalty = self.cold_penalty
        # Entries are (sort key, rendezvous rank, replica); ranks are unique, so sorting
        # never compares replicas.
        groups: list[list[tuple[float, int, ReplicaView]]] = [[] for _ in range(_GROUP_COUNT)]
        spill = groups[_SPILL_GROUP]
        examined = 0
        for rank, position in enumerate(order):
            replica = replicas[position]
            load = replica.in_flight + replica.queued
            if load >= cap:
                continue
            if key in replica.gpu:
                tier = 0
            elif key in replica.host:
                tier = 1
            elif key in replica.disk:
                tier = 2
            elif key in replica.loading:
                tier = 3
            else:
                tier = 4
            is_home = rank < k
            if hot and is_home:
                groups[_HOT_GROUP].append((load + (penalty if tier else 0.0), rank, replica))
            elif tier < 4:
                groups[1 + 2 * tier + (not is_home)].append((load, rank, replica))
            elif is_home:
                groups[_COLD_HOME_GROUP].append((load, rank, replica))
            elif len(spill) < _SPILL_WINDOW:
                spill.append((not _has_free_slot(replica), rank, replica))
            examined += 1
            if examined >= k + self.scan_width:
                break
        return [[entry[2] for entry in sorted(group)] for group in groups if group]

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
