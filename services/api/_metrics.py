"""The service's Prometheus metrics: every one is defined here, in :data:`METRICS`.

They are recorded with ``ray.serve.metrics``, so Ray exports them on each node's metrics
endpoint (``http://NODE:METRICS_EXPORT_PORT/metrics``) with a ``ray_`` prefix, and Ray
Serve adds the ``deployment``, ``replica`` and ``application`` labels when the recording
process is a Serve replica. Counters are exported with a ``_total`` suffix; histograms
as ``_bucket``, ``_count`` and ``_sum``. :func:`exported_names` lists the names Prometheus
sees; ``docs/metrics.md`` documents each one.

Who records what:

* :class:`ReplicaMetrics` (each model replica): cache lookups, evictions, load errors
  and gauges from periodic :class:`CacheStats` diffs, and load latencies from the
  cache's :class:`ResidencyEvent` stream (the time each load step took);
* :class:`IngressMetrics` (each ingress replica): requests by endpoint and outcome,
  tokens per tenant, bytes pushed;
* :class:`RoutingMetrics` (the request router, which runs inside the process holding
  the model deployment's handle, i.e. the ingress replicas): one count per placement,
  classified by :func:`classify_routing`.

Cardinality: every label takes a fixed set of values (tiers, outcomes, endpoints,
decision kinds), except ``tenant`` on the two token counters, which takes one value per
tenant (tenants are created by the admin only). ``ServiceSettings.metrics_tenant_label =
False`` (``LORAMUX_METRICS_TENANT_LABEL=false``) folds every tenant into ``tenant="*"``.
No metric has a per-adapter label.

Recording goes through a :class:`MetricSink` (by default :class:`RaySink`, which makes
the Ray metric objects in the recording process on first use); tests pass their own.
A sink that raises is a bug, not a runtime condition: recording never does I/O.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import AsyncGenerator
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from typing import Literal
from typing import Protocol

from scheduler import ReplicaView
from scheduler import Tier
from services.api._errors import status_of
from services.engine import AdapterState
from services.engine import CacheStats
from services.engine import GenerationChunk
from services.engine import Residency
from services.engine import ResidencyEvent
from services.engine import Usage

__all__ = [
    "LOAD_SECONDS_BUCKETS",
    "METRICS",
    "IngressMetrics",
    "MetricSink",
    "MetricSpec",
    "Outcome",
    "RaySink",
    "ReplicaMetrics",
    "RoutingDecision",
    "RoutingMetrics",
    "classify_routing",
    "exported_names",
    "outcome_of",
    "routing_decision_counts",
]

MetricKind = Literal["counter", "gauge", "histogram"]

LOAD_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Load-latency buckets: a host-to-GPU copy takes milliseconds, an S3 fetch seconds."""

