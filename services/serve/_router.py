"""The Ray Serve request router that places each request with a :class:`PlacementPolicy`.

Routing key: the request's multiplexed model id, which the ingress sets to the adapter
version key (``tenant/name@version``) with
``handle.options(multiplexed_model_id=key)``; an empty id means the base model alone.

What the router knows about each replica, merged into one :class:`ReplicaView`:

* the replica's residency and load, from the fresher of two sources, compared by
  timestamp: the :class:`ClusterView` this router keeps from the replicas' Redis events
  (when ``redis_url_env`` names a set environment variable;
  :class:`services.serve._residency.ResidencySubscriber`,
  updated as events arrive, at most ``staleness_bound_s`` old while Redis works), and
  the replica's own report, returned by its ``record_routing_stats`` method (build it
  with :func:`routing_stats`, stamped ``at``). Ray's controller polls that every
  ``RequestRouterConfig.request_routing_stats_period_s`` and broadcasts it to every
  router as ``RunningReplica.routing_stats``, so it lags by up to that period plus a
  controller round. ``pinned`` always comes from the report;
* Ray's multiplexed model ids (loaded or loading under ``@serve.multiplexed``), pushed by
  the replica every 0.1 s; counted as GPU-resident;
* Ray's queue length cache (updated on every send, rejection reply and completion),
  which replaces the reported ``in_flight``/``queued`` when it holds a fresh entry;
* this router's own recent placements: a key sent to a replica that did not report it
  is counted as ``loading`` there until the replica reports it or
  ``placement_ttl_s`` passes, so a burst for a cold adapter is not scattered while the
  replica's next report is on its way.

Each accepted placement is counted by kind (resident, warm, cold, spilled, replicated,
base) in ``loramux_routing_decisions`` (:mod:`services.api._metrics`); the router runs in the
process holding the handle (the ingress replicas), whose Serve labels the count carries.

Memory (everything here grows with traffic only up to a bound; ``docs/architecture.md``
lists them): the placements are dropped when they expire or the replica reports them;
the demand tracker keeps at most ``max_tracked_adapters`` adapters; and Ray's own index
of pending requests by model id is pruned on every routing call (see
:meth:`CacheAwareRequestRouter.forget_routed_requests`).

Failure modes: a replica that never reports routing stats is seen with empty tiers
(and placed by load only). A policy that raises would kill Ray's routing task, which Ray
restarts at once, in a tight loop that never routes the request; so the router catches
the error, logs it (at most once a minute) and offers all candidates as one group,
which Ray serves least-loaded first.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from collections.abc import Mapping
from typing import Any

from ray.serve.request_router import PendingRequest
from ray.serve.request_router import ReplicaID
from ray.serve.request_router import ReplicaResult
from ray.serve.request_router import RequestRouter
from ray.serve.request_router import RunningReplica

from scheduler import AdapterDemand
from scheduler import ClusterView
from scheduler import DemandTracker
from scheduler import PlacementPolicy
from scheduler import ReplicaView
from scheduler import Tier
from scheduler import make_policy
from services.api._metrics import RoutingMetrics
from services.api._metrics import classify_routing
from services.serve._failure_log import FailureLog

__all__ = [
    "DEFAULT_MAX_TRACKED_ADAPTERS",
    "DEFAULT_PLACEMENT_TTL_S",
    "CacheAwareRequestRouter",
    "replica_view_from_stats",
    "routing_stats",
]

logger = logging.getLogger(__name__)

DEFAULT_PLACEMENT_TTL_S = 10.0
"""How long a placement counts as ``loading`` on its replica without the replica's report."""

DEFAULT_MAX_TRACKED_ADAPTERS = 100_000
"""How many adapters' request rates a router keeps (the coldest half is forgotten past it)."""

_TIERS = ("gpu", "host", "disk", "loading")
_POLICY_ERROR_LOG_INTERVAL_S = 60.0
_VIEW_LOG_INTERVAL_S = 60.0
_DEFAULT_GPU_SLOTS = ReplicaView("").gpu_slots


def routing_stats(view: ReplicaView, *, at: float | None = None) -> dict[str, Any]:
    """What a replica's ``record_routing_stats`` returns: its residency and load.

    The inverse of :func:`replica_view_from_stats` (less the replica id, which the router
    knows). Lists are sorted so an unchanged residency gives an equal dict. ``at`` (Unix
    seconds, when the replica took these stats) lets a router that also follows Redis
    tell which source is fresher; a replica that sets it makes every poll a change that
    Ray's controller re-broadcasts.
    """
    stats: dict[str, Any] = {tier: sorted(getattr(view, tier)) for tier in _TIERS}
    stats.update(
        in_flight=view.in_flight,
        queued=view.queued,
        gpu_slots=view.gpu_slots,
        pinned=view.pinned,
    )
    if at is not None:
        stats["at"] = at
    return stats


