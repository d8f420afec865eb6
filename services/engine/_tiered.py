"""A generic capacity-bounded cache tier with a pluggable eviction policy, and a FIFO
queue of waiters for room in it.

The adapter cache (``_cache.py``) builds its GPU and host tiers from :class:`TierCache`:
a GPU slot weighs 1, a host entry weighs its size in bytes. A tier knows nothing of
adapters, asyncio or pins beyond the ``evictable`` predicate it is given.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic
from typing import TypeVar

from scheduler import EvictionPolicy

__all__ = ["RoomQueue", "TierCache", "TierCounters"]

V = TypeVar("V")
R = TypeVar("R")


@dataclass(slots=True)
class TierCounters:
    """Running counts of one tier; the owner decides what a hit or a miss is."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    waits: int = 0


class TierCache(Generic[V]):
    """Entries weighed by ``weigh(size_bytes)`` within ``capacity``; a policy picks victims.

    Policy: :meth:`make_room` evicts only entries for which ``evictable(key)`` holds, and
    those for which ``keep_longer(key)`` holds only when the others cannot free enough.
    It evicts nothing unless enough can be freed, so a failed attempt costs no entries.
    Room may be reserved ahead of an insert (a load that finishes later) so that no one
    else takes it. ``on_evict(key, value)`` runs before an evicted entry leaves, so an
    outer tier can first release the copy an inner tier built from it.

    Failure mode: an eviction policy whose ``victim`` returns a key that is not a
    candidate is a bug in that policy; :meth:`make_room` raises ``RuntimeError`` naming it.
    """

    def __init__(
        self,
        name: str,
        capacity: int,
        *,
        weigh: Callable[[int], int],
        policy: EvictionPolicy,
        clock: Callable[[], float],
        evictable: Callable[[str], bool],
        keep_longer: Callable[[str], bool] = lambda key: False,
        on_evict: Callable[[str, V], None] | None = None,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.counters = TierCounters()
        self._weigh = weigh
        self._policy = policy
        self._clock = clock
        self._evictable = evictable
        self._keep_longer = keep_longer
        self._on_evict = on_evict
        self._entries: dict[str, tuple[V, int]] = {}  # key -> (value, weight)
        self._used = 0  # weights of entries plus reservations

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, V]]:
        return [(key, value) for key, (value, _) in self._entries.items()]

    def peek(self, key: str) -> V | None:
        """The value of ``key`` without counting or touching it."""
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def lookup(self, key: str) -> V | None:
        """The value of ``key``, counted as a hit (and touched) or a miss."""
        value = self.peek(key)
        if value is None:
            self.counters.misses += 1
        else:
            self.counters.hits += 1
            self.touch(key)
        return value

    def touch(self, key: str) -> None:
        """Tell the policy ``key`` was used, without counting a hit."""
        if key in self._entries:
            self._policy.on_access(key, self._clock())

    def fits(self, size_bytes: int) -> bool:
        """Whether an entry of ``size_bytes`` could fit in an empty tier."""
        return self._weigh(size_bytes) <= self.capacity

    def claim(self, size_bytes: int) -> bool:
        """Make room for ``size_bytes`` and reserve it; False (evicting nothing) if no room."""
        if not self.make_room(size_bytes):
            return False
        self._used += self._weigh(size_bytes)
        return True

    def unreserve(self, size_bytes: int) -> None:
        """Give back room reserved by :meth:`claim` that will not be inserted."""
        self._used -= self._weigh(size_bytes)

    def insert(self, key: str, value: V, size_bytes: int) -> None:
        """Add ``key`` into room reserved by :meth:`claim`."""
        if key in self._entries:
            raise KeyError(f"{self.name} tier already holds {key!r}")
        self._entries[key] = (value, self._weigh(size_bytes))
        self._policy.on_insert(key, size_bytes, self._clock())

    def make_room(self, size_bytes: int) -> bool:
        """Evict victims until ``size_bytes`` fits; False, evicting nothing, if it can't."""
        need = self._weigh(size_bytes)
        free = self.capacity - self._used
        if need <= free:
            return True
        candidates = [key for key in self._entries if self._evictable(key)]
        if free + sum(self._entries[key][1] for key in candidates) < need:
            return False
        first = [key for key in candidates if not self._keep_longer(key)]
        last = [key for key in candidates if self._keep_longer(key)]
        for group in (first, last):
            while group and self.capacity - self._used < need:
                victim = self._policy.victim(list(group), self._clock())
                if victim not in group:
                    raise RuntimeError(
                        f"eviction policy {type(self._policy).__name__} chose {victim!r} in "
                        f"the {self.name} tier, which is not one of the candidates {group}"
                    )
                group.remove(victim)
                self.evict(victim)
        return True

    def evict(self, key: str) -> V:
        """Evict ``key`` (counted): ``on_evict`` runs first, then the entry leaves."""
        value, _ = self._entries[key]
        if self._on_evict is not None:
            self._on_evict(key, value)
        self.counters.evictions += 1
        _, weight = self._entries.pop(key)
        self._used -= weight
        self._policy.on_remove(key)
        return value


class RoomQueue(Generic[R]):
    """Waiters for room in one tier, served strictly first come, first served.

    ``try_claim(need)`` claims room (evicting as it must) and returns what was claimed,
    or None when there is none now; ``give_back(claimed)`` undoes a claim. The owner
    calls :meth:`pump` whenever room may have appeared (a pin dropped, a load ended);
    pump claims room *for* the head waiter and hands it over, so a newcomer can never
    take room a waiter was woken for, and nobody overtakes an earlier waiter.

    Failure mode: a large request at the head blocks smaller ones behind it until room
    for it appears; if room never appears (everything pinned forever) waiters wait
    forever, so callers that can give up should wrap :meth:`claim` in a timeout.
    """

    def __init__(
        self,
        try_claim: Callable[[int], R | None],
        give_back: Callable[[R], None],
        counters: TierCounters,
    ) -> None:
        self._try_claim = try_claim
        self._give_back = give_back
        self._counters = counters
        self._waiters: deque[tuple[int, asyncio.Future[R]]] = deque()

    def try_claim_now(self, need: int) -> R | None:
        """Claim without waiting; None when there is no room or someone is waiting."""
        return None if self._waiters else self._try_claim(need)

    async def claim(self, need: int) -> R:
        """Claim room for ``need``, waiting in FIFO order when there is none now.

        Cancelling the caller gives back room it was handed but had not used yet.
        """
        claimed = self.try_claim_now(need)
        if claimed is not None:
            return claimed
        self._counters.waits += 1
        waiter: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiters.append((need, waiter))
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give_back(waiter.result())
            raise
        finally:
            if (need, waiter) in self._waiters:
                self._waiters.remove((need, waiter))
            # A cancelled head may have been blocking others that fit now.
            self.pump()

    def pump(self) -> None:
        """Hand room to waiters from the head while there is room for the head."""
        while self._waiters:
            need, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            claimed = self._try_claim(need)
            if claimed is None:
                return
            self._waiters.popleft()
            waiter.set_result(claimed)
