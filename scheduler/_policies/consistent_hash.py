"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from scheduler._eviction import LRUEviction
from scheduler._policies._common import pow2_pair
from scheduler._policies._common import require_positive
from scheduler._policies._common import require_replicas
from scheduler._policies._hashing import HashRing
from scheduler._types import AdapterDemand
from scheduler._types import EvictionPolicy
from scheduler._types import ReplicaView

__all__ = ["ConsistentHashPolicy"]


class ConsistentHashPolicy:
    """Each adapter walks a hash ring from its key; the first replica under the cap wins.

    The cap is ``ceil((1 + epsilon) * (total_load + 1) / replicas)``: the request being
    placed counts as one more ball, as in the paper. A replica is under the cap when its
    load (in-flight + queued) is below it; at least one always is (the least loaded is
    at most the mean). The ranking is that replica alone. Base-model requests
    (``key == ""``) use the power of two choices.

    Failure mode: residency is ignored. An adapter resident on a replica that is not on
    its ring path is loaded again; a hot adapter overflows to its ring successors one
    request at a time, each taking a cold load, and the cap resets to tight bounds when
    the cluster is idle, so small bursts already spill.
    """

    name = "consistent_hash"

    def __init__(self, *, seed: int = 0, epsilon: float = 0.25, virtual_nodes: int = 64) -> None:
        require_positive("epsilon", epsilon, policy=self.name)
        require_positive("virtual_nodes", virtual_nodes, policy=self.name)
        self.epsilon = epsilon
        self._rng = random.Random(seed)
        self._ring = HashRing(seed, virtual_nodes=virtual_nodes)

    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]:
        require_replicas(replicas, self.name)
        if not adapter.key:
            return [pow2_pair(self._rng, replicas)]
        total = sum(replica.in_flight + replica.queued for replica in replicas)
        cap = math.ceil((1.0 + self.epsilon) * (total + 1) / len(replicas))
        start = self._ring.start(adapter.key, replicas)
        owners = self._ring.owners
        # The least loaded replica is at most the mean, below the cap, so the walk ends
        # within one turn of the ring (every replica owns points on it).
        for step in range(len(owners)):
            replica = replicas[owners[(start + step) % len(owners)]]
            if replica.in_flight + replica.queued < cap:
                return [[replica]]
        raise AssertionError("unreachable: some replica is below the bounded-load cap")

    def on_placed(self, adapter: AdapterDemand, replica: ReplicaView, now: float) -> None:
        """Stateless: the ring and the loads in the views decide."""

    def new_eviction_policy(self) -> EvictionPolicy:
        return LRUEviction()
