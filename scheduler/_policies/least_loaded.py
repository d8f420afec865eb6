"""Least loaded by the power of two choices, blind to adapters."""

from __future__ import annotations

import random
from collections.abc import Sequence

from scheduler._eviction import LRUEviction
from scheduler._policies._common import pow2_pair
from scheduler._policies._common import require_replicas
from scheduler._types import AdapterDemand
from scheduler._types import EvictionPolicy
from scheduler._types import ReplicaView

__all__ = ["LeastLoadedPolicy"]


class LeastLoadedPolicy:
    """Power of two choices on load: two random replicas, the less loaded first.

    This is Ray Serve's default router (``pow_2_router.py``) without multiplexing: the
    ranking is the pair alone, and a router whose pair rejects ranks again.

    Failure mode: load is balanced but adapters are scattered over every replica, so
    each replica's cache churns through the whole adapter population (cold loads and
    eviction thrash once adapters outnumber a replica's slots).
    """

    name = "least_loaded"

    def __init__(self, *, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]:
        require_replicas(replicas, self.name)
        return [pow2_pair(self._rng, replicas)]

    def on_placed(self, adapter: AdapterDemand, replica: ReplicaView, now: float) -> None:
        """Stateless: the load it reads is in the replica views."""

    def new_eviction_policy(self) -> EvictionPolicy:
        return LRUEviction()
