"""CacheAwareRequestRouter without a cluster: fake replicas, an injected clock.

The router is built as Ray builds it (no Ray session is needed for that); replicas are
duck-typed stand-ins for ``RunningReplica`` carrying what the router reads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from ray.serve._private.common import DeploymentHandleSource
from ray.serve._private.common import DeploymentID
from ray.serve._private.common import ReplicaID
from ray.serve._private.common import RequestMetadata
from ray.serve.request_router import PendingRequest

from scheduler import AdapterDemand
from scheduler import PlacementPolicy
from scheduler import PolicyOptionError
from scheduler import ReplicaSnapshot
from scheduler import ReplicaView
from scheduler import Tier
from scheduler import UnknownPolicyError
from services.serve._router import CacheAwareRequestRouter
from services.serve._router import replica_view_from_stats
from services.serve._router import routing_stats
from tests.fakes import RecordingPolicy
from tests.helpers import Clock

DEPLOYMENT = DeploymentID(name="model", app_name="loramux")
KEY = "acme/bot@1"


class FakeReplica:
    """What the router reads from a ``RunningReplica``."""

    def __init__(self, unique_id: str, routing_stats: dict[str, Any] | None = None) -> None:
        self.replica_id = ReplicaID(unique_id=unique_id, deployment_id=DEPLOYMENT)
        self.routing_stats = routing_stats or {}
        self.multiplexed_model_ids: set[str] = set()
        self.max_ongoing_requests = 8

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return 0


class HoldersFirst(RecordingPolicy):
    """Replicas holding the key (best tier first), then the rest; records placements."""

    name = "holders_first"

    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]:
        ordered = sorted(replicas, key=lambda view: (view.tier_of(adapter.key), view.replica_id))
        return [[view] for view in ordered]


class HoldersFirstRouter(CacheAwareRequestRouter):
    def create_policy(self, name: str, *, seed: int, **options: Any) -> PlacementPolicy:
        return HoldersFirst()


@pytest.fixture
def redis_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of an environment variable holding a Redis URL. The URL is never dialled:
    the subscriber starts on the first routing call only."""
    monkeypatch.setenv("LORAMUX_TEST_ROUTER_REDIS", "redis://127.0.0.1:1/0")
    return "LORAMUX_TEST_ROUTER_REDIS"


def test_the_redis_url_comes_from_the_environment_and_its_absence_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("LORAMUX_TEST_ROUTER_REDIS", raising=False)
    router = make_router(Clock(), redis_url_env="LORAMUX_TEST_ROUTER_REDIS")
    assert router.cluster_view is None
    assert "LORAMUX_TEST_ROUTER_REDIS is not set" in caplog.text


def make_router(clock: Clock, **kwargs: Any) -> HoldersFirstRouter:
    router = HoldersFirstRouter(
        deployment_id=DEPLOYMENT,
        handle_source=DeploymentHandleSource.UNKNOWN,
        get_curr_time_s=clock,
    )
    router.initialize_state(**kwargs)
    return router


def request(key: str) -> PendingRequest:
    metadata = RequestMetadata(request_id="r", internal_request_id="r", multiplexed_model_id=key)
    return PendingRequest(args=[], kwargs={}, metadata=metadata)


def views_of(router: CacheAwareRequestRouter, clock: Clock) -> dict[str, ReplicaView]:
    return {
        replica.replica_id.unique_id: router.replica_view(replica, clock.now)
        for replica in router.curr_replicas.values()
    }


# --- the routing-stats wire format --------------------------------------------------


def test_routing_stats_round_trip_through_json() -> None:
    view = ReplicaView(
        "r1", gpu={"b", "a"}, host={"c"}, disk={"d"}, loading={"e"}, in_flight=2, queued=1,
        gpu_slots=4,
    )  # fmt: skip

    stats = json.loads(json.dumps(routing_stats(view)))

    assert stats["gpu"] == ["a", "b"]
    assert replica_view_from_stats("r1", stats) == view


def test_rays_fresher_facts_override_the_report() -> None:
    stats = routing_stats(ReplicaView("r1", gpu={"a"}, in_flight=5, queued=3))

    view = replica_view_from_stats("r1", stats, multiplexed_ids={"m"}, queue_len=1)

    assert view.gpu == {"a", "m"}
    assert (view.in_flight, view.queued) == (1, 0)


