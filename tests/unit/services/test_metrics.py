"""The metrics module: names, load timing from cache events, stats diffs, outcomes, routing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from adapter_store.exceptions import NotFoundError
from adapter_store.exceptions import QuotaExceededError
from scheduler import ReplicaView
from scheduler import Tier
from services.api._metrics import METRICS
from services.api._metrics import IngressMetrics
from services.api._metrics import Outcome
from services.api._metrics import ReplicaMetrics
from services.api._metrics import RoutingDecision
from services.api._metrics import classify_routing
from services.api._metrics import exported_names
from services.api._metrics import outcome_of
from services.engine import AdapterState
from services.engine import CacheStats
from services.engine import GenerationChunk
from services.engine import Residency
from services.engine import ResidencyEvent
from services.engine import TierStats
from services.engine import Usage
from services.engine.exceptions import AdapterLoadError

DOCS = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


class RecordingSink:
    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.observations: list[tuple[str, float, dict[str, str]]] = []

    def inc(self, name: str, value: float, tags: dict[str, str]) -> None:
        key = (name, tuple(sorted(tags.items())))
        self.counters[key] = self.counters.get(key, 0) + value

    def set(self, name: str, value: float, tags: dict[str, str]) -> None:
        self.gauges[(name, tuple(sorted(tags.items())))] = value

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        self.observations.append((name, value, tags))

    def counter(self, name: str, **tags: str) -> float:
        return self.counters.get((name, tuple(sorted(tags.items()))), 0)


def event(key: str, state: AdapterState, previous: AdapterState, at: float, **kw) -> ResidencyEvent:
    return ResidencyEvent(key, state, previous, at, **kw)


def test_every_metric_is_documented_with_its_exported_name() -> None:
    text = DOCS.read_text()
    documented = set(re.findall(r"`(ray_loramux_\w+)`", text))
    for spec in METRICS:
        suffix = {"counter": "_total", "gauge": "", "histogram": "_bucket"}[spec.kind]
        assert f"ray_{spec.name}{suffix}" in documented, spec.name
    assert documented <= exported_names()


def test_exported_names_add_the_ray_prefix_and_the_kind_suffixes() -> None:
    names = exported_names()
    assert "ray_loramux_requests_total" in names
    assert "ray_loramux_resident_adapters" in names
    assert {
        "ray_loramux_adapter_load_seconds_bucket",
        "ray_loramux_adapter_load_seconds_count",
        "ray_loramux_adapter_load_seconds_sum",
    } <= names
    assert len({spec.name for spec in METRICS}) == len(METRICS)


def timed_loads(*events: ResidencyEvent) -> list[tuple[float, str]]:
    """The load times ``events`` make the replica's metrics observe, with their source."""
    sink = RecordingSink()
    metrics = ReplicaMetrics(sink)
    for e in events:
        metrics.on_residency_change(e)
    return [(o[1], o[2]["source"]) for o in sink.observations]


def test_a_cold_load_is_timed_per_step_by_source_tier() -> None:
    assert timed_loads(
        event("a", AdapterState.FETCHING, AdapterState.ABSENT, 1.0),
        event("a", AdapterState.LOADING_HOST, AdapterState.FETCHING, 3.0),
        event("a", AdapterState.IN_HOST, AdapterState.LOADING_HOST, 3.5),
        event("a", AdapterState.ACTIVATING, AdapterState.IN_HOST, 3.5, slot=0),
        event("a", AdapterState.IN_GPU, AdapterState.ACTIVATING, 3.75, slot=0),
    ) == [
        (2.0, "store"),
        (0.5, "disk"),
        (0.25, "host"),
    ]


def test_a_load_from_disk_counts_its_lookup_in_the_disk_step() -> None:
    assert timed_loads(
        event("a", AdapterState.FETCHING, AdapterState.ON_DISK, 1.0),
        event("a", AdapterState.LOADING_HOST, AdapterState.FETCHING, 1.25),
        event("a", AdapterState.IN_HOST, AdapterState.LOADING_HOST, 2.0),
    ) == [(1.0, "disk")]


def test_a_failed_load_step_is_not_timed() -> None:
    assert (
        timed_loads(
            event("a", AdapterState.FETCHING, AdapterState.ABSENT, 1.0),
            event("a", AdapterState.ERRORED, AdapterState.FETCHING, 2.0, error="boom"),
        )
        == []
    )


def stats(gpu: tuple[int, int, int], host: tuple[int, int, int], errors: int) -> CacheStats:
    return CacheStats(
        tiers={
            Tier.GPU: TierStats(*gpu, waits=0),
            Tier.HOST: TierStats(*host, waits=0),
            Tier.DISK: TierStats(0, 1, 0, 0),
        },
        load_latency={},
        errors={Tier.GPU: 0, Tier.HOST: errors, Tier.DISK: 0},
        coalesced=0,
        prefetches=0,
        prefetches_dropped=0,
    )


