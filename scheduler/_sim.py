"""A discrete-event simulator of placement policies on replicas with tiered adapter caches.

It replays a trace (:class:`~scheduler.TraceRequest` rows, in arrival order) against one
:class:`~scheduler.PlacementPolicy` on ``R`` replicas, each with ``G`` GPU adapter slots,
a host-memory cache and a local-disk cache of given byte budgets, using the costs of a
:class:`~scheduler.CostProfile`. What it models, and the rules it follows:

* **Placement.** At each arrival the router asks the policy to rank the replica views
  with the adapter's rate from a :class:`~scheduler.DemandTracker`, takes the first
  replica of the first non-empty group (:func:`~scheduler.select_replica`), then counts
  the request in the tracker and tells the policy with ``on_placed``: the order of the
  services router, whose rate excludes the request being placed. Views are exact by
  default (they are the replicas' own sets and counters, ``pinned`` included); with
  ``view_refresh_s > 0`` they are snapshots refreshed on that period, updated
  optimistically after each placement by :meth:`~scheduler.ReplicaView.mark_placed`,
  as a router's cluster view is. Two options model a real router more closely:
  ``exact_load`` reads the queue lengths fresh at every decision (Ray's routers keep a
  queue-length cache that every send and completion updates, so the load they see is
  current while residency arrives in periodic reports), and ``optimistic_views=False``
  leaves residency to the reports alone (Ray's multiplexed routing learns a model id
  only when the replica reports it; loramux's cluster view marks its own placements).
* **Hits.** A request is classified when it is placed, by where its adapter is on the
  chosen replica: ``GPU`` (a GPU hit), ``LOADING`` (already being loaded or queued for a
  slot there: a miss that starts no new load), ``HOST``, ``DISK`` or ``NONE`` (a miss
  that loads from that tier). Base-model requests (adapter ``""``) need no adapter; they
  are left out of every hit rate and of the bound.
* **Loads.** A miss loads the adapter down the tiers, S3 -> disk -> host -> GPU, from the
  best tier that holds it when the load starts, single-flight per replica. Each replica
  has one network link, one disk and one host-to-GPU copy engine; each serves transfers
  FIFO in load-start order. A load needs a GPU slot: a free one, else the eviction
  policy's victim among loaded adapters no request on the replica needs; when every slot
  is pinned the load waits until one is released. The loaded adapter is also inserted
  into the host and disk caches, whose byte budgets evict (with the policy's eviction
  policy) entries that are not on the GPU; a budget smaller than the entries it must keep
  is exceeded rather than deadlocking.
* **Pinning.** A GPU slot is pinned while any request placed on its replica needs it
  (queued or running) or while it loads. Pinning queued requests too means a replica
  never evicts an adapter that a request has already been routed to.
* **Batching.** Each replica runs continuous batching: at every step boundary it admits
  queued requests whose adapter is loaded, oldest arrival first, up to the profile's
  ``max_batch``. A step over ``b`` sequences that prefills ``p`` prompt tokens lasts
  ``step_seconds(b, p)``; each step emits one token per running sequence, the prefill
  step emitting the first. TTFT = first token time - arrival, latency = last token time
  - arrival. Steps between events are not simulated one by one: a replica schedules its
  next event at its next completion and is interrupted at the next step boundary when a
  request becomes admissible, so the cost is per request, not per token.
* **Cold start.** Every cache starts empty.

Failure mode: it models neither KV-cache memory nor preemption (``max_batch`` stands for
both), nor transfers slowing decode steps, and loads land in the disk and host caches
when the whole load completes.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

from scheduler._bound import belady_bound
from scheduler._cost import CostProfile
from scheduler._demand import DemandTracker
from scheduler._percentile import percentile
from scheduler._policies import select_replica
from scheduler._trace import TraceRequest
from scheduler._types import AdapterDemand
from scheduler._types import EvictionPolicy
from scheduler._types import PlacementPolicy
from scheduler._types import ReplicaView
from scheduler._types import Tier
from scheduler.exceptions import SchedulerError

__all__ = ["RequestOutcome", "SimConfig", "SimResult", "simulate"]

_MIB = 1024 * 1024
_STEP_END = 0
_LOAD_DONE = 1


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The simulated cluster. Budgets are per replica, in MiB.

    ``view_refresh_s`` 0 means the policy sees exact replica state; a positive value
    refreshes its views on that period, and then ``exact_load`` still reads the queue
    lengths at every decision and ``optimistic_views`` marks each placement in the view
    until the next report. ``replica_ids`` names the replicas (``replica-000``... when
    empty): a replay of a real run passes the real ids, so that policies hashing on them
    give each adapter the same homes. ``bound`` also computes the pooled Belady bound.
    """

    replicas: int
    gpu_slots: int
    profile: CostProfile
    host_cache_mb: float = 16 * 1024
    disk_cache_mb: float = 128 * 1024
    view_refresh_s: float = 0.0
    exact_load: bool = False
    optimistic_views: bool = True
    replica_ids: tuple[str, ...] = ()
    demand_half_life_s: float = 30.0
    bound: bool = False

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.gpu_slots < 1:
            raise SchedulerError(
                f"replicas={self.replicas} and gpu_slots={self.gpu_slots} must both be >= 1"
            )
        if self.host_cache_mb < 0 or self.disk_cache_mb < 0 or self.view_refresh_s < 0:
            raise SchedulerError(
                "host_cache_mb, disk_cache_mb and view_refresh_s must be >= 0; got "
                f"{self.host_cache_mb}, {self.disk_cache_mb}, {self.view_refresh_s}"
            )
        if self.replica_ids and (
            len(self.replica_ids) != self.replicas or len(set(self.replica_ids)) != self.replicas
        ):
            raise SchedulerError(
                f"replica_ids must be {self.replicas} distinct names (one per replica); "
                f"got {list(self.replica_ids)}"
            )

    def pooled(self) -> SimConfig:
        """The *pooled replica*: one replica standing for all of these, with all their GPU
        slots, host and disk budgets, on :meth:`CostProfile.pooled` costs, with exact
        views. Same pins, batching, transfers and eviction, one cache that no placement
        partitions: a policy's hit rate here is what it could reach on the separate
        replicas at best in practice (copies of hot adapters and uneven homes cost the
        partitioned cluster slots the pooled one keeps). A reference, not a bound: it
        does not know the future, and deferred loads can reorder requests either way."""
        return SimConfig(
            replicas=1,
            gpu_slots=self.replicas * self.gpu_slots,
            profile=self.profile.pooled(self.replicas),
            host_cache_mb=self.replicas * self.host_cache_mb,
            disk_cache_mb=self.replicas * self.disk_cache_mb,
            demand_half_life_s=self.demand_half_life_s,
        )


