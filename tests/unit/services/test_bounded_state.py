"""Steady traffic leaves the ingress' per-request state within its documented bounds.

A few thousand requests for a few hundred adapters (Zipf, some for the base model, eight
at a time) go through the request router as Ray Serve drives it in the ingress: Ray's
own ``_choose_replica_for_request`` (its queues and indices, its routing tasks, our
``choose_replicas``), then ``on_request_routed`` when the replica accepts. The same
requests are metered as the API meters them. Bounds: ``docs/architecture.md``, "Memory
under steady load".
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator

from ray.serve._private.common import DeploymentHandleSource
from ray.serve._private.common import RequestMetadata
from ray.serve.request_router import PendingRequest

from adapter_store.exceptions import NotFoundError
from adapter_store.exceptions import QuotaExceededError
from services.api._metrics import IngressMetrics
from services.api._metrics import Outcome
from services.api._metrics import RoutingDecision
from services.api._metrics import RoutingMetrics
from services.engine import GenerationChunk
from services.engine import Usage
from services.serve._router import CacheAwareRequestRouter
from tests.unit.services.test_metrics import RecordingSink
from tests.unit.services.test_router import DEPLOYMENT
from tests.unit.services.test_router import Clock
from tests.unit.services.test_router import FakeReplica

REQUESTS = 3000
ADAPTERS = 400
CONCURRENCY = 8
MAX_TRACKED_ADAPTERS = 64
PLACEMENT_TTL_S = 5.0
SECONDS_PER_REQUEST = 0.01
TENANTS = ("acme", "globex", "initech")
ENDPOINTS = ("completions", "chat_completions")


def zipf_keys(rng: random.Random) -> list[str]:
    """Adapter keys of ``REQUESTS`` requests; "" (the base model) for one in twenty."""
    names = [f"{TENANTS[i % 3]}/a{i}@1" for i in range(ADAPTERS)]
    weights = [1.0 / (rank + 1) for rank in range(ADAPTERS)]
    keys = rng.choices(names, weights=weights, k=REQUESTS)
    return ["" if rng.random() < 0.05 else key for key in keys]


def pending(number: int, key: str) -> PendingRequest:
    rid = f"req-{number}"
    metadata = RequestMetadata(request_id=rid, internal_request_id=rid, multiplexed_model_id=key)
    # The arguments ride along as the ingress' would (a generation request).
    return PendingRequest(args=[{"prompt": "x" * 256}], kwargs={}, metadata=metadata)


def rays_pending_index_size(router: CacheAwareRequestRouter) -> int:
    """Entries in Ray's index of pending requests by model id (the structure that
    retained every adapter request before the router pruned it)."""
    return sum(len(waiting) for waiting in router._pending_requests_by_model_id.values())


async def test_routing_state_stays_within_its_bounds_under_steady_traffic() -> None:
    clock = Clock()
    router = CacheAwareRequestRouter(
        deployment_id=DEPLOYMENT,
        handle_source=DeploymentHandleSource.UNKNOWN,
        get_curr_time_s=clock,
    )
    router.initialize_state(
        policy="cache_aware",
        placement_ttl_s=PLACEMENT_TTL_S,
        max_tracked_adapters=MAX_TRACKED_ADAPTERS,
        max_hot_keys=16,
    )
    sink = RecordingSink()
    router._metrics = RoutingMetrics(sink)
    replicas = [FakeReplica(name) for name in "abc"]
    router.update_replicas(replicas)
    keys = zipf_keys(random.Random(0))
    placed: list[tuple[float, str, str]] = []  # when, replica, key
    largest_index = 0

    for start in range(0, REQUESTS, CONCURRENCY):
        batch = [pending(start + i, key) for i, key in enumerate(keys[start : start + CONCURRENCY])]
        chosen = await asyncio.gather(*(router._choose_replica_for_request(pr) for pr in batch))
        for pr, replica in zip(batch, chosen, strict=True):
            router.on_request_routed(pr, replica.replica_id, result=None)
            placed.append(
                (clock.now, replica.replica_id.unique_id, pr.metadata.multiplexed_model_id)
            )
            clock.now += SECONDS_PER_REQUEST
        largest_index = max(largest_index, rays_pending_index_size(router))
        # The first replica reports the adapters it was sent, as a replica would.
        replicas[0].routing_stats = {"gpu": sorted({k for _, r, k in placed[-64:] if r == "a"})}

    sizes = router.tracked_sizes()
    recent = {(r, k) for at, r, k in placed if k and clock.now - at <= PLACEMENT_TTL_S}
    assert largest_index <= CONCURRENCY, "Ray's pending index kept routed requests"
    assert sizes["pending_by_adapter"] == rays_pending_index_size(router) <= CONCURRENCY
    assert 0 < sizes["placements"] <= len(recent)
    assert 0 < sizes["demand_adapters"] <= MAX_TRACKED_ADAPTERS
    assert len(router.policy.demand) <= router.policy.demand.max_keys
    assert sizes["cluster_view_replicas"] == 0  # no Redis view without a redis_url
    decisions = {dict(tags)["decision"] for name, tags in sink.counters}
    assert decisions <= {decision.value for decision in RoutingDecision}
    assert sum(sink.counters.values()) == REQUESTS


async def stream(outcome: int) -> AsyncGenerator[GenerationChunk, None]:
    yield GenerationChunk("r", "a", (1,))
    if outcome == 1:
        raise RuntimeError("a replica bug")
    yield GenerationChunk("r", "b", (2,), finish_reason="stop", usage=Usage(7, 2))


async def test_metric_label_sets_stay_within_their_bounds_under_steady_traffic() -> None:
    rng = random.Random(1)
    by_tenant, folded = RecordingSink(), RecordingSink()
    meters = (IngressMetrics(by_tenant), IngressMetrics(folded, tenant_label=False))
    failures = (NotFoundError("no adapter"), QuotaExceededError("full"), ValueError("bad"))

    for _ in range(REQUESTS):
        endpoint, tenant, outcome = rng.choice(ENDPOINTS), rng.choice(TENANTS), rng.randrange(4)
        for meter in meters:
            if outcome == 3:  # fails before any output
                try:
                    with meter.failures(endpoint):
                        raise rng.choice(failures)
                except Exception:
                    pass
                continue
            chunks = meter.metered(endpoint, tenant, stream(outcome))
            try:
                async for _ in chunks:
                    if outcome == 2:  # the client goes away after the first chunk
                        break
            except RuntimeError:
                pass
            finally:
                await chunks.aclose()

    for sink, tenants in ((by_tenant, len(TENANTS)), (folded, 1)):
        series: dict[str, set[tuple[tuple[str, str], ...]]] = {}
        for name, tags in sink.counters:
            series.setdefault(name, set()).add(tags)
        assert len(series["loramux_requests"]) <= len(ENDPOINTS) * len(Outcome)
        assert len(series["loramux_prompt_tokens"]) == tenants
        assert len(series["loramux_completion_tokens"]) == tenants
        assert sum(sink.counters[key] for key in sink.counters if key[0] == "loramux_requests") == (
            REQUESTS
        )