ALL_TENANTS = "*"
"""The ``tenant`` label value when per-tenant labels are turned off."""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its name as recorded (Prometheus adds ``ray_`` and suffixes)."""

    name: str
    kind: MetricKind
    description: str
    labels: tuple[str, ...] = ()


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "loramux_requests",
        "counter",
        "API requests by endpoint (completions, chat_completions, push) and outcome.",
        ("endpoint", "outcome"),
    ),
    MetricSpec(
        "loramux_prompt_tokens",
        "counter",
        "Prompt tokens of finished generation requests, by tenant.",
        ("tenant",),
    ),
    MetricSpec(
        "loramux_completion_tokens",
        "counter",
        "Generated tokens of finished generation requests, by tenant.",
        ("tenant",),
    ),
    MetricSpec(
        "loramux_pushed_bytes",
        "counter",
        "Bytes of adapter versions stored by successful pushes.",
    ),
    MetricSpec(
        "loramux_cache_lookups",
        "counter",
        "Adapter cache lookups by tier (gpu, host, disk) and result (hit, miss).",
        ("tier", "result"),
    ),
    MetricSpec(
        "loramux_cache_evictions",
        "counter",
        "Adapters evicted from a replica's tier (gpu, host).",
        ("tier",),
    ),
    MetricSpec(
        "loramux_adapter_load_errors",
        "counter",
        "Failed adapter loads by the tier they were loading into.",
        ("tier",),
    ),
    MetricSpec(
        "loramux_adapter_load_seconds",
        "histogram",
        "Duration of one adapter load step by source tier: store (object store to "
        "disk), disk (disk to host memory), host (host memory to a GPU slot).",
        ("source",),
    ),
    MetricSpec(
        "loramux_resident_adapters",
        "gauge",
        "Adapters a replica holds, by tier (gpu, host, disk, loading).",
        ("tier",),
    ),
    MetricSpec(
        "loramux_gpu_slots",
        "gauge",
        "GPU adapter slots of a replica (the capacity of its gpu tier).",
    ),
    MetricSpec(
        "loramux_running_requests",
        "gauge",
        "Requests a replica's engine is batching now.",
    ),
    MetricSpec(
        "loramux_queued_requests",
        "gauge",
        "Requests a replica holds that are not in its batch yet (queue depth).",
    ),
    MetricSpec(
        "loramux_routing_decisions",
        "counter",
        "Requests placed by the router, by decision (base, resident, warm, cold, "
        "spilled, replicated).",
        ("decision",),
    ),
)

_SPECS = {spec.name: spec for spec in METRICS}
_SUFFIXES: dict[MetricKind, tuple[str, ...]] = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
}


def exported_names(prefix: str = "ray_") -> set[str]:
    """Every series name Prometheus scrapes from Ray for :data:`METRICS`."""
    return {f"{prefix}{spec.name}{suffix}" for spec in METRICS for suffix in _SUFFIXES[spec.kind]}


class MetricSink(Protocol):
    """Where measurements go; ``name`` is a :data:`METRICS` name, ``tags`` its labels."""

    def inc(self, name: str, value: float, tags: dict[str, str]) -> None: ...

    def set(self, name: str, value: float, tags: dict[str, str]) -> None: ...

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None: ...


class RaySink:
    """Records through ``ray.serve.metrics``.

    The Ray metric objects are made once per process, on first use, so that importing
    this module or making a sink registers nothing with Ray. Outside a Serve replica
    the Serve labels are absent; without ``ray.init`` recording does nothing.
    """

    def inc(self, name: str, value: float, tags: dict[str, str]) -> None:
        if value:
            _instrument(name).inc(value, tags=tags)

    def set(self, name: str, value: float, tags: dict[str, str]) -> None:
        _instrument(name).set(value, tags=tags)

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        _instrument(name).observe(value, tags=tags)


@functools.cache
def _instrument(name: str) -> Any:
    from ray.serve import metrics

    spec = _SPECS[name]
    if spec.kind == "histogram":
        return metrics.Histogram(name, spec.description, list(LOAD_SECONDS_BUCKETS), spec.labels)
    kind = metrics.Counter if spec.kind == "counter" else metrics.Gauge
    return kind(name, spec.description, spec.labels)


# --------------------------------------------------------------------------- replica

# Each load step, by the state it runs in: the source tier label of its duration.
_STEP_SOURCE = {
    AdapterState.FETCHING: "store",
    AdapterState.LOADING_HOST: "disk",
    AdapterState.ACTIVATING: "host",
}
# The states that end each step successfully.
_STEP_DONE = {
    AdapterState.FETCHING: {AdapterState.LOADING_HOST, AdapterState.ON_DISK},
    AdapterState.LOADING_HOST: {AdapterState.IN_HOST},
    AdapterState.ACTIVATING: {AdapterState.IN_GPU},
}
_LOOKUP_TIERS = (Tier.GPU, Tier.HOST, Tier.DISK)


@dataclass(slots=True)
class _Step:
    state: AdapterState
    started: float
    # A fetch that found the adapter on disk is part of the disk step that follows, as
    # in CacheStats.load_latency.
    carried_s: float = 0.0
    from_disk: bool = False


class ReplicaMetrics:
    """A model replica's cache and queue metrics.

    Pass :meth:`on_residency_change` as the :class:`AdapterCache`'s ``on_change`` (it
    times each load step from the events), and call :meth:`record` periodically with
    the cache's stats and residency: counters advance by the difference since the
    previous call, gauges take the current values. Call both on the cache's loop.
    """

    def __init__(self, sink: MetricSink | None = None) -> None:
        self._sink = sink or RaySink()
        self._steps: dict[str, _Step] = {}
        self._last: CacheStats | None = None

    def on_residency_change(self, event: ResidencyEvent) -> None:
        """Observe the duration of the load step ``event`` ends, if it ends one well."""
        step = self._steps.pop(event.key, None)
        carried_s = 0.0
        if step is not None and event.error is None and event.state in _STEP_DONE[step.state]:
            elapsed = event.at - step.started + step.carried_s
            if step.from_disk:
                carried_s = elapsed
            else:
                source = _STEP_SOURCE[step.state]
                self._sink.observe("loramux_adapter_load_seconds", elapsed, {"source": source})
        if event.state in _STEP_SOURCE:
            from_disk = (
                event.state is AdapterState.FETCHING and event.previous is AdapterState.ON_DISK
            )
            self._steps[event.key] = _Step(event.state, event.at, carried_s, from_disk)

    def record(
        self,
        stats: CacheStats,
        residency: Residency,
        *,
        gpu_slots: int,
        running: int,
        queued: int,
    ) -> None:
        """Advance the counters to ``stats`` and set the gauges."""
        last = self._last
        for tier in _LOOKUP_TIERS:
            now = stats.tiers[tier]
            before = last.tiers[tier] if last is not None else None
            label = tier.name.lower()
            lookups = (
                ("hit", now.hits, before.hits if before else 0),
                ("miss", now.misses, before.misses if before else 0),
            )
            for result, count, previous in lookups:
                self._sink.inc(
                    "loramux_cache_lookups", count - previous, {"tier": label, "result": result}
                )
            if tier is not Tier.DISK:  # the disk cache evicts on its own; always 0 here
                previous = 0 if before is None else before.evictions
                self._sink.inc("loramux_cache_evictions", now.evictions - previous, {"tier": label})
            errors = stats.errors.get(tier, 0) - (last.errors.get(tier, 0) if last else 0)
            self._sink.inc("loramux_adapter_load_errors", errors, {"tier": label})
        self._last = stats
        counts = {
            "gpu": len(residency.gpu),
            "host": len(residency.host),
            "disk": len(residency.disk),
            "loading": len(residency.loading),
        }
        for tier_name, count in counts.items():
            self._sink.set("loramux_resident_adapters", count, {"tier": tier_name})
        self._sink.set("loramux_gpu_slots", gpu_slots, {})
        self._sink.set("loramux_running_requests", running, {})
        self._sink.set("loramux_queued_requests", queued, {})


# --------------------------------------------------------------------------- ingress


class Outcome(StrEnum):
    """How an API request ended; the ``outcome`` label."""

    OK = "ok"
    INVALID = "invalid"  # 400, 413, 422
    DENIED = "denied"  # 401, 403
    NOT_FOUND = "not_found"  # 404
    CONFLICT = "conflict"  # 409
    QUOTA = "quota"  # 429
    UNAVAILABLE = "unavailable"  # 503: no replica, overloaded, a failed adapter load
    ERROR = "error"  # any other 5xx
    CANCELLED = "cancelled"  # the client went away first


_OUTCOME_OF_STATUS = {
    400: Outcome.INVALID,
    413: Outcome.INVALID,
    422: Outcome.INVALID,
    401: Outcome.DENIED,
    403: Outcome.DENIED,
    404: Outcome.NOT_FOUND,
    409: Outcome.CONFLICT,
    429: Outcome.QUOTA,
    503: Outcome.UNAVAILABLE,
}


def outcome_of(error: BaseException) -> Outcome:
    """The outcome a request failing with ``error`` answers (as the API maps it)."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return Outcome.CANCELLED
    return _OUTCOME_OF_STATUS.get(status_of(error), Outcome.ERROR)