def test_record_advances_counters_by_the_difference_and_sets_gauges() -> None:
    sink = RecordingSink()
    metrics = ReplicaMetrics(sink)
    residency = Residency(
        gpu={0: "t/a@1"}, host=["t/a@1", "t/b@1"], disk=[], loading={"t/c@1": Tier.HOST}, pinned={}
    )
    metrics.record(stats((5, 2, 1), (1, 1, 0), 0), residency, gpu_slots=4, running=3, queued=2)
    metrics.record(stats((9, 3, 2), (2, 1, 0), 1), residency, gpu_slots=4, running=1, queued=0)
    assert sink.counter("loramux_cache_lookups", tier="gpu", result="hit") == 9
    assert sink.counter("loramux_cache_lookups", tier="gpu", result="miss") == 3
    assert sink.counter("loramux_cache_lookups", tier="host", result="hit") == 2
    assert sink.counter("loramux_cache_lookups", tier="disk", result="miss") == 1
    assert sink.counter("loramux_cache_evictions", tier="gpu") == 2
    assert sink.counter("loramux_adapter_load_errors", tier="host") == 1
    assert sink.gauges[("loramux_resident_adapters", (("tier", "host"),))] == 2
    assert sink.gauges[("loramux_resident_adapters", (("tier", "loading"),))] == 1
    assert sink.gauges[("loramux_running_requests", ())] == 1
    assert sink.gauges[("loramux_queued_requests", ())] == 0
    assert sink.gauges[("loramux_gpu_slots", ())] == 4


def test_outcomes_follow_the_api_status_of_the_error() -> None:
    assert outcome_of(NotFoundError("no such adapter")) is Outcome.NOT_FOUND
    assert outcome_of(QuotaExceededError("full")) is Outcome.QUOTA
    assert outcome_of(AdapterLoadError("s3 down")) is Outcome.UNAVAILABLE
    assert outcome_of(RuntimeError("bug")) is Outcome.ERROR
    assert outcome_of(asyncio.CancelledError()) is Outcome.CANCELLED


async def chunks(fail: bool = False) -> AsyncGenerator[GenerationChunk, None]:
    yield GenerationChunk("r", "Hel", (1,))
    if fail:
        raise AdapterLoadError("s3 down")
    yield GenerationChunk("r", "lo", (2,), finish_reason="stop", usage=Usage(5, 2))


async def test_a_finished_stream_counts_ok_and_the_tenants_tokens() -> None:
    sink = RecordingSink()
    meter = IngressMetrics(sink)
    assert len([c async for c in meter.metered("completions", "acme", chunks())]) == 2
    assert sink.counter("loramux_requests", endpoint="completions", outcome="ok") == 1
    assert sink.counter("loramux_prompt_tokens", tenant="acme") == 5
    assert sink.counter("loramux_completion_tokens", tenant="acme") == 2


async def test_a_stream_that_fails_or_is_closed_early_counts_its_outcome() -> None:
    sink = RecordingSink()
    meter = IngressMetrics(sink, tenant_label=False)
    with pytest.raises(AdapterLoadError):
        _ = [c async for c in meter.metered("completions", "acme", chunks(fail=True))]
    stream = meter.metered("chat_completions", "acme", chunks())
    await anext(stream)
    await stream.aclose()
    assert sink.counter("loramux_requests", endpoint="completions", outcome="unavailable") == 1
    assert sink.counter("loramux_requests", endpoint="chat_completions", outcome="cancelled") == 1
    assert sink.counter("loramux_requests", endpoint="chat_completions", outcome="ok") == 0


def test_failures_before_the_stream_and_pushes_are_counted() -> None:
    sink = RecordingSink()
    meter = IngressMetrics(sink)
    with pytest.raises(NotFoundError), meter.failures("completions"):
        raise NotFoundError("no adapter 'x'")
    meter.pushed(1234)
    assert sink.counter("loramux_requests", endpoint="completions", outcome="not_found") == 1
    assert sink.counter("loramux_requests", endpoint="push", outcome="ok") == 1
    assert sink.counter("loramux_pushed_bytes") == 1234


def test_routing_decisions_are_classified_by_residency_and_homes() -> None:
    key = "t/a@1"
    holder = ReplicaView("r1", gpu={key})
    warm = ReplicaView("r2", host={key})
    empty = ReplicaView("r3")
    assert classify_routing("", empty, [holder]) is RoutingDecision.BASE
    assert classify_routing(key, holder, [empty]) is RoutingDecision.RESIDENT
    assert classify_routing(key, ReplicaView("r4", loading={key}), []) is RoutingDecision.RESIDENT
    assert classify_routing(key, empty, [holder]) is RoutingDecision.SPILLED
    assert classify_routing(key, empty, [holder], home_count=2) is RoutingDecision.REPLICATED
    assert classify_routing(key, warm, [empty]) is RoutingDecision.WARM
    assert classify_routing(key, empty, [warm]) is RoutingDecision.COLD


async def test_the_router_counts_each_placement_by_kind() -> None:
    from services.api._metrics import RoutingMetrics
    from tests.unit.services.test_router import KEY
    from tests.unit.services.test_router import Clock
    from tests.unit.services.test_router import FakeReplica
    from tests.unit.services.test_router import make_router
    from tests.unit.services.test_router import request

    sink = RecordingSink()
    router = make_router(Clock())
    router._metrics = RoutingMetrics(sink)
    holder, other = FakeReplica("a", {"gpu": [KEY]}), FakeReplica("b")
    router.update_replicas([holder, other])

    for key, replica in (
        (KEY, holder),
        (KEY, other),  # another replica holds it on GPU: a spill (no replication here)
        (KEY, other),  # the spill's load is now in flight there
        ("", holder),
        ("acme/cold@1", holder),
    ):
        router.on_request_routed(request(key), replica.replica_id, result=None)

    counts = {
        d.value: sink.counter("loramux_routing_decisions", decision=d.value)
        for d in RoutingDecision
    }
    assert counts == {"base": 1, "resident": 2, "warm": 0, "cold": 1, "spilled": 1, "replicated": 0}