@dataclass(slots=True)
class RequestOutcome:
    """What happened to one request: where it ran, how it was classified, when it ended."""

    index: int
    arrival_s: float
    key: str
    prompt_tokens: int
    output_tokens: int
    replica: int = -1
    tier: Tier = Tier.NONE
    first_token_s: float = math.nan
    finish_s: float = math.nan
    finish_step: int = 0


@dataclass(slots=True)
class SimResult:
    """Metrics of one run. Hit rates are over requests that name an adapter.

    ``load_imbalance`` is the busiest replica's busy time over the mean busy time, busy
    meaning at least one sequence running, as the issue defines it ("max over mean
    replica busy time"); ``mean_utilization`` is the mean busy time over the run's span
    (first arrival to last completion). Under continuous batching busy time saturates
    near 1 at moderate load and hides hot spots, so ``occupancy_imbalance`` gives the
    same ratio over the time integral of the running batch size (sequence-seconds),
    which grows with a replica's share of the work. Both are kept: the first is the
    goal's metric as written, the second the stricter reading of it, and the results
    report both rather than swapping one definition for the other.

    ``ttft_p99_gpu_hit_s`` is the p99 TTFT of the requests that hit the GPU (nan if
    none): what queueing and prefill cost with no load to wait for, which no placement
    brings the overall p99 far below.

    ``deferred_loads`` counts loads that could not start when their request was placed
    because every GPU slot of the replica was pinned; when it is not 0 the pooled bound
    is an estimate rather than a strict upper bound (see :mod:`scheduler._bound`).
    """

    policy: str
    profile: str
    replicas: int
    gpu_slots: int
    requests: int
    adapter_requests: int
    completions: int
    gpu_hit_rate: float
    loading_hit_rate: float
    host_hit_rate: float
    disk_hit_rate: float
    cold_loads: int
    s3_bytes: int
    deferred_loads: int
    ttft_p50_s: float
    ttft_p99_s: float
    ttft_p99_gpu_hit_s: float
    latency_p50_s: float
    latency_p99_s: float
    throughput_rps: float
    load_imbalance: float
    occupancy_imbalance: float
    mean_utilization: float
    bound_gpu_hit_rate: float | None = None
    outcomes: list[RequestOutcome] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, object]:
        """The documented JSON keys (``bound_gpu_hit_rate`` only when computed)."""
        keys = (
            "policy", "requests", "gpu_hit_rate", "host_hit_rate", "disk_hit_rate",
            "cold_loads", "s3_bytes", "ttft_p50_s", "ttft_p99_s", "latency_p50_s",
            "latency_p99_s", "throughput_rps", "load_imbalance",
            "profile", "replicas", "gpu_slots", "loading_hit_rate", "deferred_loads",
            "mean_utilization", "occupancy_imbalance", "ttft_p99_gpu_hit_s",
        )  # fmt: skip
        out: dict[str, object] = {key: getattr(self, key) for key in keys}
        if self.bound_gpu_hit_rate is not None:
            out["bound_gpu_hit_rate"] = self.bound_gpu_hit_rate
        return out


