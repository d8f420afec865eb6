"""CacheAwareRequestRouter inside a real (local) Ray Serve deployment.

One Ray start for the module: three replicas of a tiny multiplexed deployment that
answer with their replica id and report residency through ``record_routing_stats``.
The placement policy is the deterministic ProbePolicy, so every assertion is about
what the router fed it and whether Ray delivered where it ranked. A second application
reports residency only through Redis (the session's redis-server), to show the router
follows the replicas' events.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import redis.asyncio
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from scheduler import PlacementPolicy
from scheduler import ReplicaView
from scheduler import Tier
from services.serve._residency import ResidencyPublisher
from services.serve._router import CacheAwareRequestRouter
from services.serve._router import routing_stats
from tests.integration.services import _router_probe

pytestmark = [pytest.mark.ray, pytest.mark.slow]

HOT_KEY = "acme/hot@1"
SHARED_DISK_KEY = "acme/shared@1"
REPLICAS = 3
# The machine running the tests may be heavily loaded: waits are generous, and never
# asserted on.
RESULT_TIMEOUT_S = 120.0
CONVERGE_TIMEOUT_S = 120.0


def host_key(replica_id: str) -> str:
    """The adapter each replica reports in its host tier."""
    return f"acme/host-{replica_id}@1"


class ProbeRouter(CacheAwareRequestRouter):
    def create_policy(self, name: str, *, seed: int, **options: Any) -> PlacementPolicy:
        return _router_probe.ProbePolicy(hot_keys=frozenset(options["hot_keys"]))


@serve.deployment(
    num_replicas=REPLICAS,
    max_ongoing_requests=8,
    ray_actor_options={"num_cpus": 0},
    request_router_config=RequestRouterConfig(
        request_router_class=ProbeRouter,
        request_router_kwargs={"policy": "probe", "hot_keys": [HOT_KEY]},
        request_routing_stats_period_s=0.2,
        request_routing_stats_timeout_s=30,
    ),
)
class Echo:
    """Answers with its replica id; loads adapters through Ray's multiplexing."""

    def __init__(self) -> None:
        self.replica_id = serve.get_replica_context().replica_id.unique_id

    @serve.multiplexed(max_num_models_per_replica=2)
    async def load_adapter(self, key: str) -> str:
        return key

    async def __call__(self) -> str:
        key = serve.get_multiplexed_model_id()
        if key:
            await self.load_adapter(key)
        return self.replica_id

    def record_routing_stats(self) -> dict[str, Any]:
        view = ReplicaView(
            self.replica_id, host={host_key(self.replica_id)}, disk={SHARED_DISK_KEY}, gpu_slots=2
        )
        return routing_stats(view)


class Publishing:
    """Answers with its replica id and puts each request's key on its disk tier, which it
    publishes to Redis only: it has no ``record_routing_stats``."""

    async def __init__(self, redis_url: str) -> None:
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.view = ReplicaView(self.replica_id)
        self.redis = redis.asyncio.Redis.from_url(redis_url)
        self.publisher = ResidencyPublisher(
            self.redis, key_prefix=REDIS_PREFIX, replica_id=self.replica_id, view=lambda: self.view
        )
        self.publisher.start()

    async def __call__(self) -> str:
        self.view.disk.add(serve.get_multiplexed_model_id())
        self.publisher.residency_changed()
        return self.replica_id

    async def __del__(self) -> None:
        await self.publisher.aclose()
        await self.redis.aclose()


REDIS_PREFIX = "router-test:"


@pytest.fixture(scope="module")
def handle() -> Iterator[DeploymentHandle]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        yield serve.run(Echo.bind(), name="router-test", route_prefix=None)
    finally:
        serve.shutdown()
        ray.shutdown()


def ask(handle: DeploymentHandle, key: str = "") -> str:
    """Send one request for adapter ``key``; the id of the replica that served it."""
    return handle.options(multiplexed_model_id=key).remote().result(timeout_s=RESULT_TIMEOUT_S)


def latest_views(key: str | None = None) -> dict[str, ReplicaView]:
    """The views of the router's latest ranking (for ``key`` when given), by replica id."""
    for demand, views in reversed(_router_probe.SEEN):
        if key is None or demand.key == key:
            return {view.replica_id: view for view in views}
    return {}


