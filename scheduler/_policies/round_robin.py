"""Round robin: every replica in turn, blind to adapters and load."""

from __future__ import annotations

from collections.abc import Sequence

from scheduler._eviction import LRUEviction
from scheduler._policies._common import require_replicas
from scheduler._types import AdapterDemand
from scheduler._types import EvictionPolicy
from scheduler._types import ReplicaView

__all__ = ["RoundRobinPolicy"]


class RoundRobinPolicy:
    """Ranks the next replica in turn, alone.

    Baseline only. Failure mode: every adapter lands everywhere, so with more adapters
    than one replica's cache holds, almost every request is a cold load; a slow replica
    gets as many requests as a fast one.
    """

    name = "round_robin"

    def __init__(self, *, seed: int = 0) -> None:
        # The seed is accepted for a uniform registry signature; the turn order is fixed.
        self._turn = 0

    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]:
        require_replicas(replicas, self.name)
        start = self._turn % len(replicas)
        self._turn = start + 1
        return [[replicas[start]]]

    def on_placed(self, adapter: AdapterDemand, replica: ReplicaView, now: float) -> None:
        """Stateless beyond the turn counter, which advances per ranking."""

    def new_eviction_policy(self) -> EvictionPolicy:
        return LRUEviction()