class _Replica:
    """One replica's true state: tiers, pins, queues, the running batch and its clock."""

    __slots__ = (
        "blocked",
        "busy_s",
        "disk",
        "disk_budget",
        "disk_bytes",
        "disk_evict",
        "disk_free",
        "evictable",
        "finish_heap",
        "finishing",
        "gpu",
        "gpu_evict",
        "host",
        "host_budget",
        "host_bytes",
        "host_evict",
        "host_evictable",
        "index",
        "interrupted",
        "link_free",
        "loading",
        "max_batch",
        "occupancy",
        "pcie_free",
        "pending",
        "profile",
        "ready",
        "refs",
        "running",
        "seg_dt",
        "seg_first",
        "seg_start",
        "seg_steps",
        "sim",
        "sizes",
        "slots",
        "step_no",
        "transferring",
        "version",
        "view",
        "waiting",
    )  # fmt: skip

    def __init__(
        self,
        sim: _Simulation,
        index: int,
        view: ReplicaView,
        eviction: Callable[[], EvictionPolicy],
    ) -> None:
        config = sim.config
        self.sim = sim
        self.index = index
        self.view = view
        self.profile = config.profile
        self.max_batch = config.profile.max_batch
        self.slots = config.gpu_slots
        self.sizes = sim.sizes
        self.gpu: set[str] = set()  # loaded on the GPU
        self.loading: set[str] = set()  # transferring, or waiting for a slot
        self.transferring: set[str] = set()
        self.pending: deque[str] = deque()  # waiting for a GPU slot, in request order
        self.host: set[str] = set()
        self.disk: set[str] = set()
        self.evictable: set[str] = set()  # loaded, needed by no request here
        self.host_evictable: set[str] = set()  # in host, not on (or loading onto) the GPU
        self.host_bytes = 0
        self.disk_bytes = 0
        self.host_budget = int(config.host_cache_mb * _MIB)
        self.disk_budget = int(config.disk_cache_mb * _MIB)
        self.gpu_evict = eviction()
        self.host_evict = eviction()
        self.disk_evict = eviction()
        self.refs: dict[str, int] = {}
        self.blocked: dict[str, list[RequestOutcome]] = {}
        self.ready: list[tuple[int, RequestOutcome]] = []
        self.waiting = 0
        self.running = 0
        self.step_no = 0
        self.finishing: dict[int, list[RequestOutcome]] = {}
        self.finish_heap: list[int] = []
        self.link_free = self.disk_free = self.pcie_free = 0.0
        self.busy_s = 0.0
        self.occupancy = 0.0  # integral of the running batch size over time
        self.seg_start = self.seg_first = self.seg_dt = 0.0
        self.seg_steps = 0  # 0: idle
        self.interrupted = False
        self.version = 0
        if not config.view_refresh_s:
            view.gpu, view.loading, view.host, view.disk = (
                self.gpu,
                self.loading,
                self.host,
                self.disk,
            )
        self.refresh_view()

    # --- views ------------------------------------------------------------------------

    def refresh_view(self) -> None:
        """Copy the true state into the view (stale mode) or just the counters (exact)."""
        view = self.view
        if view.gpu is not self.gpu:
            view.gpu = set(self.gpu)
            view.loading = set(self.loading)
            view.host = set(self.host)
            view.disk = set(self.disk)
        self.refresh_load()
        view.pinned = self.pinned()

    def refresh_load(self) -> None:
        """Copy the queue lengths alone into the view."""
        self.view.in_flight = self.running
        self.view.queued = self.waiting

    def pinned(self) -> int:
        """GPU slots needed by a request here or by a load (in progress or waiting)."""
        return len(self.gpu) - len(self.evictable) + len(self.loading)

    # --- requests ---------------------------------------------------------------------

    def accept(self, request: RequestOutcome, now: float) -> None:
        """Queue a request placed here; classify it and start its adapter's load."""
        key = request.key
        request.replica = self.index
        self.waiting += 1
        if not key:
            request.tier = Tier.GPU
            heapq.heappush(self.ready, (request.index, request))
        else:
            refs = self.refs.get(key, 0)
            self.refs[key] = refs + 1
            if key in self.gpu:
                request.tier = Tier.GPU
                if not refs:
                    self.evictable.discard(key)
                self.gpu_evict.on_access(key, now)
                heapq.heappush(self.ready, (request.index, request))
            else:
                self.blocked.setdefault(key, []).append(request)
                if key in self.loading:
                    request.tier = Tier.LOADING
                else:
                    request.tier = (
                        Tier.HOST
                        if key in self.host
                        else Tier.DISK
                        if key in self.disk
                        else Tier.NONE
                    )
                    self.loading.add(key)
                    self.pending.append(key)
                    self.start_pending_loads(now)
                    if key not in self.transferring:
                        self.sim.deferred_loads += 1
        if self.view.gpu is self.gpu:
            self.view.queued = self.waiting
            self.view.pinned = self.pinned()
        self.kick(now)

    def start_pending_loads(self, now: float) -> None:
        """Start queued loads, oldest first, while a GPU slot is free or evictable."""
        pending = self.pending
        while pending:
            if len(self.gpu) + len(self.transferring) >= self.slots:
                if not self.evictable:
                    return
                victim = _checked(self.gpu_evict.victim(self.evictable, now), self.evictable)
                if victim is None:  # the policy declined: nothing can be evicted now
                    return
                self.evict_gpu(victim)
            self.start_load(pending.popleft(), now)

    def evict_gpu(self, key: str) -> None:
        self.gpu.discard(key)
        self.evictable.discard(key)
        self.gpu_evict.on_remove(key)
        self.sim.evictions += 1
        if key in self.host:
            self.host_evictable.add(key)

    def start_load(self, key: str, now: float) -> None:
        """Reserve the transfers from the best tier holding ``key``; schedule completion."""
        profile = self.profile
        size = self.sizes[key]
        self.transferring.add(key)
        if key in self.host:
            self.host_evictable.discard(key)
            self.host_evict.on_access(key, now)
            ready_at = now
        elif key in self.disk:
            self.disk_evict.on_access(key, now)
            start = max(now, self.disk_free)
            ready_at = self.disk_free = start + profile.disk_seconds(size)
        else:
            start = max(now, self.link_free)
            self.link_free = start + size / profile.s3_bytes_per_s
            ready_at = start + profile.s3_seconds(size)
            self.sim.cold_loads += 1
            self.sim.s3_bytes += size
        start = max(ready_at, self.pcie_free)
        done = self.pcie_free = start + profile.h2d_seconds(size)
        self.sim.push(done, _LOAD_DONE, self.index, key)

    def load_done(self, key: str, now: float) -> None:
        """The adapter is on the GPU: cache it below, release its waiting requests."""
        self.transferring.discard(key)
        self.loading.discard(key)
        self.gpu.add(key)
        size = self.sizes[key]
        self.gpu_evict.on_insert(key, size, now)
        if key not in self.host:
            self.host_bytes = self.insert(
                key, size, now, self.host, self.host_evictable, self.host_evict,
                self.host_bytes, self.host_budget,
            )  # fmt: skip
        if key not in self.disk:
            self.disk_bytes = self.insert(
                key, size, now, self.disk, self.disk, self.disk_evict,
                self.disk_bytes, self.disk_budget,
            )  # fmt: skip
        for request in self.blocked.pop(key):
            heapq.heappush(self.ready, (request.index, request))
        self.kick(now)

    def insert(
        self,
        key: str,
        size: int,
        now: float,
        tier: set[str],
        candidates: set[str],
        eviction: EvictionPolicy,
        used: int,
        budget: int,
    ) -> int:
        """Add ``key`` to a byte-budgeted tier, evicting candidates to make room."""
        sizes = self.sizes
        while used + size > budget and candidates:
            victim = _checked(eviction.victim(candidates, now), candidates)
            if victim is None:
                break
            tier.discard(victim)
            candidates.discard(victim)
            eviction.on_remove(victim)
            used -= sizes[victim]
        tier.add(key)
        eviction.on_insert(key, size, now)
        return used + size

    # --- batching ---------------------------------------------------------------------

    def kick(self, now: float) -> None:
        """Make sure admissible work is picked up at the next step boundary."""
        if not self.ready or self.running >= self.max_batch:
            return
        if not self.seg_steps:
            self.begin_segment(now)
            return
        if self.interrupted:
            return
        # Stop the current run of steps at the first boundary at or after ``now``.
        self.interrupted = True
        after_first = now - self.seg_start - self.seg_first
        steps = 1 if after_first <= 0 else 1 + math.ceil(after_first / self.seg_dt - 1e-9)
        if steps < self.seg_steps:
            self.seg_steps = steps
            self.version += 1
            end = self.seg_start + self.seg_first + (steps - 1) * self.seg_dt
            self.sim.push(end, _STEP_END, self.index, self.version)

    def begin_segment(self, now: float) -> None:
        """Admit ready requests and run steps until the next completion (or interrupt)."""
        ready = self.ready
        prefill = 0
        admitted: list[RequestOutcome] = []
        while ready and self.running < self.max_batch:
            request = heapq.heappop(ready)[1]
            self.running += 1
            self.waiting -= 1
            prefill += request.prompt_tokens
            admitted.append(request)
        if not self.running:
            self.seg_steps = 0
            return
        profile = self.profile
        first = profile.step_seconds(self.running, prefill)
        if admitted:
            first_token = now + first
            for request in admitted:
                request.first_token_s = first_token
                finish = self.step_no + request.output_tokens
                request.finish_step = finish
                bucket = self.finishing.get(finish)
                if bucket is None:
                    self.finishing[finish] = [request]
                    heapq.heappush(self.finish_heap, finish)
                else:
                    bucket.append(request)
        self.seg_start = now
        self.seg_first = first
        self.seg_dt = profile.step_seconds(self.running, 0)
        self.seg_steps = self.finish_heap[0] - self.step_no
        self.interrupted = False
        self.version += 1
        end = now + first + (self.seg_steps - 1) * self.seg_dt
        self.sim.push(end, _STEP_END, self.index, self.version)
        if self.view.gpu is self.gpu:
            self.view.in_flight = self.running
            self.view.queued = self.waiting

    def step_end(self, version: int, now: float) -> None:
        if version != self.version:
            return  # superseded by an interrupt
        self.busy_s += now - self.seg_start
        self.occupancy += (now - self.seg_start) * self.running
        self.step_no += self.seg_steps
        self.seg_steps = 0
        finish_heap = self.finish_heap
        sim = self.sim
        while finish_heap and finish_heap[0] <= self.step_no:
            for request in self.finishing.pop(heapq.heappop(finish_heap)):
                request.finish_s = now
                sim.completions += 1
                self.running -= 1
                key = request.key
                if key:
                    refs = self.refs[key] - 1
                    if refs:
                        self.refs[key] = refs
                    else:
                        del self.refs[key]
                        self.evictable.add(key)
        if self.pending and self.evictable:
            self.start_pending_loads(now)
        self.begin_segment(now)
        if self.view.gpu is self.gpu:
            self.view.in_flight = self.running
            self.view.queued = self.waiting
            self.view.pinned = self.pinned()