def wait_for_views(
    handle: DeploymentHandle, key: str, condition: Callable[[dict[str, ReplicaView]], bool]
) -> dict[str, ReplicaView]:
    """Send requests for ``key`` until the router's views satisfy ``condition``."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        ask(handle, key)
        views = latest_views(key)
        if condition(views) or time.monotonic() > deadline:
            return views
        time.sleep(0.2)


def reported_residency(views: dict[str, ReplicaView]) -> bool:
    return len(views) == REPLICAS and all(
        view.host == {host_key(replica_id)} for replica_id, view in views.items()
    )


@pytest.fixture(scope="module")
def replica_ids(handle: DeploymentHandle) -> list[str]:
    """The replica ids, once every replica's routing stats have reached the router."""
    return sorted(wait_for_views(handle, "", reported_residency))


def test_views_carry_each_replicas_reported_residency(
    handle: DeploymentHandle, replica_ids: list[str]
) -> None:
    views = latest_views("")

    assert sorted(views) == replica_ids and len(replica_ids) == REPLICAS
    for replica_id, view in views.items():
        assert view.host == {host_key(replica_id)}
        assert view.disk == {SHARED_DISK_KEY}
        assert view.gpu_slots == 2
        assert view.tier_of(host_key(replica_id)) is Tier.HOST


def test_request_goes_to_the_replica_holding_its_adapter(
    handle: DeploymentHandle, replica_ids: list[str]
) -> None:
    served = {replica_id: ask(handle, host_key(replica_id)) for replica_id in replica_ids}

    assert served == {replica_id: replica_id for replica_id in replica_ids}


def test_a_cold_adapter_sticks_to_the_replica_that_loaded_it(
    handle: DeploymentHandle, replica_ids: list[str]
) -> None:
    key = "acme/sticky@1"

    served = [ask(handle, key) for _ in range(5)]

    assert len(set(served)) == 1
    home = served[0]
    assert [replica for placed_key, replica in _router_probe.PLACED if placed_key == key] == served
    # The router counts the demand it routes...
    assert latest_views(key) and _router_probe.SEEN[-1][0].rate > 0
    # ...and learns the residency from Ray's multiplexed model ids.
    views = wait_for_views(handle, key, lambda views: key in views[home].gpu)
    assert key in views[home].gpu
    assert all(key not in view.gpu for replica_id, view in views.items() if replica_id != home)


def test_a_hot_adapter_is_spread_when_the_policy_spreads_it(
    handle: DeploymentHandle, replica_ids: list[str]
) -> None:
    served = [ask(handle, HOT_KEY) for _ in range(REPLICAS)]

    assert served == replica_ids


@pytest.fixture(scope="module")
def publishing(handle: DeploymentHandle, redis_server: Any) -> Iterator[DeploymentHandle]:
    """The Redis-only application, with a routing-stats period no test waits for. The
    router runs in this process (it holds the handle), so it reads the URL from here."""
    os.environ["LORAMUX_TEST_ROUTER_REDIS"] = redis_server.url
    deployment = serve.deployment(
        Publishing,
        num_replicas=2,
        ray_actor_options={"num_cpus": 0},
        request_router_config=RequestRouterConfig(
            request_router_class=ProbeRouter,
            request_router_kwargs={
                "policy": "probe",
                "hot_keys": [],
                "redis_url_env": "LORAMUX_TEST_ROUTER_REDIS",
                "key_prefix": REDIS_PREFIX,
                "staleness_bound_s": 2.0,
            },
            request_routing_stats_period_s=3600,
        ),
    )
    yield serve.run(deployment.bind(redis_server.url), name="residency-test", route_prefix=None)
    serve.delete("residency-test")


def test_views_follow_the_replicas_redis_events(publishing: DeploymentHandle) -> None:
    key = "acme/published@1"

    home = ask(publishing, key)  # that replica now holds the key on disk, said on Redis only
    views = wait_for_views(
        publishing, key, lambda views: key in views.get(home, ReplicaView("")).disk
    )

    # No routing stats and no multiplexing here: only the Redis events carried the key.
    assert key in views[home].disk