def test_a_replica_that_never_reported_is_empty() -> None:
    assert replica_view_from_stats("r1", {}) == ReplicaView("r1")


def test_a_fresher_published_view_replaces_the_reported_residency_and_load() -> None:
    stats = routing_stats(ReplicaView("r1", gpu={"old"}, in_flight=5, pinned=2), at=10.0)
    published = ReplicaView("r1", gpu={"new"}, host={"h"}, queued=1, gpu_slots=4)

    view = replica_view_from_stats("r1", stats, multiplexed_ids={"m"}, published=published)

    assert stats["at"] == 10.0
    assert view == ReplicaView(
        "r1", gpu={"new", "m"}, host={"h"}, queued=1, gpu_slots=4, pinned=2
    )  # pinned only travels in the report
    view.gpu.add("x")
    assert published.gpu == {"new"}  # a copy: the router's marks stay off the view


# --- the router ---------------------------------------------------------------------


async def test_the_policys_ranking_comes_back_as_ray_replicas() -> None:
    clock = Clock()
    router = make_router(clock)
    holder = FakeReplica("b", {"host": [KEY]})
    other = FakeReplica("a")

    ranked = await router.choose_replicas([other, holder], request(KEY))

    assert ranked == [[holder], [other]]


class Broken(HoldersFirst):
    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]:
        raise RuntimeError("policy bug")


class BrokenRouter(CacheAwareRequestRouter):
    def create_policy(self, name: str, *, seed: int, **options: Any) -> PlacementPolicy:
        return Broken()


async def test_a_failing_policy_degrades_to_load_balancing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = BrokenRouter(deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN)
    router.initialize_state()
    replicas = [FakeReplica("a"), FakeReplica("b")]

    first = await router.choose_replicas(replicas, request(KEY))
    second = await router.choose_replicas(replicas, request(KEY))

    assert first == second == [replicas]
    failures = [record for record in caplog.records if "failed to rank" in record.getMessage()]
    assert len(failures) == 1  # logged once, not once per request
    assert "policy bug" in caplog.text


async def test_a_placement_counts_as_loading_until_the_replica_reports_it() -> None:
    clock = Clock()
    router = make_router(clock, placement_ttl_s=5.0)
    target, other = FakeReplica("a"), FakeReplica("b")
    router.update_replicas([target, other])

    router.on_request_routed(request(KEY), target.replica_id, result=None)
    after_placement = views_of(router, clock)
    target.routing_stats = {"gpu": [KEY]}
    after_report = views_of(router, clock)
    target.routing_stats = {}  # evicted later: the report wins, the placement is gone
    after_eviction = views_of(router, clock)

    assert after_placement["a"].tier_of(KEY) is Tier.LOADING
    assert after_placement["b"].tier_of(KEY) is Tier.NONE
    assert after_report["a"].tier_of(KEY) is Tier.GPU and KEY not in after_report["a"].loading
    assert after_eviction["a"].tier_of(KEY) is Tier.NONE


async def test_the_fresher_of_the_redis_view_and_the_routing_stats_wins(
    redis_env: str,
) -> None:
    clock = Clock()
    router = make_router(clock, redis_url_env=redis_env, staleness_bound_s=2.0)
    replica = FakeReplica("a", routing_stats={"host": ["reported"], "at": 999.0, "pinned": 1})
    router.update_replicas([replica])
    assert router.cluster_view is not None
    snapshot = ReplicaSnapshot("a", "e1", 1, at=999.5, gpu=frozenset({"published"}))
    router.cluster_view.apply(snapshot, now=1000.0)

    redis_is_fresher = views_of(router, clock)["a"]
    replica.routing_stats = {"host": ["reported"], "at": 1001.0}
    stats_are_fresher = views_of(router, clock)["a"]

    assert (redis_is_fresher.gpu, redis_is_fresher.host) == ({"published"}, set())
    assert redis_is_fresher.pinned == 1  # pinned only travels in the routing stats
    assert (stats_are_fresher.gpu, stats_are_fresher.host) == (set(), {"reported"})