class _Simulation:
    """The event loop and counters shared by the replicas of one run."""

    def __init__(
        self, trace: Sequence[TraceRequest], policy: PlacementPolicy, config: SimConfig
    ) -> None:
        self.config = config
        self.policy = policy
        self.trace = trace
        self.events: list[tuple[float, int, int, int, object]] = []
        self.seq = 0
        self.cold_loads = 0
        self.s3_bytes = 0
        self.evictions = 0
        self.deferred_loads = 0
        self.completions = 0
        profile = config.profile
        self.sizes: dict[str, int] = {}
        self.ranks: dict[str, int] = {}
        for request in trace:
            if request.adapter and request.adapter not in self.sizes:
                self.sizes[request.adapter] = profile.adapter_bytes(request.rank)
                self.ranks[request.adapter] = request.rank or profile.default_rank
        ids = config.replica_ids or [f"replica-{i:03d}" for i in range(config.replicas)]
        self.views = [
            ReplicaView(replica_id=replica_id, gpu_slots=config.gpu_slots) for replica_id in ids
        ]
        self.replicas = [
            _Replica(self, i, view, policy.new_eviction_policy) for i, view in enumerate(self.views)
        ]
        self.by_view = {id(replica.view): replica for replica in self.replicas}

    def push(self, when: float, kind: int, replica: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, kind, replica, payload))

    def run(self, progress: Callable[[int], None] | None) -> list[RequestOutcome]:
        config = self.config
        policy = self.policy
        tracker = DemandTracker(config.demand_half_life_s)
        refresh = config.view_refresh_s
        next_refresh = 0.0
        events = self.events
        replicas = self.replicas
        views = self.views
        by_view = self.by_view
        sizes, ranks = self.sizes, self.ranks
        outcomes: list[RequestOutcome] = []
        progress_every = max(1, len(self.trace) // 100)
        for index, row in enumerate(self.trace):
            now = row.arrival_s
            while events and events[0][0] <= now:
                self.dispatch(heapq.heappop(events))
            key = row.adapter
            request = RequestOutcome(index, now, key, row.prompt_tokens, row.output_tokens)
            outcomes.append(request)
            if key:
                # As the router does: the rate excludes this request, counted once placed.
                demand = AdapterDemand(key, sizes[key], ranks[key], tracker.rate(key, now))
            else:
                demand = AdapterDemand("")
            if refresh and now >= next_refresh:
                for replica in replicas:
                    replica.refresh_view()
                next_refresh = now + refresh
            elif refresh and config.exact_load:
                for replica in replicas:
                    replica.refresh_load()
            view = select_replica(policy.rank_replicas(demand, views, now))
            replica = by_view[id(view)]
            if key:
                tracker.observe(key, now)
            if refresh and config.optimistic_views:
                view.mark_placed(key)
            elif refresh:
                view.queued += 1
            policy.on_placed(demand, view, now)
            replica.accept(request, now)
            if progress is not None and index % progress_every == 0:
                progress(index)
        while events:
            self.dispatch(heapq.heappop(events))
        if progress is not None:
            progress(len(self.trace))
        return outcomes

    def dispatch(self, event: tuple[float, int, int, int, object]) -> None:
        when, _, kind, index, payload = event
        replica = self.replicas[index]
        if kind == _STEP_END:
            replica.step_end(payload, when)  # type: ignore[arg-type]
        else:
            replica.load_done(payload, when)  # type: ignore[arg-type]


def _checked(victim: str | None, candidates: set[str]) -> str | None:
    """``victim`` if it is one of ``candidates`` (or None); a policy bug otherwise."""
    if victim is not None and victim not in candidates:
        raise SchedulerError(
            f"the eviction policy chose {victim!r}, which is not among the "
            f"{len(candidates)} evictable entries it was given (pinned or absent)"
        )
    return victim


def _max_over_mean(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return max(values) / mean if mean > 0 else 1.0


def simulate(
    trace: Sequence[TraceRequest],
    policy: PlacementPolicy,
    config: SimConfig,
    *,
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Replay ``trace`` (sorted by arrival) with ``policy`` on the cluster of ``config``.

    ``progress`` is called with the number of requests placed so far, about 100 times.

    Raises:
        SchedulerError: an empty trace, or a policy that ranked no replica.
    """
    if not trace:
        raise SchedulerError("the trace has no requests to simulate")
    sim = _Simulation(trace, policy, config)
    outcomes = sim.run(progress)
    adapter = [o for o in outcomes if o.key]
    tiers = [o.tier for o in adapter]
    total = len(adapter)

    def share(tier: Tier) -> float:
        return tiers.count(tier) / total if total else 1.0 if tier is Tier.GPU else 0.0

    ttft = sorted(o.first_token_s - o.arrival_s for o in outcomes)
    ttft_gpu_hit = sorted(o.first_token_s - o.arrival_s for o in adapter if o.tier is Tier.GPU)
    latency = sorted(o.finish_s - o.arrival_s for o in outcomes)
    span = max(o.finish_s for o in outcomes) - outcomes[0].arrival_s
    busy = [replica.busy_s for replica in sim.replicas]
    mean_busy = sum(busy) / len(busy)
    bound = None
    if config.bound:
        keys = [o.key for o in outcomes]
        bound = belady_bound(keys, config.replicas * config.gpu_slots).hit_rate
    return SimResult(
        policy=getattr(policy, "name", type(policy).__name__),
        profile=config.profile.name,
        replicas=config.replicas,
        gpu_slots=config.gpu_slots,
        requests=len(outcomes),
        adapter_requests=total,
        completions=sim.completions,
        gpu_hit_rate=share(Tier.GPU),
        loading_hit_rate=share(Tier.LOADING),
        host_hit_rate=share(Tier.HOST),
        disk_hit_rate=share(Tier.DISK),
        cold_loads=sim.cold_loads,
        s3_bytes=sim.s3_bytes,
        deferred_loads=sim.deferred_loads,
        ttft_p50_s=percentile(ttft, 50),
        ttft_p99_s=percentile(ttft, 99),
        ttft_p99_gpu_hit_s=percentile(ttft_gpu_hit, 99),
        latency_p50_s=percentile(latency, 50),
        latency_p99_s=percentile(latency, 99),
        throughput_rps=len(outcomes) / span if span > 0 else math.inf,
        load_imbalance=_max_over_mean(busy),
        occupancy_imbalance=_max_over_mean([replica.occupancy for replica in sim.replicas]),
        mean_utilization=mean_busy / span if span > 0 else 0.0,
        bound_gpu_hit_rate=bound,
        outcomes=outcomes,
    )