class IngressMetrics:
    """The API's request, token and push metrics (one per ingress replica).

    ``tenant_label=False`` records every tenant's tokens as ``tenant="*"``.
    """

    def __init__(self, sink: MetricSink | None = None, *, tenant_label: bool = True) -> None:
        self._sink = sink or RaySink()
        self._tenant_label = tenant_label

    def request(self, endpoint: str, outcome: Outcome) -> None:
        self._sink.inc("loramux_requests", 1, {"endpoint": endpoint, "outcome": outcome.value})

    @contextlib.contextmanager
    def failures(self, endpoint: str) -> Iterator[None]:
        """Count a request that fails inside the block by its outcome, and re-raise."""
        try:
            yield
        except BaseException as error:
            self.request(endpoint, outcome_of(error))
            raise

    def pushed(self, size_bytes: int) -> None:
        """A push stored a version of ``size_bytes``."""
        self.request("push", Outcome.OK)
        self._sink.inc("loramux_pushed_bytes", size_bytes, {})

    def tokens(self, tenant: str, usage: Usage) -> None:
        tags = {"tenant": tenant if self._tenant_label else ALL_TENANTS}
        self._sink.inc("loramux_prompt_tokens", usage.prompt_tokens, tags)
        self._sink.inc("loramux_completion_tokens", usage.completion_tokens, tags)

    async def metered(
        self, endpoint: str, tenant: str, chunks: AsyncGenerator[GenerationChunk, None]
    ) -> AsyncGenerator[GenerationChunk, None]:
        """``chunks``, counting the request's outcome and tokens when the stream ends.

        A stream closed before its end (the client went away) counts as cancelled.
        """
        try:
            async for chunk in chunks:
                if chunk.usage is not None:
                    self.tokens(tenant, chunk.usage)
                yield chunk
        except BaseException as error:
            self.request(endpoint, outcome_of(error))
            raise
        finally:
            await chunks.aclose()
        self.request(endpoint, Outcome.OK)


