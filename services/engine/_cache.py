"""The per-replica tiered adapter cache: GPU slots <- host memory <- local disk <- store.

Tiers, best first:

- **GPU**: a fixed number of slots (like vLLM's ``max_loras``); an adapter in a slot can
  be batched. A slot is entered through ``activate_slot`` and left through
  ``deactivate_slot``.
- **host**: adapters read into host memory (pinned memory on CUDA), within a byte budget.
  The hierarchy is *inclusive*: every adapter in a GPU slot also stays in host memory,
  so evicting it from a slot costs only a host-to-GPU copy to undo. Evicting a host
  entry whose adapter sits in an (unpinned) slot first deactivates the slot: eviction
  from an outer tier releases the inner copy. Host victims are taken from entries not
  in a slot first, and from entries in unpinned slots only when those do not free enough.
- **disk**: the store's disk cache, filled by ``fetch_to_disk`` (which downloads from
  the object store on a disk miss). The disk cache runs its own byte-budget eviction;
  this cache only reads which keys it holds (``disk_keys``) for residency and stats.

Pins: :meth:`AdapterCache.acquire` pins the adapter's key until the returned
:class:`SlotLease` is released; a pinned adapter is evicted from no tier. An adapter
being loaded is never evicted either. Loads are single-flight per key and run their
blocking steps on an executor, off the event loop.

Lifecycle: each adapter's :class:`AdapterState` changes only in
``AdapterCache._set_state``, which logs the change and calls ``on_change`` with a
:class:`ResidencyEvent`.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter
from collections import OrderedDict
from collections import deque
from collections.abc import Callable
from collections.abc import Iterable
from concurrent.futures import Executor
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum
from pathlib import Path
from typing import Any
from typing import Protocol

from adapter_store import AdapterVersion
from adapter_store.exceptions import AdapterStoreError
from scheduler import EvictionPolicy
from scheduler import LRUEviction
from scheduler import Tier
from scheduler import percentile
from services.engine._tiered import RoomQueue
from services.engine._tiered import TierCache
from services.engine._tiered import TierCounters
from services.engine.exceptions import AdapterLoadError
from services.engine.exceptions import EngineError

__all__ = [
    "AdapterCache",
    "AdapterState",
    "CacheStats",
    "HostAdapterLike",
    "LatencySummary",
    "Residency",
    "ResidencyEvent",
    "SlotLease",
    "TierStats",
]

logger = logging.getLogger(__name__)

# Latency summaries cover this many recent loads per source tier.
_LATENCY_WINDOW = 1024
# Errors a load step raises already classified, which pass through unwrapped: the engine's
# own (AdapterMismatchError) and the store's, whose HTTP statuses matter to the client
# (a blob gone after GC is a 404 and a corrupt one a 502, neither worth retrying as a 503).
_CLASSIFIED_ERRORS: tuple[type[Exception], ...] = (EngineError, AdapterStoreError)

# ERRORED states are remembered for this many adapters, oldest forgotten first, so a
# stream of distinct failing adapters cannot grow the cache's bookkeeping without bound.
_MAX_ERRORED = 1024
_DEFAULT_LOAD_THREADS = 4


class HostAdapterLike(Protocol):
    """What the cache needs of an adapter read into host memory: its size."""

    @property
    def size_bytes(self) -> int: ...


class AdapterState(StrEnum):
    """Where one adapter is in its lifecycle on this replica.

    ``ABSENT ─► FETCHING ─► LOADING_HOST ─► IN_HOST ─► ACTIVATING ─► IN_GPU``; any
    loading state goes to ``ERRORED`` when the load fails and the adapter is in no
    memory tier (or back to ``IN_HOST`` when it still is there). Evictions go back down:
    ``IN_GPU ─► IN_HOST ─► ON_DISK | ABSENT``. ``ON_DISK`` and ``ABSENT`` are not stored:
    they are read from the disk tier when asked.
    """

    ABSENT = "absent"
    ON_DISK = "on_disk"
    FETCHING = "fetching"
    LOADING_HOST = "loading_host"
    IN_HOST = "in_host"
    ACTIVATING = "activating"
    IN_GPU = "in_gpu"
    ERRORED = "errored"

    @property
    def tier(self) -> Tier:
        """The routing tier this state counts as (loading states are ``Tier.LOADING``)."""
        return _TIER_OF_STATE[self]


_TIER_OF_STATE = {
    AdapterState.ABSENT: Tier.NONE,
    AdapterState.ON_DISK: Tier.DISK,
    AdapterState.FETCHING: Tier.LOADING,
    AdapterState.LOADING_HOST: Tier.LOADING,
    AdapterState.IN_HOST: Tier.HOST,
    AdapterState.ACTIVATING: Tier.LOADING,
    AdapterState.IN_GPU: Tier.GPU,
    AdapterState.ERRORED: Tier.NONE,
}
# The tier a loading state is loading into.
_LOADING_INTO = {
    AdapterState.FETCHING: Tier.DISK,
    AdapterState.LOADING_HOST: Tier.HOST,
    AdapterState.ACTIVATING: Tier.GPU,
}


@dataclass(frozen=True, slots=True)
class ResidencyEvent:
    """One lifecycle change of one adapter; ``on_change`` receives every one.

    ``slot`` is the GPU slot entered (``ACTIVATING``, ``IN_GPU``) or left (the
    ``IN_HOST`` after a slot eviction). ``error`` is set when a load failed; such an
    event may keep the state unchanged (a failed activation leaves the adapter in host).
    """

    key: str
    state: AdapterState
    previous: AdapterState
    at: float
    slot: int | None = None
    error: str | None = None

    @property
    def tier(self) -> Tier:
        return self.state.tier


@dataclass(frozen=True, slots=True)
class Residency:
    """Exactly what this replica holds, at the moment it was taken.

    ``host`` includes the adapters in GPU slots (the hierarchy is inclusive). ``disk``
    is empty when the cache was given no ``disk_keys``. ``loading`` maps a key to the
    tier it is being loaded into; ``pinned`` maps a key to its number of leases and
    waiting acquirers.
    """

    gpu: dict[int, str]
    host: list[str]
    disk: list[str]
    loading: dict[str, Tier]
    pinned: dict[str, int]


@dataclass(frozen=True, slots=True)
class TierStats:
    """Lookups and evictions of one tier; ``waits`` counts loads that queued for room."""

    hits: int
    misses: int
    evictions: int
    waits: int

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Load latency in seconds: ``count`` of all loads, the rest over the recent window."""

    count: int
    mean_s: float
    p50_s: float
    p99_s: float
    max_s: float


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was made.

    ``tiers``: a request served from a GPU slot is a GPU hit; one served from host is a
    GPU miss and a host hit; from disk, GPU and host misses and a disk hit; from the
    object store, misses in all three. Only the request that started a load counts the
    lower tiers; requests that joined it count a GPU miss and one ``coalesced``.
    Prefetches count no hits or misses. Disk counts need ``disk_keys``; disk evictions
    are the disk cache's own business and read 0 here.

    ``load_latency`` is keyed by the tier a load step starts from: ``Tier.NONE`` object
    store to disk, ``Tier.DISK`` disk to host, ``Tier.HOST`` host to a GPU slot.
    ``errors`` is keyed by the tier a failed load was loading into.
    ``prefetches_dropped`` counts prefetches that stopped short for lack of unpinned room.
    """

    tiers: dict[Tier, TierStats]
    load_latency: dict[Tier, LatencySummary]
    errors: dict[Tier, int]
    coalesced: int
    prefetches: int
    prefetches_dropped: int


class SlotLease:
    """One pin on one adapter in one GPU slot, held while a request uses the slot.

    Release it exactly when the request leaves the batch (finished, failed or
    cancelled); :meth:`release` is idempotent, and ``async with`` releases on exit.
    Call it on the cache's event loop thread.
    """

    __slots__ = ("_released", "_unpin", "slot", "version")

    def __init__(self, slot: int, version: AdapterVersion, unpin: Callable[[str], None]) -> None:
        self.slot = slot
        self.version = version
        self._unpin = unpin
        self._released = False

    @property
    def key(self) -> str:
        return self.version.key

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._unpin(self.version.key)

    async def __aenter__(self) -> SlotLease:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"SlotLease({self.key!r}, slot={self.slot}, {state})"


class _LatencySamples:
    def __init__(self) -> None:
        self.count = 0
        self._recent: deque[float] = deque(maxlen=_LATENCY_WINDOW)

    def add(self, seconds: float) -> None:
        self.count += 1
        self._recent.append(seconds)

    def summary(self) -> LatencySummary:
        if not self._recent:
            return LatencySummary(self.count, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(self._recent)
        return LatencySummary(
            count=self.count,
            mean_s=sum(ordered) / len(ordered),
            p50_s=percentile(ordered, 50),
            p99_s=percentile(ordered, 99),
            max_s=ordered[-1],
        )


@dataclass(slots=True, eq=False)
class _Load:
    """One in-flight load of one key; ``target`` may be raised while it runs."""

    version: AdapterVersion
    target: Tier
    requested: bool  # started by a request (counts hits and misses), not by a prefetch
    into: Tier = Tier.DISK  # the tier it is loading into now
    task: asyncio.Task[None] = field(init=False)


class AdapterCache:
    """GPU slots, host memory and local disk for one replica, with single-flight loads.

    Policy: each memory tier evicts the victim its own ``eviction_policy()`` instance
    chooses among entries that are neither pinned nor loading. A request's
    :meth:`acquire` pins first, then loads through the tiers; when no slot or host room
    can be freed (everything pinned) its load queues, first come first served, until a
    lease is released. Prefetches never queue and never evict pinned entries.

    Failure mode: a failed load step raises :class:`AdapterLoadError` (naming the
    adapter, the tier and the cause) to every request waiting for that adapter, and to
    no other; an :class:`EngineError` or ``AdapterStoreError`` a step raises itself
    (such as :class:`AdapterMismatchError`, or the store's ``NotFoundError`` and
    ``IntegrityError`` from ``fetch_to_disk``) passes through unchanged. The next
    :meth:`acquire` tries again: there is no negative cache, so concurrent requests
    share one attempt and later ones make a new one. An adapter larger than the whole
    host budget fails at once. Requests wait for room without a time
    limit: if leases are never released, they wait forever; the engine should bound
    request time.

    The cache belongs to one asyncio event loop: call every method on that loop's
    thread. ``fetch_to_disk``, ``load_host`` and ``activate_slot`` run on ``executor``
    (a private 4-thread pool when none is given); ``deactivate_slot``, ``disk_keys`` and
    ``on_change`` run on the loop and must be quick.
    """

    def __init__(
        self,
        *,
        gpu_slots: int,
        host_budget_bytes: int,
        fetch_to_disk: Callable[[AdapterVersion], Path],
        load_host: Callable[[AdapterVersion, Path], HostAdapterLike],
        # Any, not HostAdapterLike: the engine's slot copy takes its own concrete type.
        activate_slot: Callable[[int, Any], None],
        deactivate_slot: Callable[[int], None] | None = None,
        disk_keys: Callable[[], Iterable[str]] | None = None,
        eviction_policy: Callable[[], EvictionPolicy] = LRUEviction,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[ResidencyEvent], None] | None = None,
    ) -> None:
        """Raises ValueError: ``gpu_slots`` or ``host_budget_bytes`` is below 1."""
        _check_positive_int("gpu_slots", gpu_slots)
        _check_positive_int("host_budget_bytes", host_budget_bytes)
        self._fetch_to_disk = fetch_to_disk
        self._load_host = load_host
        self._activate_slot = activate_slot
        self._deactivate_slot = deactivate_slot
        self._disk_keys = disk_keys
        self._clock = clock
        self._on_change = on_change
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            _DEFAULT_LOAD_THREADS, thread_name_prefix="adapter-load"
        )
        self._closed = False

        self._pins: Counter[str] = Counter()
        self._loads: dict[str, _Load] = {}
        self._states: dict[str, AdapterState] = {}
        self._errored: OrderedDict[str, None] = OrderedDict()
        self._free_slots = list(range(gpu_slots))  # a heap: the lowest free slot first
        self._gpu: TierCache[int] = TierCache(
            "gpu",
            gpu_slots,
            weigh=lambda size_bytes: 1,
            policy=eviction_policy(),
            clock=clock,
            evictable=self._evictable,
            on_evict=self._on_gpu_evict,
        )
        self._host: TierCache[HostAdapterLike] = TierCache(
            "host",
            host_budget_bytes,
            weigh=lambda size_bytes: size_bytes,
            policy=eviction_policy(),
            clock=clock,
            evictable=self._evictable,
            keep_longer=self._gpu.__contains__,
            on_evict=self._on_host_evict,
        )
        self._slot_queue: RoomQueue[int] = RoomQueue(
            self._claim_slot, self._give_back_slot, self._gpu.counters
        )
        self._host_queue: RoomQueue[int] = RoomQueue(
            self._claim_host, self._host.unreserve, self._host.counters
        )
        self._disk_counters = TierCounters()
        self._latency = {tier: _LatencySamples() for tier in (Tier.HOST, Tier.DISK, Tier.NONE)}
        self._errors: Counter[Tier] = Counter()
        self._coalesced = 0
        self._prefetches = 0
        self._prefetches_dropped = 0

    # ----------------------------------------------------------------- public API

    async def acquire(self, version: AdapterVersion) -> SlotLease:
        """Pin ``version`` in a GPU slot, loading it through the tiers if needed.

        A GPU hit returns at once. A miss joins the adapter's in-flight load or starts
        one; when every slot is pinned, the load waits its turn (FIFO) for a release.
        Cancelling the caller releases its pin and leaves the shared load running.

        Raises:
            AdapterLoadError: the load failed (message names adapter, tier, cause), the
                adapter is larger than the host budget, or the cache closed meanwhile.
            AdapterMismatchError: raised by ``load_host`` or ``activate_slot``.
            AdapterStoreError: raised by ``fetch_to_disk`` (such as ``NotFoundError``
                or ``IntegrityError``).
            EngineError: the cache is closed.
        """
        self._check_open()
        key = version.key
        self._pins[key] += 1
        try:
            slot = self._gpu.lookup(key)
            if slot is None:
                await self._wait_until_in_gpu(version)
                slot = self._gpu.peek(key)
                assert slot is not None  # pinned since before it arrived: cannot have left
            self._host.touch(key)
        except BaseException:
            self._unpin(key)
            raise
        return SlotLease(slot, version, self._unpin)

    def prefetch(self, version: AdapterVersion, *, to: Tier = Tier.GPU) -> None:
        """Start loading ``version`` into tier ``to`` now, without pinning it.

        A hint: it returns at once, queues for nothing, evicts only unpinned entries,
        and stops one tier short (counted in ``prefetches_dropped``) when there is no
        unpinned room. A failure is logged and counted in :meth:`stats`, not raised.
        Call it from a coroutine on the cache's loop.

        Raises:
            ValueError: ``to`` is not ``Tier.GPU``, ``Tier.HOST`` or ``Tier.DISK``.
            EngineError: the cache is closed.
        """
        if to not in (Tier.GPU, Tier.HOST, Tier.DISK):
            raise ValueError(
                f"prefetch target must be Tier.GPU, Tier.HOST or Tier.DISK, got {to!r}"
            )
        self._check_open()
        self._prefetches += 1
        key = version.key
        if key in self._gpu or (to is not Tier.GPU and key in self._host):
            return
        load = self._loads.get(key)
        if load is None:
            self._start_load(version, to, requested=False)
        else:
            load.target = min(load.target, to)

    def residency(self) -> Residency:
        """What each tier holds now; see :class:`Residency`."""
        return Residency(
            gpu={slot: key for key, slot in sorted(self._gpu.items(), key=lambda item: item[1])},
            host=self._host.keys(),
            disk=list(self._disk_keys()) if self._disk_keys is not None else [],
            loading={
                key: _LOADING_INTO[state]
                for key, state in self._states.items()
                if state in _LOADING_INTO
            },
            pinned=dict(self._pins),
        )

    def stats(self) -> CacheStats:
        """Counters since the cache was made; see :class:`CacheStats`."""
        tiers = {
            Tier.GPU: self._gpu.counters,
            Tier.HOST: self._host.counters,
            Tier.DISK: self._disk_counters,
        }
        return CacheStats(
            tiers={
                tier: TierStats(c.hits, c.misses, c.evictions, c.waits) for tier, c in tiers.items()
            },
            load_latency={tier: samples.summary() for tier, samples in self._latency.items()},
            errors={tier: self._errors[tier] for tier in tiers},
            coalesced=self._coalesced,
            prefetches=self._prefetches,
            prefetches_dropped=self._prefetches_dropped,
        )

    def lifecycle(self, key: str) -> AdapterState:
        """The state of adapter ``key``: ``ON_DISK``/``ABSENT`` when in no memory tier."""
        return self._states.get(key) or self._outside_state(key)

    async def aclose(self) -> None:
        """Cancel in-flight loads (their waiters get :class:`AdapterLoadError`) and stop
        the private executor. Leases may still be released afterwards; nothing else works.
        """
        self._closed = True
        tasks = [load.task for load in self._loads.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_executor:
            # A blocking step already running finishes in its thread; its result is dropped.
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------- loading

    async def _wait_until_in_gpu(self, version: AdapterVersion) -> None:
        key = version.key
        if key in self._loads:
            self._coalesced += 1
        # A load started by a prefetch may stop short of a slot; then start another.
        while key not in self._gpu:
            load = self._loads.get(key)
            if load is None:
                load = self._start_load(version, Tier.GPU, requested=True)
            else:
                load.target = Tier.GPU
            try:
                await asyncio.shield(load.task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if load.task.cancelled() and current is not None and not current.cancelling():
                    raise AdapterLoadError(
                        f"adapter {key}: the adapter cache was closed while loading it"
                    ) from None
                raise

    def _start_load(self, version: AdapterVersion, target: Tier, *, requested: bool) -> _Load:
        load = _Load(version, target, requested)
        load.task = asyncio.get_running_loop().create_task(
            self._run_load(load), name=f"load adapter {version.key}"
        )
        load.task.add_done_callback(_retrieve)
        self._loads[version.key] = load
        return load

    async def _run_load(self, load: _Load) -> None:
        key = load.version.key
        try:
            adapter = self._host.peek(key)
            if adapter is None:
                if load.requested:
                    self._host.counters.misses += 1
                adapter = await self._load_into_host(load)
            elif load.requested:
                self._host.counters.hits += 1
            if adapter is not None and load.target is Tier.GPU and key not in self._gpu:
                await self._activate(load, adapter)
        except asyncio.CancelledError:
            self._set_state(key, self._resident_state(key))
            raise
        except _CLASSIFIED_ERRORS as error:
            self._errors[load.into] += 1
            state = self._resident_state(key) if key in self._host else AdapterState.ERRORED
            self._set_state(key, state, error=str(error))
            raise
        finally:
            if self._loads.get(key) is load:
                del self._loads[key]
            self._pump()  # the key became evictable, or its claims were given back

    async def _load_into_host(self, load: _Load) -> HostAdapterLike | None:
        """Fetch to disk and read into host memory; None when a prefetch stops short."""
        version, key = load.version, load.version.key
        load.into = Tier.DISK
        was_on_disk = self._outside_state(key) is AdapterState.ON_DISK
        self._set_state(key, AdapterState.FETCHING)
        started = self._clock()
        path = await self._blocking(load, self._fetch_to_disk, version)
        fetch_s = self._clock() - started
        if load.requested and self._disk_keys is not None:
            if was_on_disk:
                self._disk_counters.hits += 1
            else:
                self._disk_counters.misses += 1
        if not was_on_disk:
            self._latency[Tier.NONE].add(fetch_s)
        if load.target is Tier.DISK:
            self._set_state(key, self._resident_state(key))
            return None

        load.into = Tier.HOST
        self._set_state(key, AdapterState.LOADING_HOST)
        started = self._clock()
        adapter = await self._blocking(load, self._load_host, version, path)
        # Disk to host: the read, plus the disk cache's lookup when it was a disk hit.
        self._latency[Tier.DISK].add(self._clock() - started + (fetch_s if was_on_disk else 0.0))
        size = adapter.size_bytes
        if not self._host.fits(size):
            raise AdapterLoadError(
                f"adapter {key}: loading into the host tier failed: it needs {size} bytes, "
                f"more than the whole host budget of {self._host.capacity} bytes; raise "
                "host_budget_bytes"
            )
        if await self._claim(self._host_queue, load, size) is None:
            self._set_state(key, self._resident_state(key))
            return None
        self._host.insert(key, adapter, size)
        self._set_state(key, AdapterState.IN_HOST)
        return adapter

    async def _activate(self, load: _Load, adapter: HostAdapterLike) -> None:
        key = load.version.key
        load.into = Tier.GPU
        slot = await self._claim(self._slot_queue, load, 1)
        if slot is None:
            return
        self._set_state(key, AdapterState.ACTIVATING, slot=slot)
        started = self._clock()
        try:
            await self._blocking(load, self._activate_slot, slot, adapter)
        except BaseException:
            self._give_back_slot(slot)
            raise
        self._latency[Tier.HOST].add(self._clock() - started)
        self._gpu.insert(key, slot, adapter.size_bytes)
        self._set_state(key, AdapterState.IN_GPU, slot=slot)

    async def _claim(self, queue: RoomQueue[int], load: _Load, need: int) -> int | None:
        """Room from ``queue``: requests wait their turn, prefetches take it or drop."""
        if self._pins[load.version.key] > 0:
            return await queue.claim(need)
        claimed = queue.try_claim_now(need)
        if claimed is None:
            self._prefetches_dropped += 1
        return claimed

    async def _blocking(self, load: _Load, step: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking load step on the executor, wrapping its failure with context."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, step, *args)
        except _CLASSIFIED_ERRORS:
            raise
        except Exception as error:
            raise AdapterLoadError(
                f"adapter {load.version.key}: loading into the {load.into.name.lower()} tier "
                f"failed: {type(error).__name__}: {error}"
            ) from error

    # ------------------------------------------------------ room, pins, eviction

    def _evictable(self, key: str) -> bool:
        return self._pins[key] == 0 and key not in self._loads

    def _claim_slot(self, need: int) -> int | None:
        if not self._gpu.claim(need):
            return None
        return heapq.heappop(self._free_slots)

    def _give_back_slot(self, slot: int) -> None:
        heapq.heappush(self._free_slots, slot)
        self._gpu.unreserve(1)

    def _claim_host(self, size_bytes: int) -> int | None:
        return size_bytes if self._host.claim(size_bytes) else None

    def _on_gpu_evict(self, key: str, slot: int) -> None:
        if self._deactivate_slot is not None:
            try:
                self._deactivate_slot(slot)
            except Exception:
                # The slot holds no pinned adapter, and the next activation overwrites it.
                logger.exception("deactivating GPU slot %d (adapter %s) failed", slot, key)
        heapq.heappush(self._free_slots, slot)
        self._set_state(key, AdapterState.IN_HOST, slot=slot)

    def _on_host_evict(self, key: str, adapter: HostAdapterLike) -> None:
        if key in self._gpu:
            self._gpu.evict(key)
        self._set_state(key, self._outside_state(key))  # it leaves right after this hook

    def _unpin(self, key: str) -> None:
        self._pins[key] -= 1
        if self._pins[key] <= 0:
            del self._pins[key]
            self._pump()

    def _pump(self) -> None:
        self._host_queue.pump()
        self._slot_queue.pump()

    # ------------------------------------------------------------------ lifecycle

    def _resident_state(self, key: str) -> AdapterState:
        if key in self._gpu:
            return AdapterState.IN_GPU
        if key in self._host:
            return AdapterState.IN_HOST
        return self._outside_state(key)

    def _outside_state(self, key: str) -> AdapterState:
        if self._disk_keys is not None and key in self._disk_keys():
            return AdapterState.ON_DISK
        return AdapterState.ABSENT

    def _set_state(
        self, key: str, state: AdapterState, *, slot: int | None = None, error: str | None = None
    ) -> None:
        """The one place an adapter's state changes: store, log, publish."""
        previous = self.lifecycle(key)
        if state in (AdapterState.ABSENT, AdapterState.ON_DISK):
            self._states.pop(key, None)
        else:
            self._states[key] = state
        self._errored.pop(key, None)
        if state is AdapterState.ERRORED:
            self._errored[key] = None
            if len(self._errored) > _MAX_ERRORED:
                forgotten, _ = self._errored.popitem(last=False)
                self._states.pop(forgotten, None)
        if state is previous and error is None:
            return
        event = ResidencyEvent(key, state, previous, self._clock(), slot, error)
        log = logger.warning if error else logger.debug
        log("adapter %s: %s -> %s%s", key, previous, state, f" ({error})" if error else "")
        if self._on_change is not None:
            try:
                self._on_change(event)
            except Exception:
                logger.exception("on_change failed for %s", event)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("the adapter cache is closed")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a load's exception retrieved; ``_set_state`` has logged it already."""
    if not task.cancelled():
        task.exception()