def replica_view_from_stats(
    replica_id: str,
    stats: Mapping[str, Any],
    *,
    multiplexed_ids: Iterable[str] = (),
    queue_len: int | None = None,
    published: ReplicaView | None = None,
) -> ReplicaView:
    """One replica's view from its reported ``stats`` and Ray's fresher facts.

    ``published`` (the replica as the Redis cluster view has it, when the caller found
    that fresher than ``stats``) replaces the reported tiers, load and GPU slots; the
    ``pinned`` count only travels in ``stats``. ``multiplexed_ids`` join the GPU tier;
    ``queue_len`` (Ray's cached count of the replica's ongoing requests, None when it
    has no fresh entry) replaces the reported load. Missing keys read as empty tiers and
    zero load, which is what a replica that has not reported yet looks like. The result
    is a new view: the caller may change it.
    """
    source: Mapping[str, Any] = stats
    if published is not None:
        source = {
            "gpu": published.gpu,
            "host": published.host,
            "disk": published.disk,
            "loading": published.loading,
            "in_flight": published.in_flight,
            "queued": published.queued,
            "gpu_slots": published.gpu_slots,
        }
    view = ReplicaView(
        replica_id=replica_id,
        gpu=set(source.get("gpu", ())) | set(multiplexed_ids),
        host=set(source.get("host", ())),
        disk=set(source.get("disk", ())),
        loading=set(source.get("loading", ())),
        in_flight=int(source.get("in_flight", 0)),
        queued=int(source.get("queued", 0)),
        gpu_slots=int(source.get("gpu_slots", _DEFAULT_GPU_SLOTS)),
        pinned=int(stats.get("pinned", 0)),
    )
    if queue_len is not None:
        # Ray counts every request the replica holds, queued or running.
        view.in_flight, view.queued = queue_len, 0
    return view