# --------------------------------------------------------------------------- router


class RoutingDecision(StrEnum):
    """What kind of placement the router made; the ``decision`` label."""

    BASE = "base"  # the base model alone: no adapter
    RESIDENT = "resident"  # the chosen replica holds it on GPU or is loading it
    WARM = "warm"  # no replica holds it on GPU; the chosen one has it in host or disk
    COLD = "cold"  # no replica holds it anywhere fast: a load from the object store
    SPILLED = "spilled"  # another replica holds it on GPU but is too loaded
    REPLICATED = "replicated"  # a new GPU copy of a hot adapter (more than one home)


def classify_routing(
    key: str, chosen: ReplicaView, others: Iterable[ReplicaView], *, home_count: int = 1
) -> RoutingDecision:
    """The kind of placement of adapter ``key`` on ``chosen``.

    ``others`` are the router's views of the other replicas and ``home_count`` how many
    homes the policy gives ``key`` now (1 for policies without replication): a load
    while another replica holds the adapter on GPU is a replication when the adapter
    has several homes, else a spill.
    """
    if not key:
        return RoutingDecision.BASE
    tier = chosen.tier_of(key)
    if tier in (Tier.GPU, Tier.LOADING):
        return RoutingDecision.RESIDENT
    if any(key in view.gpu or key in view.loading for view in others):
        return RoutingDecision.REPLICATED if home_count >= 2 else RoutingDecision.SPILLED
    return RoutingDecision.WARM if tier in (Tier.HOST, Tier.DISK) else RoutingDecision.COLD


class RoutingMetrics:
    """The router's placement counts (one per router)."""

    def __init__(self, sink: MetricSink | None = None) -> None:
        self._sink = sink or RaySink()

    def routed(self, decision: RoutingDecision) -> None:
        self._sink.inc("loramux_routing_decisions", 1, {"decision": decision.value})
        _ROUTED_IN_PROCESS[decision.value] += 1


# Placements by every router in this process (an ingress replica's), for the built-in
# dashboard, which runs in the same process and cannot read the exported counter back.
_ROUTED_IN_PROCESS: collections.Counter[str] = collections.Counter()


def routing_decision_counts() -> dict[str, int]:
    """Placements by :class:`RoutingDecision` value made in this process so far."""
    return dict(_ROUTED_IN_PROCESS)
