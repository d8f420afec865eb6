"""The Redis path of the cluster view, against a real redis-server (no Ray).

Publishers diff a replica's :class:`ReplicaView` that the test mutates; subscribers
apply the channel to a :class:`ClusterView`. Waits poll the view with a generous
deadline and never assert on time.
"""

from __future__ import annotations

import asyncio
import copy as copy_module
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from adapter_store._redis_server import RedisServerProcess
from adapter_store._redis_server import free_port
from scheduler import ClusterView
from scheduler import ReplicaSnapshot
from scheduler import ReplicaView
from scheduler import ResidencyChanged
from scheduler import Tier
from scheduler import encode_event
from scheduler import replica_key
from scheduler import residency_channel
from scheduler import snapshot_to_hash
from services.serve._residency import ResidencyPublisher
from services.serve._residency import ResidencySubscriber

PREFIX = "t:"
WAIT_S = 30.0


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def follow(client: aioredis.Redis) -> AsyncIterator[Callable[..., ResidencySubscriber]]:
    """Start subscribers on ``client`` (each running as a task until the test ends)."""
    tasks: list[asyncio.Task[None]] = []

    def start(bound_s: float = 2.0, on: aioredis.Redis | None = None) -> ResidencySubscriber:
        subscriber = ResidencySubscriber(
            on or client,
            key_prefix=PREFIX,
            view=ClusterView(staleness_bound_s=bound_s),
            retry_s=0.05,
        )
        tasks.append(asyncio.create_task(subscriber.run()))
        return subscriber

    yield start
    for task in tasks:
        assert not task.done(), "a subscriber task ended (it must only stop when cancelled)"
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def synced(follow: Callable[..., ResidencySubscriber], **options: Any) -> ResidencySubscriber:
    """A subscriber started by ``follow`` that has made its initial resync."""
    subscriber = follow(**options)
    await eventually(lambda: subscriber.stats.resyncs >= 1, "the initial resync")
    return subscriber


def publisher(client: aioredis.Redis, state: ReplicaView, **options: object) -> ResidencyPublisher:
    return ResidencyPublisher(
        client, key_prefix=PREFIX, replica_id=state.replica_id, view=lambda: state, **options
    )


def copy(view: ReplicaView) -> ReplicaView:
    return copy_module.deepcopy(view)


async def put_snapshot(client: aioredis.Redis, snapshot: ReplicaSnapshot) -> None:
    await client.hset(replica_key(PREFIX, snapshot.replica_id), mapping=snapshot_to_hash(snapshot))


async def test_published_changes_reach_the_view_in_order(
    client: aioredis.Redis, follow: Callable[..., ResidencySubscriber]
) -> None:
    subscriber = await synced(follow)
    view = subscriber.view
    state = ReplicaView("r1", host={"acme/a@1"}, gpu_slots=4)
    pub = publisher(client, state)
    pub.start()
    await eventually(lambda: "r1" in view, "r1's first snapshot reached the view")
    assert view.get("r1").host == {"acme/a@1"}

    # A load followed by an eviction: the view ends where the replica is, nothing lost.
    state.loading.add("acme/b@1")
    pub.residency_changed()
    await eventually(lambda: "acme/b@1" in view.get("r1").loading, "b loading")
    state.loading.discard("acme/b@1")
    state.gpu.add("acme/b@1")
    state.host.discard("acme/a@1")
    state.in_flight, state.queued = 2, 1
    pub.residency_changed()
    pub.load_changed()

    await eventually(lambda: view.get("r1") == copy(state), "the view matches the replica")
    assert view.stats.gaps == 0
    assert view.stats.dropped_unknown == 0
    assert pub.stats.errors == 0
    assert pub.stats.published >= 5  # snapshot, loading+, loading-, gpu+, host-, load
    await pub.aclose()


async def test_the_hash_holds_the_latest_snapshot_with_a_ttl(client: aioredis.Redis) -> None:
    state = ReplicaView("r1", gpu={"acme/a@1"})
    pub = publisher(client, state, staleness_bound_s=2.0)

    assert await pub.flush()

    key = replica_key(PREFIX, "r1")
    assert 0 < await client.pttl(key) <= 6000  # 3 x the staleness bound
    fields = await client.hgetall(key)
    from scheduler import snapshot_from_hash

    snapshot = snapshot_from_hash(fields)
    assert (snapshot.gpu, snapshot.epoch, snapshot.seq) == (frozenset({"acme/a@1"}), pub.epoch, 1)
    await pub.aclose()
    assert not await client.exists(key)  # a clean shutdown deletes it


