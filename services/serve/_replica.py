"""The model deployment: each replica holds the base model, the adapter cache and the engine.

Request path: the ingress sends a :class:`GenerationRequest` with the adapter version key
as the multiplexed model id (Ray Serve's routing hint, read by the cache-aware router).
The replica checks that the hint and the request agree, then streams the engine's
chunks back. Ray's own ``@serve.multiplexed`` LRU is not used: the engine's
:class:`AdapterCache` is the cache (GPU slots <- host <- disk <- the store's blobs), and
its residency reaches the routers two ways: published to Redis on every change
(:class:`services.serve._residency.ResidencyPublisher`, with load changes coalesced), and
through :meth:`ModelReplica.record_routing_stats`, which Ray polls.

Statistics: every ``stats_period_s`` the replica sends its residency, hit rates, load
latencies and load to the :class:`StatsBoard` deployment, which ``/v1/stats`` and
``/healthz`` read. A replica is live on the board while its reports keep coming. In the
same period it records its metrics (:class:`services.api._metrics.ReplicaMetrics`); load
latencies are timed from the cache's residency events as they happen.

The engine is the backend ``settings.engine`` names (``hf`` or ``vllm``, through
:func:`services.engine.open_engine`; unset: ``vllm`` where CUDA and vLLM are, else
``hf``); routing, residency and statistics read the same whichever it is.

Failure modes: a replica whose base model does not load fails its constructor, and Ray
Serve retries it. A crashed engine loop fails the requests it held, and the next request
restarts the loop (see :class:`Engine`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from adapter_store import AdapterStore
from scheduler import ReplicaView
from scheduler import make_policy
from services._settings import ServiceSettings
from services.api._metrics import ReplicaMetrics
from services.client import LoadLatency
from services.client import ReplicaStats
from services.client import ResidentKeys
from services.client import TierCounters
from services.engine import CacheHooks
from services.engine import EngineError
from services.engine import EngineOptions
from services.engine import GenerationChunk
from services.engine import GenerationRequest
from services.engine import ResidencyEvent
from services.engine import open_engine
from services.serve._failure_log import FailureLog
from services.serve._heap import start_heap_trimmer
from services.serve._residency import ResidencyPublisher
from services.serve._router import routing_stats

__all__ = ["ModelReplica", "engine_options", "stale_after_s"]

logger = logging.getLogger(__name__)

# A replica that has not reported for this many periods is no longer counted live.
_STALE_PERIODS = 3.0
# The settings an engine takes as they are, under the same names.
_ENGINE_SETTINGS = (
    "models_dir",
    "gpu_slots",
    "max_lora_rank",
    "quantize",
    "host_budget_bytes",
    "max_batch_size",
    "max_batch_tokens",
    "max_waiting",
)
# A stats step that keeps failing is logged with its traceback at most this often.
_FAILURE_LOG_INTERVAL_S = 60.0


class ModelReplica:
    """One replica of the model deployment (see the module docstring).

    ``board`` is the :class:`StatsBoard` handle, ``None`` to report nowhere.
    """

    async def __init__(self, settings: ServiceSettings, board: DeploymentHandle | None) -> None:
        import torch

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        start_heap_trimmer()
        self._settings = settings
        self._board = board
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._store = AdapterStore.from_settings(settings.store)
        self._metrics = ReplicaMetrics()
        self._publisher = self._residency_publisher()
        disk_cache = self._store.disk_cache
        hooks = CacheHooks(
            fetch_to_disk=self._store.fetch,
            disk_keys=disk_cache.keys if disk_cache is not None else None,
            eviction_policy=make_policy(settings.routing_policy).new_eviction_policy,
            on_change=self._on_residency_change,
            on_manifest=lambda manifest: asyncio.to_thread(self._store.register_manifest, manifest),
        )
        # The base model loads here, off the event loop.
        self._engine = await asyncio.to_thread(
            open_engine, settings.engine, engine_options(settings), hooks
        )
        self._cache = self._engine.cache
        self._gpu_slots = self._engine.gpu_slots
        await self._engine.start()
        self._served = 0
        self._publisher.start()
        self._report_task = asyncio.create_task(self._report_forever())
        logger.info(
            "replica %s serves %s on engine %s (quantization %s, %d GPU slots)",
            self._replica_id,
            self._engine.facts.manifest.base_model,
            self._engine.kind,
            self._engine.facts.manifest.quantization,
            self._gpu_slots,
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream ``request``'s chunks (call with ``handle.options(stream=True)``).

        Raises:
            EngineError (500): the routing hint is not the request's adapter key, a
                bug in the caller (the ingress), not in the client's request.
            The engine's errors, as :meth:`Engine.generate` documents them.
        """
        expected = request.adapter.key if request.adapter is not None else ""
        routed = serve.get_multiplexed_model_id()
        if routed != expected:
            raise EngineError(
                f"routed as {routed!r} but the request is for {expected!r}: call with "
                "handle.options(multiplexed_model_id=request.adapter.key)"
            )
        self._publisher.load_changed()
        try:
            async for chunk in self._engine.generate(request):
                yield chunk
            self._served += 1
        finally:
            self._publisher.load_changed()

    async def record_routing_stats(self) -> dict[str, Any]:
        """Residency and load for the request router (polled by Ray's controller)."""
        return routing_stats(self._view(), at=time.time())

    def _residency_publisher(self) -> ResidencyPublisher:
        """The publisher to the store's Redis (the metadata store's URL when the
        settings name none: the embedded server)."""
        import redis.asyncio

        store = self._settings.store
        self._redis = redis.asyncio.Redis.from_url(store.redis_url or self._store.metadata.url)
        return ResidencyPublisher(
            self._redis,
            key_prefix=store.key_prefix,
            replica_id=self._replica_id,
            view=self._view,
            staleness_bound_s=self._settings.view_staleness_bound_s,
        )

    def _on_residency_change(self, event: ResidencyEvent) -> None:
        self._metrics.on_residency_change(event)
        self._publisher.residency_changed()

    def _view(self) -> ReplicaView:
        residency = self._cache.residency()
        # Slots that cannot be reused now: adapters held or awaited by a request, and
        # loads in progress (each will take a slot).
        busy = {key for key, count in residency.pinned.items() if count > 0}
        busy |= residency.loading.keys()
        return ReplicaView(
            self._replica_id,
            gpu=set(residency.gpu.values()),
            host=set(residency.host),
            disk=set(residency.disk),
            loading=set(residency.loading),
            in_flight=self._engine.num_running,
            queued=self._engine.num_waiting,
            gpu_slots=self._gpu_slots,
            pinned=min(len(busy), self._gpu_slots),
        )

    def stats(self) -> ReplicaStats:
        """What ``/v1/stats`` shows of this replica."""
        residency = self._cache.residency()
        cache = self._cache.stats()
        return ReplicaStats(
            replica_id=self._replica_id,
            residency=ResidentKeys(
                gpu=sorted(residency.gpu.values()),
                host=sorted(residency.host),
                disk=sorted(residency.disk),
                loading=sorted(residency.loading),
                pinned=sorted(key for key, count in residency.pinned.items() if count > 0),
            ),
            gpu_slots=self._gpu_slots,
            engine=self._engine.kind,
            quantization=self._engine.facts.manifest.quantization,
            base_model_bytes=self._engine.facts.weight_bytes,
            base_model_full_bytes=self._engine.facts.full_precision_bytes,
            in_flight=self._engine.num_running,
            queued=self._engine.num_waiting,
            requests_served=self._served,
            tiers={
                tier.name.lower(): TierCounters(
                    hits=t.hits, misses=t.misses, hit_ratio=t.hit_ratio, evictions=t.evictions
                )
                for tier, t in cache.tiers.items()
            },
            loads={
                # Keyed by where a load step starts: none = object store, disk, host.
                f"from_{tier.name.lower()}": LoadLatency(
                    count=s.count, mean_s=s.mean_s, p50_s=s.p50_s, p99_s=s.p99_s
                )
                for tier, s in cache.load_latency.items()
            },
            load_errors={tier.name.lower(): n for tier, n in cache.errors.items()},
            coalesced_loads=cache.coalesced,
        )

    async def _report_forever(self) -> None:
        """Every period: record the metrics, and send :meth:`stats` to the board.

        Each step that fails (a bug, an unreachable board) is logged and tried again
        next period; neither stops the other or the loop, since a replica whose loop
        died would drop off the board (``/healthz`` 503) while still serving.
        """
        failures = FailureLog(logger, _FAILURE_LOG_INTERVAL_S)
        while True:
            with failures.suppressed("recording the replica metrics"):
                self._metrics.record(
                    self._cache.stats(),
                    self._cache.residency(),
                    gpu_slots=self._gpu_slots,
                    running=self._engine.num_running,
                    queued=self._engine.num_waiting,
                )
            if self._board is not None:
                with failures.suppressed("reporting stats to the board"):
                    await self._board.report.remote(self._replica_id, self.stats())
            await asyncio.sleep(self._settings.stats_period_s)

    async def __del__(self) -> None:
        self._report_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._report_task
        await self._publisher.aclose()
        await self._redis.aclose()
        await self._engine.aclose()  # its adapter cache too
        self._store.close()


def engine_options(settings: ServiceSettings) -> EngineOptions:
    """What each replica's engine is built from (the backend is ``settings.engine``):
    the settings of the same names, and the base model as the settings resolve it."""
    return EngineOptions(
        base_model=settings.base_model_dir or "tiny",
        name=settings.base_model_id,
        **{name: getattr(settings, name) for name in _ENGINE_SETTINGS},
    )


def stale_after_s(settings: ServiceSettings) -> float:
    """How old a replica's last report may be for the board to count it live."""
    return _STALE_PERIODS * settings.stats_period_s + 5.0
