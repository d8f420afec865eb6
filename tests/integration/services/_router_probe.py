"""A deterministic placement policy that records what the router showed it.

It lives in its own module on purpose: Ray Serve pickles the request router's module
*by value*, so state kept in the test module would be copied into the router; this
module is pickled by reference, so the router (running in the test process, behind the
deployment handle) and the test share :data:`SEEN`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scheduler import AdapterDemand
from scheduler import EvictionPolicy
from scheduler import LRUEviction
from scheduler import ReplicaView
from scheduler import Tier

SEEN: list[tuple[AdapterDemand, list[ReplicaView]]] = []
"""Every ranking request the router made: the demand and the views."""

PLACED: list[tuple[str, str]] = []
"""Every ``on_placed`` call: (adapter key, replica id)."""


@dataclass
class ProbePolicy:
    """Holders of the key first (best tier first), else the least loaded replica.

    Keys in ``hot_keys`` are spread instead: the replicas in a fixed order, starting
    after the one that got the key last, one per group, so consecutive requests for a
    hot key visit every replica.
    """

    hot_keys: frozenset[str] = frozenset()
    name: str = "probe"

    def __post_init__(self) -> None:
        self._last_replica: dict[str, str] = {}

    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]:
        SEEN.append((adapter, list(replicas)))  # the router builds fresh views per call
        by_id = sorted(replicas, key=lambda view: view.replica_id)
        if adapter.key in self.hot_keys:
            ids = [view.replica_id for view in by_id]
            last = self._last_replica.get(adapter.key)
            start = ids.index(last) + 1 if last in ids else 0
            return [[by_id[(start + offset) % len(by_id)]] for offset in range(len(by_id))]
        holders = sorted(
            (view for view in by_id if view.tier_of(adapter.key) is not Tier.NONE),
            key=lambda view: view.tier_of(adapter.key),
        )
        others = sorted(
            (view for view in by_id if view.tier_of(adapter.key) is Tier.NONE),
            key=lambda view: view.load,
        )
        return [group for group in ([*holders], others[:1], others[1:]) if group]

    def on_placed(self, adapter: AdapterDemand, replica: ReplicaView, now: float) -> None:
        PLACED.append((adapter.key, replica.replica_id))
        self._last_replica[adapter.key] = replica.replica_id

    def new_eviction_policy(self) -> EvictionPolicy:
        return LRUEviction()