async def test_duplicate_and_reordered_events_are_dropped(
    client: aioredis.Redis, follow: Callable[..., ResidencySubscriber]
) -> None:
    await put_snapshot(client, ReplicaSnapshot("r1", "e1", 5, time.time(), gpu_slots=4))
    subscriber = follow()
    view = subscriber.view
    await eventually(lambda: "r1" in view, "the snapshot loaded")

    def added(seq: int, key: str) -> str:
        return encode_event(ResidencyChanged("r1", "e1", seq, time.time(), key, Tier.GPU, True))

    channel = residency_channel(PREFIX)
    for message in (added(6, "acme/six@1"), added(6, "acme/dup@1"), added(4, "acme/old@1")):
        await client.publish(channel, message)
    await eventually(lambda: view.stats.dropped_stale >= 2, "both stale events dropped")

    assert view.get("r1").gpu == {"acme/six@1"}
    assert view.stats.gaps == 0
    assert subscriber.stats.resyncs == 1


async def test_a_gap_reloads_the_snapshot_hash(
    client: aioredis.Redis, follow: Callable[..., ResidencySubscriber]
) -> None:
    await put_snapshot(client, ReplicaSnapshot("r1", "e1", 5, time.time(), gpu={"acme/a@1"}))
    subscriber = follow()
    view = subscriber.view
    await eventually(lambda: "r1" in view, "the snapshot loaded")
    # Events 6..8 were lost; the hash already holds the state after event 9.
    await put_snapshot(
        client, ReplicaSnapshot("r1", "e1", 9, time.time(), gpu={"acme/a@1", "acme/b@1"})
    )

    gap = ResidencyChanged("r1", "e1", 9, time.time(), "acme/c@1", Tier.HOST, True)
    await client.publish(residency_channel(PREFIX), encode_event(gap))

    await eventually(lambda: subscriber.stats.resyncs >= 2, "a reload after the gap")
    assert view.stats.gaps == 1
    assert view.get("r1").gpu == {"acme/a@1", "acme/b@1"}


async def test_a_replica_whose_hash_expired_is_dropped(
    client: aioredis.Redis, follow: Callable[..., ResidencySubscriber]
) -> None:
    # A crashed replica: its hash expires and it publishes nothing more.
    await put_snapshot(client, ReplicaSnapshot("dead", "e1", 1, time.time()))
    await client.pexpire(replica_key(PREFIX, "dead"), 300)
    subscriber = await synced(follow, bound_s=0.2)
    view = subscriber.view
    assert "dead" in view

    await eventually(lambda: "dead" not in view, "the expired replica left the view")


async def test_a_clean_shutdown_removes_the_replica(
    client: aioredis.Redis, follow: Callable[..., ResidencySubscriber]
) -> None:
    subscriber = await synced(follow)
    view = subscriber.view
    pub = publisher(client, ReplicaView("r1"))
    pub.start()
    await eventually(lambda: "r1" in view, "r1 joined")

    await pub.aclose()

    await eventually(lambda: "r1" not in view, "r1 left after its gone event")
    assert not await client.exists(replica_key(PREFIX, "r1"))


async def test_the_lag_of_events_is_measured(
    client: aioredis.Redis, follow: Callable[..., ResidencySubscriber]
) -> None:
    subscriber = await synced(follow)
    view = subscriber.view
    # The publisher's clock runs 5 s behind the router's: every event arrives 5 s late.
    pub = publisher(client, ReplicaView("r1"), clock=lambda: time.time() - 5.0)
    pub.start()
    await eventually(lambda: "r1" in view, "r1 joined")

    assert view.stats.max_lag_s >= 5.0
    assert 0.0 <= view.max_staleness(time.time()) < 5.0  # staleness is the router's clock
    await pub.aclose()


async def test_a_dead_redis_never_raises_into_the_publisher() -> None:
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    state = ReplicaView("r1")
    pub = publisher(dead, state, timeout_s=0.5)
    pub.start()
    state.gpu.add("acme/a@1")
    pub.residency_changed("any event")
    pub.load_changed()

    assert not await pub.flush()
    await pub.aclose()  # the gone event fails too, silently
    assert pub.stats.errors >= 2
    assert pub.stats.published == 0
    await dead.aclose()


async def test_the_subscriber_recovers_when_redis_comes_back(tmp_path: Path) -> None:
    server = RedisServerProcess(tmp_path, appendonly=False)
    client = aioredis.Redis.from_url(server.url)
    subscriber = ResidencySubscriber(
        client, key_prefix=PREFIX, view=ClusterView(staleness_bound_s=0.5), retry_s=0.05
    )
    task = asyncio.create_task(subscriber.run())
    try:
        await eventually(lambda: subscriber.stats.errors >= 1, "a failure while Redis is down")
        assert not task.done()

        server.start()
        pub = publisher(client, ReplicaView("r1", gpu={"acme/a@1"}))
        pub.start()
        await eventually(lambda: "r1" in subscriber.view, "r1 seen after Redis came back")
        assert subscriber.view.get("r1").gpu == {"acme/a@1"}
        await pub.aclose()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        server.stop()