class CacheAwareRequestRouter(RequestRouter):
    """Ranks replicas for each request with a placement policy chosen by name.

    Configure it on the model deployment::

        RequestRouterConfig(
            request_router_class="services.serve:CacheAwareRequestRouter",
            request_router_kwargs={"policy": "adaptive", "seed": 0, "epsilon": 0.1},
            request_routing_stats_period_s=1.0,
        )

    ``request_router_kwargs`` reach :meth:`initialize_state`: ``policy`` and ``seed``
    pick the policy from the scheduler's registry, ``placement_ttl_s`` bounds the
    optimistic placements, ``demand_half_life_s`` smooths the request rates,
    ``max_tracked_adapters`` bounds how many adapters' rates are kept,
    ``redis_url``, ``key_prefix`` and ``staleness_bound_s`` configure the Redis cluster
    view (none without ``redis_url``), every other key is an option of the policy.

    Each routing attempt ranks the candidates with ``policy.rank_replicas``; Ray then
    takes the replica with the shortest queue in the first group that accepts the
    request, and backs off and asks again when none does (indefinitely: callers use
    timeouts). When a replica accepts, :meth:`on_request_routed` records the request's
    demand and tells the policy with ``on_placed``. Nothing here does I/O: routing runs
    on the handle's event loop.
    """

    def initialize_state(
        self,
        policy: str = "adaptive",
        seed: int = 0,
        placement_ttl_s: float = DEFAULT_PLACEMENT_TTL_S,
        demand_half_life_s: float = 30.0,
        max_tracked_adapters: int = DEFAULT_MAX_TRACKED_ADAPTERS,
        redis_url_env: str | None = None,
        key_prefix: str = "loramux:",
        staleness_bound_s: float = 2.0,
        **options: Any,
    ) -> None:
        """Create the policy and the demand tracker (Ray calls this once, with the kwargs).

        ``demand_half_life_s`` is the half-life of the request rates passed to the policy
        (as ``AdapterDemand.rate``), the simulator's setting of the same name; past
        ``max_tracked_adapters`` adapters the coldest half is forgotten (a forgotten
        adapter that comes back starts at rate 0). With ``redis_url_env``, the name of
        the environment variable that holds the Redis URL in this process (the URL may
        hold a password, so it never travels in the Serve config), the router follows the
        replicas' residency events under ``key_prefix`` (the store's) in a task started
        on the first routing call, on the router's event loop (Ray may call this method
        outside it). If that variable is not set, the router routes on the replicas'
        reports alone and says so in the log.

        Raises:
            UnknownPolicyError: ``policy`` is not registered (the message lists the names).
            PolicyOptionError: an option the policy does not take, or a bad value
                (``demand_half_life_s`` not positive, ``max_tracked_adapters`` below 2).
            ValueError: ``placement_ttl_s`` or ``staleness_bound_s`` is not positive.
        """
        if not placement_ttl_s > 0:
            raise ValueError(f"placement_ttl_s must be > 0 seconds, got {placement_ttl_s!r}")
        self._policy = self.create_policy(policy, seed=seed, **options)
        self._demand = DemandTracker(demand_half_life_s, max_keys=max_tracked_adapters)
        self._placement_ttl_s = placement_ttl_s
        # replica unique id -> adapter key -> when this router last sent it there.
        self._placements: dict[str, dict[str, float]] = {}
        self._policy_errors = FailureLog(
            logger, _POLICY_ERROR_LOG_INTERVAL_S, clock=self._get_curr_time_s
        )
        self._metrics = RoutingMetrics()
        self._redis_url = os.environ.get(redis_url_env) if redis_url_env else None
        if redis_url_env and not self._redis_url:
            logger.warning(
                "%s is not set in this process: routing on the replicas' reports only, "
                "without the Redis residency view",
                redis_url_env,
            )
        self._key_prefix = key_prefix
        self.cluster_view = (
            ClusterView(staleness_bound_s=staleness_bound_s) if self._redis_url else None
        )
        self._follow_task: asyncio.Task[None] | None = None
        self._view_logged_at = float("-inf")

    def create_policy(self, name: str, *, seed: int, **options: Any) -> PlacementPolicy:
        """The placement policy to route with; a subclass may supply its own."""
        return make_policy(name, seed=seed, **options)

    @property
    def policy(self) -> PlacementPolicy:
        return self._policy

    def replica_view(self, replica: RunningReplica, now: float) -> ReplicaView:
        """What this router currently knows about ``replica`` (see the module docstring)."""
        replica_id = replica.replica_id.unique_id
        stats = replica.routing_stats or {}
        view = replica_view_from_stats(
            replica_id,
            stats,
            multiplexed_ids=replica.multiplexed_model_ids,
            queue_len=self.replica_queue_len_cache.get(replica.replica_id),
            published=self._published_view(replica_id, stats),
        )
        placements = self._placements.get(replica_id)
        if placements:
            for key, placed_at in list(placements.items()):
                if now - placed_at > self._placement_ttl_s or view.tier_of(key) is not Tier.NONE:
                    del placements[key]  # expired, or the replica reports it now
                else:
                    view.loading.add(key)
        return view

    def _published_view(self, replica_id: str, stats: Mapping[str, Any]) -> ReplicaView | None:
        """The Redis view of the replica, if it has one no older than ``stats``.

        Both times are Unix seconds: when this router applied the replica's last event,
        and when the replica took its stats (a report without ``at`` counts as older).
        """
        cluster = self.cluster_view
        updated_at = cluster.updated_at(replica_id) if cluster is not None else None
        if updated_at is None:
            return None
        stats_at = stats.get("at")
        if isinstance(stats_at, int | float) and stats_at > updated_at:
            return None
        return cluster.get(replica_id)  # type: ignore[union-attr]

    def _follow_cluster_view(self, now: float) -> None:
        """Start following Redis on this (the router's) loop, once; log the view's
        staleness at most once a minute."""
        cluster = self.cluster_view
        if cluster is None:
            return
        if self._follow_task is None:
            import redis.asyncio

            from services.serve._residency import ResidencySubscriber

            client = redis.asyncio.Redis.from_url(self._redis_url)
            subscriber = ResidencySubscriber(client, key_prefix=self._key_prefix, view=cluster)
            self._follow_task = asyncio.get_running_loop().create_task(subscriber.run())
        if now - self._view_logged_at >= _VIEW_LOG_INTERVAL_S:
            self._view_logged_at = now
            stats = cluster.stats
            logger.info(
                "cluster view: %d replicas, max staleness %.3f s (bound %.1f s), max event "
                "lag %.3f s, %d events applied, %d stale, %d unknown, %d gaps",
                len(cluster),
                cluster.max_staleness(now),
                cluster.staleness_bound_s,
                stats.max_lag_s,
                stats.applied,
                stats.dropped_stale,
                stats.dropped_unknown,
                stats.gaps,
            )

    def demand(self, key: str, now: float) -> AdapterDemand:
        """The request's adapter demand; ``key`` is ``""`` for the base model alone."""
        return self._demand.demand(key, now)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Rank ``candidate_replicas`` for ``pending_request`` with the policy, best first."""
        if not candidate_replicas:
            return []
        self.forget_routed_requests()
        now = self._get_curr_time_s()
        self._follow_cluster_view(now)
        key = pending_request.metadata.multiplexed_model_id if pending_request else ""
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        views = [self.replica_view(replica, now) for replica in candidate_replicas]
        try:
            ranked = self._policy.rank_replicas(self.demand(key, now), views, now)
        except Exception:
            self._policy_errors.warning(
                "placement policy %r failed to rank %d replicas for %r; routing by load alone",
                self._policy.name,
                len(views),
                key,
                kind="rank_replicas",
            )
            return [list(candidate_replicas)]
        return [[by_id[view.replica_id] for view in group] for group in ranked if group]

    def forget_routed_requests(self) -> None:
        """Drop the requests that no longer wait from Ray's index of pending requests.

        Ray's ``RequestRouter`` (2.60; the index came with ray-project/ray#60139) files
        every pending request that has a multiplexed model id under
        ``_pending_requests_by_model_id`` and removes it only lazily, in
        ``MultiplexMixin``'s lookup by model id. This router does not use
        that mixin (the policy does the matching), so nothing removed them: every
        request for an adapter stayed referenced with its arguments (prompt, sampling,
        adapter version), about 2 KB each, for the life of the ingress. Called on every
        routing attempt, so the index holds at most the requests waiting for a replica
        plus those routed since the previous attempt; O(entries), which is that few.
        """
        # Private to Ray, hence getattr; tests/unit/services/test_bounded_state.py reads
        # it directly, so a Ray upgrade that renames it fails there, not silently here.
        index = getattr(self, "_pending_requests_by_model_id", None)
        if not index:
            return
        for key, waiting in list(index.items()):
            live = [request for request in waiting if not request.future.done()]
            if not live:
                del index[key]
            elif len(live) < len(waiting):
                waiting.clear()
                waiting.extend(live)

    def tracked_sizes(self) -> dict[str, int]:
        """How many entries each structure that grows with traffic holds now.

        ``pending_by_adapter``: Ray's index of pending requests (see
        :meth:`forget_routed_requests`); ``placements``: optimistic placements over all
        replicas; ``demand_adapters``: adapters whose rate this router tracks (at most
        ``max_tracked_adapters``); ``cluster_view_replicas``: replicas in the Redis view.
        """
        index = getattr(self, "_pending_requests_by_model_id", None) or {}
        cluster = self.cluster_view
        return {
            "pending_by_adapter": sum(len(waiting) for waiting in index.values()),
            "placements": sum(len(keys) for keys in self._placements.values()),
            "demand_adapters": len(self._demand),
            "cluster_view_replicas": len(cluster) if cluster is not None else 0,
        }

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        """Record the placement: demand, the policy's state, the optimistic residency.

        Ray calls this only when a replica accepted the request under the rejection
        protocol (the default outside Ray Client); requests sent without it are not
        recorded, which costs the policy some accuracy, never correctness.
        """
        replica = self.curr_replicas.get(replica_id)
        if replica is None:  # the replica left between acceptance and this callback
            return
        now = self._get_curr_time_s()
        key = pending_request.metadata.multiplexed_model_id
        if key:
            self._demand.observe(key, now)
        view = self.replica_view(replica, now)
        self._count_decision(key, view, now)
        self._policy.on_placed(self.demand(key, now), view, now)
        if key and view.tier_of(key) is Tier.NONE:
            self._placements.setdefault(view.replica_id, {})[key] = now
        if self.cluster_view is not None and view.replica_id in self.cluster_view:
            self.cluster_view.on_placed(view.replica_id, key, now)

    def _count_decision(self, key: str, chosen: ReplicaView, now: float) -> None:
        """Count the placement by kind (see :func:`classify_routing`); the home count is
        the policy's when it replicates hot adapters (``home_count``), else 1."""
        others = [
            self.replica_view(replica, now)
            for replica_id, replica in self.curr_replicas.items()
            if replica_id.unique_id != chosen.replica_id
        ]
        home_count = getattr(self._policy, "home_count", None)
        homes = home_count(key) if key and home_count is not None else 1
        self._metrics.routed(classify_routing(key, chosen, others, home_count=homes))

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        """Ray saw the replica's actor die under a request: forget what it held and
        what was placed on it (its cache died with it), then let Ray drop it."""
        self._placements.pop(replica_id.unique_id, None)
        if self.cluster_view is not None:
            self.cluster_view.forget(replica_id.unique_id)
        super().on_replica_actor_died(replica_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        """Forget the placements on replicas that left, then let Ray update its sets."""
        live = {replica.replica_id.unique_id for replica in replicas}
        for replica_id in set(self._placements) - live:
            del self._placements[replica_id]
        super().update_replicas(replicas)