async def test_a_placement_is_applied_to_the_redis_view_too(redis_env: str) -> None:
    clock = Clock()
    router = make_router(clock, redis_url_env=redis_env)
    replica = FakeReplica("a")
    router.update_replicas([replica])
    assert router.cluster_view is not None
    router.cluster_view.apply(ReplicaSnapshot("a", "e1", 1, at=999.0), now=1000.0)

    router.on_request_routed(request(KEY), replica.replica_id, result=None)

    published = router.cluster_view.get("a")
    assert published.tier_of(KEY) is Tier.LOADING and published.queued == 1


async def test_a_replica_that_died_under_a_request_is_forgotten_at_once(redis_env: str) -> None:
    clock = Clock()
    router = make_router(clock, redis_url_env=redis_env)
    dead, alive = FakeReplica("a"), FakeReplica("b")
    router.update_replicas([dead, alive])
    assert router.cluster_view is not None
    router.cluster_view.apply(ReplicaSnapshot("a", "e1", 1, at=999.0, gpu=frozenset({KEY})), 1e3)
    router.on_request_routed(request("acme/new@1"), dead.replica_id, result=None)
    assert router.tracked_sizes()["placements"] == 1

    router.on_replica_actor_died(dead.replica_id)  # Ray calls it when a request fails so

    assert "a" not in router.cluster_view
    assert router.tracked_sizes()["placements"] == 0
    assert list(router.curr_replicas) == [alive.replica_id]
    assert await router.choose_replicas([alive], request(KEY)) == [[alive]]


async def test_an_unreported_placement_expires_after_its_ttl() -> None:
    clock = Clock()
    router = make_router(clock, placement_ttl_s=5.0)
    target = FakeReplica("a")
    router.update_replicas([target])
    router.on_request_routed(request(KEY), target.replica_id, result=None)

    clock.now += 4.0
    before = views_of(router, clock)["a"].tier_of(KEY)
    clock.now += 2.0
    after = views_of(router, clock)["a"].tier_of(KEY)

    assert (before, after) == (Tier.LOADING, Tier.NONE)


async def test_routed_requests_feed_the_demand_and_the_policy() -> None:
    clock = Clock()
    router = make_router(clock)
    target = FakeReplica("a", {"host": [KEY]})
    router.update_replicas([target])

    for _ in range(3):
        router.on_request_routed(request(KEY), target.replica_id, result=None)
        clock.now += 1.0

    policy = router.policy
    assert isinstance(policy, HoldersFirst)
    assert [view.replica_id for _, view in policy.placed] == ["a", "a", "a"]
    assert policy.placed[-1][1].tier_of(KEY) is Tier.HOST
    assert [demand.rate for demand, _ in policy.placed] == sorted(
        demand.rate for demand, _ in policy.placed
    )
    assert router.demand(KEY, clock.now).rate > 0
    assert router.demand("acme/other@1", clock.now).rate == 0


async def test_placements_on_a_departed_replica_are_forgotten() -> None:
    clock = Clock()
    router = make_router(clock)
    gone, stays = FakeReplica("a"), FakeReplica("b")
    router.update_replicas([gone, stays])
    router.on_request_routed(request(KEY), gone.replica_id, result=None)

    router.update_replicas([stays])
    router.update_replicas([gone, stays])  # the same id again: a fresh replica

    assert views_of(router, clock)["a"].tier_of(KEY) is Tier.NONE


async def test_the_registered_cache_aware_policy_sends_a_request_to_its_gpu_holder() -> None:
    router = CacheAwareRequestRouter(
        deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN
    )
    router.initialize_state(policy="cache_aware", seed=7, epsilon=0.5, demand_half_life_s=10.0)
    replicas = [FakeReplica(name) for name in "abcd"]
    replicas[2].routing_stats = {"gpu": [KEY]}

    ranked = await router.choose_replicas(replicas, request(KEY))

    assert ranked[0] == [replicas[2]]


def test_an_option_the_policy_does_not_take_is_refused_by_name() -> None:
    router = CacheAwareRequestRouter(
        deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN
    )

    with pytest.raises(PolicyOptionError, match="epsilonn"):
        router.initialize_state(policy="cache_aware", epsilonn=0.5)


def test_an_unknown_policy_name_lists_the_known_ones() -> None:
    router = CacheAwareRequestRouter(
        deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN
    )

    with pytest.raises(UnknownPolicyError, match="least_loaded"):
        router.initialize_state(policy="nope")


def test_a_non_positive_placement_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="placement_ttl_s"):
        make_router(Clock(), placement_ttl_s=0)
