"""The data the placement and eviction policies read, and the two policy interfaces.

These are plain values: the Ray router, the simulator and the tests build them directly.
Policies treat :class:`ReplicaView` as read-only; only the cluster view (or the simulator)
mutates it, between decisions.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from enum import IntEnum
from typing import Protocol

__all__ = [
    "AdapterDemand",
    "EvictionPolicy",
    "PlacementPolicy",
    "ReplicaView",
    "Tier",
]


class Tier(IntEnum):
    """Where a replica holds an adapter; lower is better (cheaper to serve from)."""

    GPU = 0
    HOST = 1
    DISK = 2
    LOADING = 3
    NONE = 4


@dataclass(frozen=True, slots=True)
class AdapterDemand:
    """What a policy knows about the adapter a request needs.

    ``key`` is the adapter version key (``tenant/name@version``) or ``""`` for the base
    model alone; ``rate`` is its recent request rate (requests/s, exponentially decayed).
    """

    key: str
    size_bytes: int = 0
    rank: int = 0
    rate: float = 0.0


@dataclass(slots=True)
class ReplicaView:
    """One replica as a router sees it: residency by tier, load, capacity.

    ``load`` counts requests the replica is running or has queued. ``pinned`` counts the
    GPU slots that cannot be reused now: adapters that a queued or running request needs,
    plus loads in progress or waiting for a slot; ``gpu_slots - pinned`` is how many
    adapters a replica can load without waiting (0 pinned is also what a replica that
    does not report pins looks like). The sets are the router's latest knowledge and may
    be stale by the cluster view's staleness bound.
    """

    replica_id: str
    gpu: set[str] = field(default_factory=set)
    host: set[str] = field(default_factory=set)
    disk: set[str] = field(default_factory=set)
    loading: set[str] = field(default_factory=set)
    in_flight: int = 0
    queued: int = 0
    gpu_slots: int = 8
    pinned: int = 0

    @property
    def load(self) -> int:
        return self.in_flight + self.queued

    def tier_of(self, key: str) -> Tier:
        """The best tier holding ``key`` on this replica."""
        if key in self.gpu:
            return Tier.GPU
        if key in self.host:
            return Tier.HOST
        if key in self.disk:
            return Tier.DISK
        if key in self.loading:
            return Tier.LOADING
        return Tier.NONE

    def mark_placed(self, key: str) -> bool:
        """Count a request just placed here, before the replica reports it (the router's
        optimistic update); True if ``key`` was newly marked loading.

        The request is counted as queued. An adapter this view has in no tier is marked
        loading, so the next decision joins that load instead of starting another copy
        (a host or disk copy is left as it is: it already ranks as a cheap load). Pins:
        an adapter neither on the GPU nor loading will take a GPU slot to load into, so
        ``pinned`` grows by one; one already loading is already pinned; one on the GPU
        is left uncounted, since the view cannot tell whether a request already pins it
        and over-counting would rank the replica as if it had no free slot. ``key`` is
        ``""`` for the base model: load only. Only the owner of the view (a cluster view
        or the simulator) calls this, between decisions.
        """
        self.queued += 1
        if not key or key in self.gpu or key in self.loading:
            return False
        self.pinned += 1
        if key in self.host or key in self.disk:
            return False
        self.loading.add(key)
        return True


class PlacementPolicy(Protocol):
    """Ranks replicas for one request. Pure: no I/O, deterministic under its seed.

    ``rank_replicas`` returns groups best first, as Ray Serve's ``RequestRouter``
    expects: the router tries the first group, then the next, choosing within a group by
    queue length. ``on_placed`` tells a stateful policy where the request went.
    """

    name: str

    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]: ...

    def on_placed(self, adapter: AdapterDemand, replica: ReplicaView, now: float) -> None: ...

    def new_eviction_policy(self) -> EvictionPolicy:
        """The eviction policy this placement policy expects each replica tier to run."""
        ...


class EvictionPolicy(Protocol):
    """Chooses which resident entry of one cache tier to evict.

    The cache calls ``on_insert``/``on_access``/``on_remove`` as entries come and go, and
    ``victim`` with the entries it may evict (resident and unpinned) when it needs room.
    ``victim`` returns None only when ``candidates`` is empty.
    """

    def on_insert(self, key: str, size_bytes: int, now: float) -> None: ...

    def on_access(self, key: str, now: float) -> None: ...

    def on_remove(self, key: str) -> None: ...

    def victim(self, candidates: Iterable[str], now: float) -> str | None: ...
