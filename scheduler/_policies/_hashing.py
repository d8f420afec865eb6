"""Stable hashing of adapter keys onto replicas: rendezvous ranking and a bounded-load ring.

Both structures are keyed by the replicas' ids, rebuilt only when the set of ids (or
their order) changes, and cache per-key work, so a decision costs O(replicas) list work
with small constants instead of O(replicas) hash computations.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Generic
from typing import TypeVar

from scheduler._policies._common import stable_hash64
from scheduler._types import ReplicaView

_DEFAULT_MAX_KEYS = 65_536

_Value = TypeVar("_Value")


class _BoundedCache(Generic[_Value]):
    """A dict that forgets its oldest entries (insertion order) beyond ``max_keys``."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.entries: dict[str, _Value] = {}

    def put(self, key: str, value: _Value) -> _Value:
        entries = self.entries
        if len(entries) >= self.max_keys:
            # Dicts keep insertion order: dropping the first quarter is FIFO, amortised O(1).
            for old in list(entries)[: self.max_keys // 4 or 1]:
                del entries[old]
        entries[key] = value
        return value


class Membership:
    """The ordered replica ids last seen, to notice when the replica set changes."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def update(self, replicas: Sequence[ReplicaView]) -> bool:
        """Record ``replicas``' ids; True when they differ from the previous call's."""
        ids = [replica.replica_id for replica in replicas]
        if ids == self.ids:
            return False
        self.ids = ids
        return True


class RendezvousRanking:
    """Highest-random-weight (rendezvous) order of replica positions for each key.

    ``score(key, replica) = hash((h(key), h(replica)))`` with ``h`` the seeded blake2b
    of :func:`stable_hash64`; the outer ``hash`` of a tuple of ints is CPython's
    xxHash-based tuple hash, which is not salted per process (only str and bytes
    hashes are), so every 64-bit CPython router agrees, and costs one C call per
    replica. A key's order is the replica positions by descending score. Removing a
    replica moves only the keys whose first choice it was; adding one takes over only
    the keys it now wins (about 1/R). Orders are cached per key (bounded, FIFO) and
    dropped when the replica set changes.
    """

    def __init__(self, seed: int, *, max_keys: int = _DEFAULT_MAX_KEYS) -> None:
        self._seed = seed
        self._membership = Membership()
        self._replica_hashes: list[int] = []
        self._orders: _BoundedCache[list[int]] = _BoundedCache(max_keys)

    def order(self, key: str, replicas: Sequence[ReplicaView]) -> list[int]:
        """Positions in ``replicas``, the key's most preferred first."""
        if self._membership.update(replicas):
            self._replica_hashes = [stable_hash64(rid, self._seed) for rid in self._membership.ids]
            self._orders.entries.clear()
        cached = self._orders.entries.get(key)
        if cached is not None:
            return cached
        key_hash = stable_hash64(key, self._seed)
        scores = [hash((key_hash, replica_hash)) for replica_hash in self._replica_hashes]
        return self._orders.put(
            key, sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
        )


class HashRing:
    """A consistent-hash ring with virtual nodes, as in Karger et al. and Mirrokni et al.

    Each replica owns ``virtual_nodes`` points on a 64-bit ring; a key starts at the
    first point clockwise of its hash. Key hashes are cached (bounded, FIFO); the ring
    is rebuilt when the replica set changes.
    """

    def __init__(self, seed: int, *, virtual_nodes: int, max_keys: int = _DEFAULT_MAX_KEYS) -> None:
        self._seed = seed
        self._virtual_nodes = virtual_nodes
        self._membership = Membership()
        self._points: list[int] = []
        self.owners: list[int] = []
        self._key_hashes: _BoundedCache[int] = _BoundedCache(max_keys)

    def start(self, key: str, replicas: Sequence[ReplicaView]) -> int:
        """Index into :attr:`owners` of the first ring point clockwise of ``key``'s hash.

        ``owners[(start + step) % len(owners)]`` for step = 0, 1, … is the walk: replica
        positions in ``replicas``, repeating (one per virtual node).
        """
        if self._membership.update(replicas):
            self._build()
        key_hash = self._key_hashes.entries.get(key)
        if key_hash is None:
            key_hash = self._key_hashes.put(key, stable_hash64(key, self._seed))
        return bisect.bisect_left(self._points, key_hash) % len(self._points)

    def _build(self) -> None:
        ring = sorted(
            (stable_hash64(f"{rid}#{vnode}", self._seed), position)
            for position, rid in enumerate(self._membership.ids)
            for vnode in range(self._virtual_nodes)
        )
        self._points = [point for point, _ in ring]
        self.owners = [position for _, position in ring]
