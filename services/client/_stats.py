"""Wire models of the service's statistics: what a replica reports, what ``/v1/stats``
answers. The replica builds :class:`ReplicaStats`, the stats board keeps them, the API
filters and answers them, and the dashboard, the CLI and the SDK read the same classes.

A tenant's key sees only a replica's configuration and its own residency: the
counters (``in_flight`` to ``coalesced_loads``) are ``None`` there and left out of the
JSON, since they sum every tenant's traffic.
"""

from __future__ import annotations

from pydantic import BaseModel
from pydantic import ConfigDict

from services.client._models import TenantLimitsInfo
from services.client._models import TenantUsage

__all__ = [
    "AdapterCounters",
    "LoadLatency",
    "ReplicaStats",
    "ResidentKeys",
    "ServiceStats",
    "TierCounters",
]


class _Stats(BaseModel):
    # Ignore unknown fields: a newer server may report more than this SDK knows.
    model_config = ConfigDict(extra="ignore")


class ResidentKeys(_Stats):
    """Adapter keys (``tenant/name@version``) by where they are on one replica, sorted;
    ``pinned`` are those in use by a running request."""

    gpu: list[str] = []
    host: list[str] = []
    disk: list[str] = []
    loading: list[str] = []
    pinned: list[str] = []


class TierCounters(_Stats):
    """Lookups of one cache tier since the replica started."""

    hits: int
    misses: int
    hit_ratio: float
    evictions: int


class LoadLatency(_Stats):
    """Load steps that start at one tier: ``count`` of all, the rest (seconds) over the
    recent window (see :func:`scheduler.percentile`)."""

    count: int
    mean_s: float
    p50_s: float
    p99_s: float


class ReplicaStats(_Stats):
    """One model replica's report (``tiers`` by ``gpu``/``host``/``disk``; ``loads`` by
    where the load step started: ``from_none`` is the object store)."""

    replica_id: str
    residency: ResidentKeys
    gpu_slots: int
    engine: str | None = None
    """The backend that serves it: ``hf`` or ``vllm``."""
    quantization: str | None = None
    # What the base's weights hold, and one full fine-tuned copy's size (the unquantized
    # weights), for the dashboard's storage comparison.
    base_model_bytes: int | None = None
    base_model_full_bytes: int | None = None
    in_flight: int | None = None
    queued: int | None = None
    requests_served: int | None = None
    tiers: dict[str, TierCounters] | None = None
    loads: dict[str, LoadLatency] | None = None
    load_errors: dict[str, int] | None = None
    coalesced_loads: int | None = None

    def for_tenant(self, tenant: str) -> ReplicaStats:
        """What ``tenant``'s key may see: configuration and its own residency only.

        Built from an allow-list, so a counter added to the report later stays hidden.
        """
        prefix = f"{tenant}/"
        own = {
            tier: [key for key in keys if key.startswith(prefix)]
            for tier, keys in self.residency.model_dump().items()
        }
        return ReplicaStats(
            replica_id=self.replica_id,
            gpu_slots=self.gpu_slots,
            engine=self.engine,
            quantization=self.quantization,
            base_model_bytes=self.base_model_bytes,
            base_model_full_bytes=self.base_model_full_bytes,
            residency=ResidentKeys(**own),
        )


class AdapterCounters(_Stats):
    """One adapter's requests and when it was last used (epoch seconds)."""

    requests: int
    last_used_at: float | None = None


class ServiceStats(_Stats):
    """``GET /v1/stats``. The admin key gets every replica's full report, ``tenants``
    (every tenant's usage) and ``tenant_limits`` (every tenant's request limits); a
    tenant key gets the replicas cut down (:meth:`ReplicaStats.for_tenant`), its own
    ``tenant`` usage, ``limits`` and ``adapters``."""

    replicas: list[ReplicaStats]
    tenants: dict[str, TenantUsage] | None = None
    tenant_limits: dict[str, TenantLimitsInfo] | None = None
    tenant: TenantUsage | None = None
    limits: TenantLimitsInfo | None = None
    adapters: dict[str, AdapterCounters] | None = None
