"""The tiered adapter cache, driven through fake tier callables.

The fakes block on ``threading.Event`` gates (they run on the cache's executor) and
record every call, so tests control ordering without sleeping for fixed times.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from adapter_store import AdapterNotFoundError
from adapter_store import AdapterVersion
from adapter_store import IntegrityError
from scheduler import LRUEviction
from scheduler import Tier
from services.engine import AdapterCache
from services.engine import AdapterLoadError
from services.engine import AdapterState
from services.engine import EngineError
from services.engine import ResidencyEvent
from tests.factories import adapter_version

MB = 1_000_000


def version(name: str, size_bytes: int = MB, tenant: str = "acme") -> AdapterVersion:
    return adapter_version(name, tenant=tenant, size_bytes=size_bytes)


A, B, C, D = (version(name) for name in "abcd")


@dataclass(frozen=True)
class FakeHostAdapter:
    key: str
    size_bytes: int


class FakeTiers:
    """The store's fetch, the host reader and the GPU slot copy, with gates and faults.

    Each step advances ``now`` (the cache's clock) by a fixed cost, so latency
    statistics are exact.
    """

    COSTS: ClassVar[dict[str, float]] = {"fetch": 5.0, "load": 2.0, "activate": 1.0}

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.disk: set[str] = set()
        self.now = 0.0
        self._gates: dict[tuple[str, str], threading.Event] = {}
        self._entered: dict[tuple[str, str], threading.Event] = {}
        self._faults: dict[tuple[str, str], Exception] = {}
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def hold(self, step: str, key: str) -> None:
        """Make ``step`` for ``key`` block until :meth:`let_go`."""
        self._gates[step, key] = threading.Event()
        self._entered[step, key] = threading.Event()

    def let_go(self, step: str, key: str) -> None:
        self._gates[step, key].set()

    async def entered(self, step: str, key: str) -> None:
        """Wait until a held ``step`` for ``key`` is running in its thread."""
        assert await asyncio.to_thread(self._entered[step, key].wait, 5.0)

    def fail(self, step: str, key: str, error: Exception) -> None:
        self._faults[step, key] = error

    def heal(self, step: str, key: str) -> None:
        del self._faults[step, key]

    def count(self, step: str, key: str | None = None) -> int:
        return sum(1 for call in self.calls if call[0] == step and (key is None or key in call))

    def _step(self, step: str, key: str, *record: object) -> None:
        with self._lock:
            self.calls.append((step, key, *record))
        if (step, key) in self._gates:
            self._entered[step, key].set()
            assert self._gates[step, key].wait(5.0), f"{step} {key} was never let go"
        if (step, key) in self._faults:
            raise self._faults[step, key]
        with self._lock:
            self.now += self.COSTS[step]

    def fetch_to_disk(self, adapter: AdapterVersion) -> Path:
        self._step("fetch", adapter.key)
        self.disk.add(adapter.key)
        return Path("/disk-cache") / adapter.key

    def load_host(self, adapter: AdapterVersion, path: Path) -> FakeHostAdapter:
        assert path == Path("/disk-cache") / adapter.key
        self._step("load", adapter.key)
        return FakeHostAdapter(adapter.key, adapter.size_bytes)

    def activate_slot(self, slot: int, adapter: FakeHostAdapter) -> None:
        self._step("activate", adapter.key, slot)

    def deactivate_slot(self, slot: int) -> None:
        self.calls.append(("deactivate", slot))

    def disk_keys(self) -> Iterable[str]:
        return sorted(self.disk)


@pytest.fixture
def tiers() -> FakeTiers:
    return FakeTiers()


@pytest.fixture
async def make_cache(tiers: FakeTiers):
    """Build caches on fake tiers; close them and check nothing leaked afterwards."""
    made: list[AdapterCache] = []
    executor = ThreadPoolExecutor(8)

    def make(**overrides) -> AdapterCache:
        options = {
            "gpu_slots": 2,
            "host_budget_bytes": 10 * MB,
            "fetch_to_disk": tiers.fetch_to_disk,
            "load_host": tiers.load_host,
            "activate_slot": tiers.activate_slot,
            "deactivate_slot": tiers.deactivate_slot,
            "disk_keys": tiers.disk_keys,
            "executor": executor,
            "clock": tiers.clock,
        }
        options.update(overrides)
        made.append(AdapterCache(**options))
        return made[-1]

    yield make
    for cache in made:
        await cache.aclose()
    executor.shutdown(wait=True)
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not leftover, f"tasks leaked: {leftover}"


async def eventually(predicate: Callable[[], bool]) -> None:
    """Let the loop run until ``predicate`` holds (loads hop through executor threads)."""
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never became true")


async def touch_all(cache: AdapterCache, *adapters: AdapterVersion) -> None:
    """Acquire and release each adapter in turn."""
    for adapter in adapters:
        (await cache.acquire(adapter)).release()


# --------------------------------------------------------------------- tiers


async def test_cold_acquire_loads_through_every_tier_then_hits_gpu(make_cache, tiers):
    events: list[ResidencyEvent] = []
    cache = make_cache(on_change=events.append)

    lease = await cache.acquire(A)

    assert (lease.slot, lease.key) == (0, A.key)
    assert tiers.calls == [("fetch", A.key), ("load", A.key), ("activate", A.key, 0)]
    assert [(e.previous, e.state) for e in events] == [
        (AdapterState.ABSENT, AdapterState.FETCHING),
        (AdapterState.FETCHING, AdapterState.LOADING_HOST),
        (AdapterState.LOADING_HOST, AdapterState.IN_HOST),
        (AdapterState.IN_HOST, AdapterState.ACTIVATING),
        (AdapterState.ACTIVATING, AdapterState.IN_GPU),
    ]
    assert events[-1].slot == 0 and events[-1].tier is Tier.GPU
    residency = cache.residency()
    assert residency.gpu == {0: A.key}
    assert residency.host == [A.key]
    assert residency.disk == [A.key]
    assert residency.loading == {}
    assert residency.pinned == {A.key: 1}
    lease.release()

    again = await cache.acquire(A)
    assert again.slot == 0
    assert tiers.count("fetch") == 1
    stats = cache.stats()
    assert (stats.tiers[Tier.GPU].hits, stats.tiers[Tier.GPU].misses) == (1, 1)
    assert (stats.tiers[Tier.HOST].hits, stats.tiers[Tier.HOST].misses) == (0, 1)
    assert (stats.tiers[Tier.DISK].hits, stats.tiers[Tier.DISK].misses) == (0, 1)
    assert stats.tiers[Tier.GPU].hit_ratio == 0.5
    again.release()
    assert cache.residency().pinned == {}


async def test_request_served_from_host_and_from_disk_count_the_right_tiers(make_cache, tiers):
    cache = make_cache(gpu_slots=1)
    await touch_all(cache, A, B)  # B took A's slot; A stays in host memory
    tiers.disk.add(C.key)  # C is on disk already, not in memory

    await touch_all(cache, A, C)

    stats = cache.stats()
    assert (stats.tiers[Tier.GPU].hits, stats.tiers[Tier.GPU].misses) == (0, 4)
    assert (stats.tiers[Tier.HOST].hits, stats.tiers[Tier.HOST].misses) == (1, 3)
    assert (stats.tiers[Tier.DISK].hits, stats.tiers[Tier.DISK].misses) == (1, 2)
    assert tiers.count("load", A.key) == 1


async def test_load_latency_is_recorded_per_source_tier(make_cache, tiers):
    cache = make_cache(gpu_slots=1)
    await touch_all(cache, A, B, A)  # A: store->disk->host->gpu, B: same, A again: host->gpu
    tiers.disk.add(C.key)
    await touch_all(cache, C)  # disk->host->gpu: the fetch is the disk cache's lookup

    latency = cache.stats().load_latency
    assert latency[Tier.NONE].count == 2 and latency[Tier.NONE].mean_s == 5.0
    assert latency[Tier.DISK].count == 3
    assert sorted([latency[Tier.DISK].p50_s, latency[Tier.DISK].max_s]) == [2.0, 7.0]
    assert latency[Tier.HOST].count == 4 and latency[Tier.HOST].p99_s == 1.0


# ------------------------------------------------------------------ eviction


async def test_gpu_tier_evicts_least_recently_used_slot(make_cache, tiers):
    cache = make_cache(gpu_slots=2)
    await touch_all(cache, A, B, A)  # B is now the least recently used

    lease = await cache.acquire(C)

    assert lease.slot == 1  # B's slot
    assert ("deactivate", 1) in tiers.calls
    residency = cache.residency()
    assert residency.gpu == {0: A.key, 1: C.key}
    assert sorted(residency.host) == sorted([A.key, B.key, C.key])  # B only left its slot
    assert cache.lifecycle(B.key) is AdapterState.IN_HOST
    assert cache.stats().tiers[Tier.GPU].evictions == 1
    assert cache.stats().tiers[Tier.HOST].evictions == 0
    lease.release()


async def test_host_tier_evicts_lru_entry_outside_gpu_first(make_cache, tiers):
    cache = make_cache(gpu_slots=1, host_budget_bytes=3 * MB)
    await touch_all(cache, A, B, C)  # host: A B C, slot: C
    await touch_all(cache, A)  # host hit; slot: A. Host recency: B < C < A

    await touch_all(cache, D)  # needs host room: B is the LRU entry not in a slot

    residency = cache.residency()
    assert sorted(residency.host) == sorted([A.key, C.key, D.key])
    assert residency.gpu == {0: D.key}
    assert cache.lifecycle(B.key) is AdapterState.ON_DISK
    assert cache.stats().tiers[Tier.HOST].evictions == 1


async def test_host_eviction_of_an_adapter_in_a_slot_deactivates_the_slot(make_cache, tiers):
    cache = make_cache(gpu_slots=2, host_budget_bytes=2 * MB)
    await touch_all(cache, A, B)  # both in slots, both unpinned: host is full

    lease = await cache.acquire(C)

    # Nothing outside a slot could go, so the LRU slot-resident adapter A left both tiers.
    assert ("deactivate", 0) in tiers.calls
    assert lease.slot == 0
    residency = cache.residency()
    assert residency.gpu == {0: C.key, 1: B.key}
    assert sorted(residency.host) == sorted([B.key, C.key])
    assert cache.lifecycle(A.key) is AdapterState.ON_DISK
    stats = cache.stats()
    assert (stats.tiers[Tier.GPU].evictions, stats.tiers[Tier.HOST].evictions) == (1, 1)
    lease.release()


async def test_custom_eviction_policy_is_consulted_once_per_tier(make_cache, tiers):
    class MostRecentlyUsed(LRUEviction):
        instances: ClassVar[list[MostRecentlyUsed]] = []

        def __init__(self) -> None:
            super().__init__()
            self.asked: list[list[str]] = []
            self.instances.append(self)

        def victim(self, candidates, now):
            self.asked.append(sorted(candidates))
            return list(self._order)[-1] if set(self._order) <= set(candidates) else None

    cache = make_cache(gpu_slots=2, eviction_policy=MostRecentlyUsed)
    await touch_all(cache, A, B, A)

    lease = await cache.acquire(C)

    gpu_policy, host_policy = MostRecentlyUsed.instances
    assert gpu_policy.asked == [sorted([A.key, B.key])]
    assert host_policy.asked == []
    assert lease.slot == 0  # A, the most recently used, was evicted
    assert cache.residency().gpu == {0: C.key, 1: B.key}
    lease.release()


async def test_policy_choosing_a_non_candidate_is_reported(make_cache, tiers):
    class Broken(LRUEviction):
        def victim(self, candidates, now):
            return "not/a-candidate@1"

    cache = make_cache(gpu_slots=1, eviction_policy=Broken)
    await touch_all(cache, A)

    with pytest.raises(RuntimeError, match="Broken chose 'not/a-candidate@1'"):
        await cache.acquire(B)


# -------------------------------------------------------------------- pinning


async def test_pinned_slots_are_never_evicted_and_waiters_resume_in_order(make_cache, tiers):
    cache = make_cache(gpu_slots=1)
    held = await cache.acquire(A)

    want_b = asyncio.create_task(cache.acquire(B))
    await eventually(lambda: cache.stats().tiers[Tier.GPU].waits == 1)
    want_c = asyncio.create_task(cache.acquire(C))
    await eventually(lambda: cache.stats().tiers[Tier.GPU].waits == 2)

    assert cache.residency().gpu == {0: A.key}
    assert not want_b.done() and not want_c.done()
    assert ("deactivate", 0) not in tiers.calls

    held.release()
    lease_b = await want_b
    assert lease_b.slot == 0 and not want_c.done()
    assert cache.residency().gpu == {0: B.key}

    lease_b.release()
    lease_c = await want_c
    assert cache.residency().gpu == {0: C.key}
    assert tiers.calls.count(("deactivate", 0)) == 2
    lease_c.release()


async def test_pinned_host_entries_are_never_evicted(make_cache, tiers):
    cache = make_cache(gpu_slots=2, host_budget_bytes=1 * MB)
    held = await cache.acquire(A)

    want_b = asyncio.create_task(cache.acquire(B))
    await eventually(lambda: cache.stats().tiers[Tier.HOST].waits == 1)
    assert cache.residency().host == [A.key]
    assert cache.residency().loading == {B.key: Tier.HOST}

    held.release()
    lease = await want_b
    assert cache.residency().host == [B.key]
    # A left host memory, so its slot was released too, and B took it.
    assert ("deactivate", 0) in tiers.calls
    assert cache.residency().gpu == {0: B.key}
    lease.release()


async def test_lease_release_is_idempotent_and_async_with_releases(make_cache):
    cache = make_cache()
    lease = await cache.acquire(A)
    second = await cache.acquire(A)
    assert cache.residency().pinned == {A.key: 2}

    lease.release()
    lease.release()
    assert lease.released and cache.residency().pinned == {A.key: 1}

    async with second as held:
        assert held.slot == lease.slot
    assert cache.residency().pinned == {}


# --------------------------------------------------------------- single-flight


async def test_concurrent_cold_acquires_share_one_load(make_cache, tiers):
    cache = make_cache()
    tiers.hold("fetch", A.key)
    waiters = [asyncio.create_task(cache.acquire(A)) for _ in range(5)]
    await tiers.entered("fetch", A.key)
    assert cache.residency().loading == {A.key: Tier.DISK}
    assert cache.lifecycle(A.key) is AdapterState.FETCHING

    tiers.let_go("fetch", A.key)
    leases = await asyncio.gather(*waiters)

    assert {lease.slot for lease in leases} == {0}
    assert [tiers.count(step) for step in ("fetch", "load", "activate")] == [1, 1, 1]
    stats = cache.stats()
    assert stats.coalesced == 4
    assert stats.tiers[Tier.GPU].misses == 5 and stats.tiers[Tier.HOST].misses == 1
    assert cache.residency().pinned == {A.key: 5}
    for lease in leases:
        lease.release()
    assert cache.residency().pinned == {}


async def test_loads_of_different_adapters_run_concurrently(make_cache, tiers):
    cache = make_cache()
    tiers.hold("fetch", A.key)
    want_a = asyncio.create_task(cache.acquire(A))
    await tiers.entered("fetch", A.key)

    lease_b = await cache.acquire(B)  # not stuck behind A's slow fetch

    assert not want_a.done()
    tiers.let_go("fetch", A.key)
    lease_a = await want_a
    assert {lease_a.slot, lease_b.slot} == {0, 1}
    lease_a.release()
    lease_b.release()


# ------------------------------------------------------------ failure isolation


async def test_failed_fetch_fails_only_that_adapters_waiters_and_is_retried(make_cache, tiers):
    events: list[ResidencyEvent] = []
    cache = make_cache(on_change=events.append)
    tiers.fail("fetch", A.key, ConnectionError("store unreachable"))
    tiers.hold("fetch", A.key)
    want_a = [asyncio.create_task(cache.acquire(A)) for _ in range(3)]
    want_b = asyncio.create_task(cache.acquire(B))
    await tiers.entered("fetch", A.key)
    tiers.let_go("fetch", A.key)

    results = await asyncio.gather(*want_a, return_exceptions=True)
    lease_b = await want_b

    for error in results:
        assert isinstance(error, AdapterLoadError)
        assert A.key in str(error) and "disk tier" in str(error)
        assert "ConnectionError: store unreachable" in str(error)
    assert lease_b.key == B.key
    assert cache.lifecycle(A.key) is AdapterState.ERRORED
    assert any(e.key == A.key and e.state is AdapterState.ERRORED and e.error for e in events)
    assert cache.stats().errors == {Tier.GPU: 0, Tier.HOST: 0, Tier.DISK: 1}
    assert cache.residency().pinned == {B.key: 1}
    assert tiers.count("fetch", A.key) == 1

    tiers.heal("fetch", A.key)
    lease_a = await cache.acquire(A)  # no negative cache: the next request retries
    assert tiers.count("fetch", A.key) == 2
    assert cache.lifecycle(A.key) is AdapterState.IN_GPU
    lease_a.release()
    lease_b.release()


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError("blob acme/a@1 failed its sha256 check twice"),
        AdapterNotFoundError("blob acme/a@1 is gone; it was garbage-collected"),
    ],
    ids=["integrity", "not-found"],
)
async def test_store_errors_reach_the_waiters_unwrapped(make_cache, tiers, error):
    # Their statuses (502, 404) tell the client not to retry; AdapterLoadError (503) would.
    events: list[ResidencyEvent] = []
    cache = make_cache(on_change=events.append)
    tiers.fail("fetch", A.key, error)

    results = await asyncio.gather(cache.acquire(A), cache.acquire(A), return_exceptions=True)

    assert results == [error, error]
    assert cache.lifecycle(A.key) is AdapterState.ERRORED
    assert any(e.key == A.key and e.state is AdapterState.ERRORED and e.error for e in events)
    assert cache.stats().errors == {Tier.GPU: 0, Tier.HOST: 0, Tier.DISK: 1}
    assert cache.residency().pinned == {}
    assert tiers.count("fetch", A.key) == 1


async def test_failed_activation_gives_the_slot_back_and_keeps_the_host_copy(make_cache, tiers):
    cache = make_cache(gpu_slots=1)
    tiers.fail("activate", A.key, RuntimeError("CUDA error: out of memory"))

    with pytest.raises(AdapterLoadError, match=r"acme/a@1: loading into the gpu tier failed"):
        await cache.acquire(A)

    assert cache.residency().gpu == {}
    assert cache.residency().host == [A.key]
    assert cache.lifecycle(A.key) is AdapterState.IN_HOST
    lease_b = await cache.acquire(B)  # the slot A failed to enter is free
    assert lease_b.slot == 0
    lease_b.release()
    tiers.heal("activate", A.key)
    lease_a = await cache.acquire(A)
    assert tiers.count("load", A.key) == 1  # served from host memory
    lease_a.release()


async def test_adapter_larger_than_the_host_budget_fails_clearly(make_cache, tiers):
    cache = make_cache(host_budget_bytes=MB)
    huge = version("huge", size_bytes=2 * MB)

    with pytest.raises(
        AdapterLoadError, match=r"more than the whole host budget.*host_budget_bytes"
    ):
        await cache.acquire(huge)

    assert cache.stats().errors[Tier.HOST] == 1
    assert cache.residency().pinned == {} and cache.residency().host == []
    assert cache.lifecycle(huge.key) is AdapterState.ERRORED


# --------------------------------------------------------------- cancellation


async def test_cancelled_waiter_leaks_no_pin_and_does_not_break_the_shared_load(make_cache, tiers):
    cache = make_cache()
    tiers.hold("load", A.key)
    quitter = asyncio.create_task(cache.acquire(A))
    stayer = asyncio.create_task(cache.acquire(A))
    await tiers.entered("load", A.key)

    quitter.cancel()
    await asyncio.gather(quitter, return_exceptions=True)
    assert cache.residency().pinned == {A.key: 1}
    tiers.let_go("load", A.key)

    lease = await stayer
    assert quitter.cancelled()
    assert cache.residency().pinned == {A.key: 1}
    lease.release()
    assert cache.residency().pinned == {}


async def test_load_finishes_when_every_waiter_gave_up(make_cache, tiers):
    cache = make_cache()
    tiers.hold("fetch", A.key)
    quitter = asyncio.create_task(cache.acquire(A))
    await tiers.entered("fetch", A.key)
    quitter.cancel()
    await asyncio.gather(quitter, return_exceptions=True)

    tiers.let_go("fetch", A.key)
    await eventually(lambda: cache.lifecycle(A.key) is AdapterState.IN_GPU)
    assert cache.residency().pinned == {}
    assert cache.residency().gpu == {0: A.key}


async def test_cancelled_waiter_for_a_slot_keeps_the_queue_moving(make_cache, tiers):
    cache = make_cache(gpu_slots=1)
    held = await cache.acquire(A)
    quitter = asyncio.create_task(cache.acquire(B))
    await eventually(lambda: cache.stats().tiers[Tier.GPU].waits == 1)
    stayer = asyncio.create_task(cache.acquire(C))
    await eventually(lambda: cache.stats().tiers[Tier.GPU].waits == 2)

    quitter.cancel()
    await asyncio.gather(quitter, return_exceptions=True)
    assert cache.residency().pinned == {A.key: 1, C.key: 1}

    # B's load is still first in line; it takes the slot unpinned, and C evicts it.
    held.release()
    lease = await stayer
    assert cache.residency().gpu == {0: C.key}
    assert tiers.count("activate", B.key) == 1
    assert cache.residency().pinned == {C.key: 1}
    lease.release()


async def test_aclose_fails_waiters_and_refuses_new_work(make_cache, tiers):
    cache = make_cache()
    tiers.hold("fetch", A.key)
    waiter = asyncio.create_task(cache.acquire(A))
    await tiers.entered("fetch", A.key)

    await cache.aclose()
    tiers.let_go("fetch", A.key)

    with pytest.raises(AdapterLoadError, match="closed while loading"):
        await waiter
    with pytest.raises(EngineError, match="closed"):
        await cache.acquire(B)
    with pytest.raises(EngineError, match="closed"):
        cache.prefetch(B)
    assert cache.residency().pinned == {}


# ------------------------------------------------------------------ prefetch


async def test_prefetch_loads_without_pinning_or_counting_requests(make_cache, tiers):
    cache = make_cache()
    cache.prefetch(A)
    cache.prefetch(A)  # joins the same load
    cache.prefetch(B, to=Tier.HOST)
    cache.prefetch(C, to=Tier.DISK)

    await eventually(lambda: cache.lifecycle(A.key) is AdapterState.IN_GPU)
    await eventually(lambda: cache.lifecycle(B.key) is AdapterState.IN_HOST)
    await eventually(lambda: cache.lifecycle(C.key) is AdapterState.ON_DISK)
    residency = cache.residency()
    assert residency.gpu == {0: A.key}
    assert sorted(residency.host) == sorted([A.key, B.key])
    assert residency.disk == sorted([A.key, B.key, C.key])
    assert residency.pinned == {} and residency.loading == {}
    assert tiers.count("fetch", A.key) == 1
    stats = cache.stats()
    assert stats.prefetches == 4
    assert all(s.hits == s.misses == 0 for s in stats.tiers.values())

    lease = await cache.acquire(A)
    assert cache.stats().tiers[Tier.GPU].hits == 1
    lease.release()


async def test_acquire_joins_a_prefetch_that_stops_at_host(make_cache, tiers):
    cache = make_cache()
    tiers.hold("load", A.key)
    cache.prefetch(A, to=Tier.HOST)
    await tiers.entered("load", A.key)

    waiter = asyncio.create_task(cache.acquire(A))
    await eventually(lambda: cache.stats().coalesced == 1)
    tiers.let_go("load", A.key)

    lease = await waiter
    assert cache.residency().gpu == {0: A.key}
    assert [tiers.count(step) for step in ("fetch", "load", "activate")] == [1, 1, 1]
    lease.release()


async def test_prefetch_never_evicts_pinned_entries(make_cache, tiers):
    cache = make_cache(gpu_slots=1)
    held = await cache.acquire(A)

    cache.prefetch(B)  # no unpinned slot: stops in host memory

    await eventually(lambda: cache.lifecycle(B.key) is AdapterState.IN_HOST)
    await eventually(lambda: cache.residency().loading == {})
    assert cache.residency().gpu == {0: A.key}
    assert cache.stats().prefetches_dropped == 1
    assert cache.stats().tiers[Tier.GPU].waits == 0
    held.release()


async def test_prefetch_failure_is_counted_not_raised(make_cache, tiers):
    cache = make_cache()
    tiers.fail("load", A.key, ValueError("adapter_config.json: missing 'r'"))

    cache.prefetch(A)

    await eventually(lambda: cache.lifecycle(A.key) is AdapterState.ERRORED)
    assert cache.stats().errors[Tier.HOST] == 1


async def test_a_failing_on_change_subscriber_does_not_break_loads(make_cache):
    seen: list[AdapterState] = []

    def flaky(event: ResidencyEvent) -> None:
        seen.append(event.state)
        raise ConnectionError("redis went away")

    cache = make_cache(on_change=flaky)
    lease = await cache.acquire(A)

    assert seen[-1] is AdapterState.IN_GPU and len(seen) == 5
    lease.release()


def test_bad_settings_are_rejected(tiers):
    common = {
        "fetch_to_disk": tiers.fetch_to_disk,
        "load_host": tiers.load_host,
        "activate_slot": tiers.activate_slot,
    }
    with pytest.raises(ValueError, match="gpu_slots must be an integer >= 1, got 0"):
        AdapterCache(gpu_slots=0, host_budget_bytes=MB, **common)
    with pytest.raises(ValueError, match="host_budget_bytes"):
        AdapterCache(gpu_slots=1, host_budget_bytes=0, **common)


async def test_prefetch_to_an_unknown_tier_is_rejected(make_cache):
    with pytest.raises(ValueError, match="prefetch target"):
        make_cache().prefetch(A, to=Tier.LOADING)


# ------------------------------------------- with the real host adapter and slots


@pytest.fixture(scope="module")
def peft_adapters(tmp_path_factory):
    """A tiny base model and three real PEFT adapters for it (one of rank 16)."""
    from tests.factories import make_peft_adapter
    from tests.factories import tiny_llama

    base = tiny_llama()
    root = tmp_path_factory.mktemp("adapters")
    dirs = {
        A.key: make_peft_adapter(base, root / "a", seed=1),
        B.key: make_peft_adapter(base, root / "b", seed=2),
        C.key: make_peft_adapter(base, root / "c", seed=3, r=16, lora_alpha=32),
    }
    return base, dirs


@pytest.mark.slow  # importing peft dominates
async def test_real_adapters_cycle_through_one_slot_and_match_peft(make_cache, peft_adapters):
    import copy

    import torch
    from peft import PeftModel

    from services.engine import AdapterMismatchError
    from services.engine import HostAdapter
    from services.engine import MultiLoraModel

    base, dirs = peft_adapters
    model = MultiLoraModel(copy.deepcopy(base), max_slots=1, max_rank=8)
    cache = make_cache(
        gpu_slots=1,
        fetch_to_disk=lambda adapter: dirs[adapter.key],
        load_host=lambda adapter, path: HostAdapter.from_dir(adapter.key, path, model),
        activate_slot=model.load_slot,
        deactivate_slot=model.clear_slot,
        disk_keys=lambda: dirs,
    )
    ids = torch.tensor([[1, 5, 9, 42, 7]])

    for adapter in (A, B, A):  # B evicts A from the slot; A comes back from host memory
        async with await cache.acquire(adapter) as lease:
            got = model.forward(ids, [lease.slot]).logits
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(dirs[adapter.key]))
        with torch.inference_mode():
            expected = peft_model.eval()(input_ids=ids).logits
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

    with pytest.raises(AdapterMismatchError, match="acme/c@1"):
        await cache.acquire(C)  # rank 16 does not fit max_rank 8
    assert cache.lifecycle(C.key) is AdapterState.ERRORED
    stats = cache.stats()
    assert (stats.tiers[Tier.HOST].hits, stats.tiers[Tier.GPU].evictions) == (1, 2)
    assert sorted(cache.residency().host) == sorted([A.key, B.key])
