"""The default placement: residency tiers, bounded loads, demand-driven replication."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from scheduler._demand import DemandTracker
from scheduler._eviction import DemandAwareEviction
from scheduler._policies._common import pow2_pair
from scheduler._policies._common import require_positive
from scheduler._policies._common import require_replicas
from scheduler._policies._hashing import RendezvousRanking
from scheduler._types import AdapterDemand
from scheduler._types import EvictionPolicy
from scheduler._types import ReplicaView
from scheduler.exceptions import PolicyOptionError

__all__ = ["AdaptivePolicy", "CacheAwarePolicy"]

# How many spill candidates (non-holders past the cold homes) are ranked.
_SPILL_WINDOW = 4
# Group indices, best first (see the class docstring).
_HOT_GROUP = 0
_GPU_GROUP = 1
_LOADING_GROUP = 2
_HOLDER_GROUP = 3
_COLD_HOME_GROUP = 4
_SPILL_GROUP = 5
_BLOCKED_GROUP = 6
_OVERFLOW_GROUP = 7
_GROUP_COUNT = 8


class CacheAwarePolicy:
    """Residency first, loads bounded, hot adapters spread over a stable set of homes.

    **Homes.** Each adapter has a rendezvous (highest-random-weight) order of replicas,
    the same in every router for the same seed; its first ``k`` replicas are its homes.
    Adding or removing a replica changes the first choice of about 1/R of the adapters.

    **Two load caps.** With ``L`` the total load (in-flight + queued) over ``R``
    replicas:

    * ``cap = max(load_floor, ceil((1 + epsilon) * (L + 1) / R))``, as in consistent
      hashing with bounded loads (Mirrokni et al.), bounds where a *new* copy may be
      made (a load from host, disk or S3);
    * ``holder_cap = max(cap, holder_floor, ceil((1 + holder_epsilon) * (L + 1) / R))``
      bounds a replica that already holds the adapter on its GPU (or is loading it).
      Serving there costs no load and no slot, and a replica running fewer than
      ``holder_floor`` sequences has room in its batch, so a holder takes more than
      its mean share before a copy is made elsewhere. A copy costs a GPU slot on
      another replica; with one cap at ``1.25 x`` the mean (about 25 sequences where a
      replica batches 64) spills made copies of most hot adapters and cost hits.

    A replica at or above ``holder_cap`` is not ranked, whatever it holds.

    **Replication.** ``need = share * (L + 1) / cap``, where ``share`` is the adapter's
    request rate over the total rate (from the :class:`DemandTracker`), is how many
    replicas its share of the load fills up to the cap. ``k`` grows to ``ceil(need)``
    as soon as ``need > k`` and shrinks only when ``need`` falls below ``shrink_ratio *
    (k - 1)``, to ``ceil(need / shrink_ratio)``; the band stops a borderline adapter
    from flapping between copies.

    **Free slots.** A replica whose GPU slots are all pinned (``pinned >= gpu_slots``:
    every slot holds an adapter a request there needs, or a load) cannot start a load
    until a request finishes, seconds at decode lengths, while a load elsewhere takes a
    tenth of that. So a replica that would have to load the adapter is ranked with a
    load only if it has a free or unpinned slot; pinned ones come last. Among those,
    each load already in flight on a replica counts as ``load_weight`` requests of load:
    loads share the replica's one link and copy engine.

    **Ranking.** Only the first ``k + scan_width`` replicas under ``holder_cap`` in the
    adapter's rendezvous order are examined: a decision costs one O(R) pass for the
    total load plus O(k + scan_width) residency checks. The groups, best first, each
    least loaded first:

    1. hot adapters (``k >= 2``): its homes under ``cap`` with a GPU copy or a free
       slot, those without a GPU copy paying ``cold_penalty`` requests of load (the
       copies are made where the demand is, then reused);
    2. GPU holders under ``holder_cap`` (any position in the scanned order);
    3. replicas already loading it, under ``holder_cap`` (a burst for a cold adapter
       waits for the one load instead of starting copies);
    4. host or disk holders under ``cap`` with a free slot (a cheaper load, no S3);
    5. the first ``max(k, cold_choices)`` replicas of the order (its cold homes) under
       ``cap`` with a free slot: the power of ``cold_choices`` choices, so cold
       adapters avoid a home that hot adapters keep busy, and spread like Ray's
       "fewest models" while staying on a few stable replicas;
    6. the next few replicas of the order under ``cap`` with a free slot (spill);
    7. replicas under ``cap`` whose slots are all pinned (the load will wait);
    8. the other replicas under ``holder_cap`` that would have to load it.

    A router whose candidates all reject ranks again with fresher loads. Base-model
    requests (``key == ""``) use the power of two choices.

    **Demand.** ``adapter.rate`` is used when the caller sets it, else the tracker's
    rate. With no ``demand`` tracker given the policy owns one and counts each
    :meth:`on_placed`; a tracker passed in is only read (its owner observes requests).

    Failure modes: a copy outside the scanned prefix of the rendezvous order (left by a
    replica-set change) is not seen and drains unused. When an adapter turns hot each
    new home pays one cold load, and a burst faster than the rate estimate rises (one
    half-life) fills its holder to ``holder_cap`` before spreading. A replica that does
    not report ``pinned`` (0) looks as if every slot were free, and its loads may wait.
    At most ``max_hot_keys`` adapters keep more than one home; a new one past that
    forgets the adapter ranked least recently, which falls back to one home (its other
    copies stay usable as GPU holders). ``holder_floor`` is in sequences:
    :func:`~scheduler.batch_options` sets it to the engine's batch size
    (``max_num_seqs``; the services router passes the replicas' ``max_batch_size``) up
    to :data:`~scheduler.HOLDER_FLOOR_CAP`; higher and a holder's batch grows until
    every sequence on it slows, or requests queue there while others idle; lower and hot
    adapters are copied sooner.
    Residency read from a stale view can send a request to a copy that is gone (a cold
    load, not an error).

    **Options for drift and overload** (off by default here, on in :class:`AdaptivePolicy`):
    ``fast_half_life_s`` adds a second, fast demand estimate (its share wins when larger);
    ``victim_aware`` ranks the cold homes by what a load there would evict (an empty
    slot first, else the least demand score among the GPU adapters, from this policy's
    placements); ``eviction_half_life_s`` sets the replicas' eviction aging apart from
    the placement demand; ``saturation_load`` (0: off) declares overload when every
    replica runs at least that many requests or has every GPU slot pinned, and then
    holders take load up to ``overload_holder_factor`` times the mean, a cold adapter
    has one home, and a load that must wait for a slot waits at the adapter's first
    home rather than at the least loaded replica.

    Raises:
        PolicyOptionError: an option out of range.
    """

    name = "cache_aware"

    def __init__(
        self,
        *,
        seed: int = 0,
        epsilon: float = 0.25,
        load_floor: int = 4,
        holder_epsilon: float = 0.5,
        holder_floor: int = 32,
        cold_choices: int = 2,
        load_weight: float = 4.0,
        cold_penalty: float = 2.0,
        shrink_ratio: float = 0.5,
        scan_width: int = 8,
        half_life_s: float = 30.0,
        demand: DemandTracker | None = None,
        max_hot_keys: int = 4096,
        fast_half_life_s: float = 0.0,
        eviction_half_life_s: float = 0.0,
        saturation_load: int = 0,
        overload_holder_factor: float = 3.0,
        victim_aware: bool = False,
    ) -> None:
        for option, value in (
            ("epsilon", epsilon),
            ("load_floor", load_floor),
            ("holder_epsilon", holder_epsilon),
            ("holder_floor", holder_floor),
            ("cold_choices", cold_choices),
            ("scan_width", scan_width),
            ("half_life_s", half_life_s),
            ("max_hot_keys", max_hot_keys),
            ("overload_holder_factor", overload_holder_factor),
        ):
            require_positive(option, value, policy=self.name)
        if min(fast_half_life_s, eviction_half_life_s, saturation_load) < 0:
            raise PolicyOptionError(
                f"policy {self.name!r}: fast_half_life_s={fast_half_life_s!r}, "
                f"eviction_half_life_s={eviction_half_life_s!r} and "
                f"saturation_load={saturation_load!r} must be >= 0 (0 turns them off)"
            )
        if cold_penalty < 0 or load_weight < 0:
            raise PolicyOptionError(
                f"policy {self.name!r}: cold_penalty={cold_penalty!r} and "
                f"load_weight={load_weight!r} must be >= 0"
            )
        if not 0 < shrink_ratio < 1:
            raise PolicyOptionError(
                f"policy {self.name!r}: shrink_ratio={shrink_ratio!r} must be in (0, 1)"
            )
        self.epsilon = epsilon
        self.load_floor = load_floor
        self.holder_epsilon = holder_epsilon
        self.holder_floor = holder_floor
        self.cold_choices = cold_choices
        self.load_weight = load_weight
        self.cold_penalty = cold_penalty
        self.shrink_ratio = shrink_ratio
        self.scan_width = scan_width
        self._owns_demand = demand is None
        self.demand = DemandTracker(half_life_s) if demand is None else demand
        self._max_hot_keys = max_hot_keys
        self._rng = random.Random(seed)
        self._rendezvous = RendezvousRanking(seed)
        self._homes: dict[str, int] = {}
        self._fast = DemandTracker(fast_half_life_s) if fast_half_life_s else None
        self.eviction_half_life_s = eviction_half_life_s or half_life_s
        self.saturation_load = saturation_load
        self.overload_holder_factor = overload_holder_factor
        self.victim_aware = bool(victim_aware)
        # Per key, log(decayed count) + last update / tau: comparing these compares the
        # decayed counts at any common time, without an exponential per key.
        self._scores: dict[str, float] = {}
        self._score_tau = self.demand.half_life_s / math.log(2)

    def home_count(self, key: str) -> int:
        """How many homes ``key`` has now (1 unless it is being replicated)."""
        return self._homes.get(key, 1)

    def homes(self, key: str, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        """The replicas that are ``key``'s homes now, first home first."""
        order = self._rendezvous.order(key, replicas)
        return [replicas[position] for position in order[: self.home_count(key)]]

    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]:
        require_replicas(replicas, self.name)
        key = adapter.key
        if not key:
            return [pow2_pair(self._rng, replicas)]
        count = len(replicas)
        loads = [r.in_flight + r.queued for r in replicas]
        total = sum(loads)
        cap = max(self.load_floor, math.ceil((1.0 + self.epsilon) * (total + 1) / count))
        holder_cap = max(
            cap,
            self.holder_floor,
            math.ceil((1.0 + self.holder_epsilon) * (total + 1) / count),
        )
        order = self._rendezvous.order(key, replicas)
        k = self._update_home_count(adapter, total, cap, count, now)
        hot = k >= 2
        choices = max(k, self.cold_choices)
        saturation = self.saturation_load
        saturated = bool(saturation) and all(
            load >= saturation or r.pinned >= r.gpu_slots
            for load, r in zip(loads, replicas, strict=True)
        )
        if saturated:
            # Every replica is saturated: throughput is set by how many requests find
            # their adapter resident, so holders take far more than their share, and a
            # cold adapter goes to its one home rather than spreading over two.
            holder_cap = max(
                holder_cap, math.ceil(self.overload_holder_factor * (total + 1) / count)
            )
            choices = k
        victim_aware = self.victim_aware
        penalty = self.cold_penalty
        # Entries are (sort key, rendezvous rank, replica); ranks are unique, so sorting
        # never compares replicas.
        groups: list[list[tuple[float, int, ReplicaView]]] = [[] for _ in range(_GROUP_COUNT)]
        spill = groups[_SPILL_GROUP]
        examined = 0
        for rank, position in enumerate(order):
            replica = replicas[position]
            load = replica.in_flight + replica.queued
            if load >= holder_cap:
                continue
            examined += 1
            if key in replica.gpu:
                if hot and rank < k and load < cap:
                    groups[_HOT_GROUP].append((load, rank, replica))
                else:
                    groups[_GPU_GROUP].append((load, rank, replica))
            elif key in replica.loading:
                groups[_LOADING_GROUP].append((load, rank, replica))
            elif load < cap:
                # Loads on one replica queue on its link and copy engine.
                load += self.load_weight * len(replica.loading)
                if replica.pinned >= replica.gpu_slots:
                    # A load here would wait for a request to finish: last resort.
                    groups[_BLOCKED_GROUP].append((rank if saturated else load, rank, replica))
                elif hot and rank < k:
                    groups[_HOT_GROUP].append((load + penalty, rank, replica))
                elif key in replica.host:
                    groups[_HOLDER_GROUP].append((load, rank, replica))
                elif key in replica.disk:
                    # A disk read costs a little more than a host copy: it loses ties.
                    groups[_HOLDER_GROUP].append((load + 0.5, rank, replica))
                elif rank < choices:
                    groups[_COLD_HOME_GROUP].append(
                        (self._victim_value(replica) if victim_aware else load, rank, replica)
                    )
                elif len(spill) < _SPILL_WINDOW:
                    spill.append((load, rank, replica))
            else:
                groups[_OVERFLOW_GROUP].append((load, rank, replica))
            if examined >= k + self.scan_width:
                break
        return [[entry[2] for entry in sorted(group)] for group in groups if group]

    def _update_home_count(
        self, adapter: AdapterDemand, total_load: int, cap: int, replica_count: int, now: float
    ) -> int:
        key = adapter.key
        rate = adapter.rate or self.demand.rate(key, now)
        total_rate = self.demand.total_rate(now)
        share = min(1.0, rate / total_rate) if total_rate > 0 else 0.0
        if self._fast is not None:
            # The fast estimate sees a flash crowd within a few of its half-lives; the
            # slow one keeps the copies while the crowd's rate decays away.
            fast_total = self._fast.total_rate(now)
            if fast_total > 0:
                share = max(share, min(1.0, self._fast.rate(key, now) / fast_total))
        need = share * (total_load + 1) / cap
        current = self._homes.get(key, 1)
        if need > current:
            updated = math.ceil(need)
        elif need < self.shrink_ratio * (current - 1):
            updated = max(1, math.ceil(need / self.shrink_ratio))
        else:
            updated = current
        updated = min(updated, replica_count)
        if updated == 1:
            self._homes.pop(key, None)
        else:
            # Re-inserting moves the key to the end, so the dict runs from the least
            # recently updated key to the most (assigning in place would keep its slot).
            if self._homes.pop(key, None) is None and len(self._homes) >= self._max_hot_keys:
                # A key that stops being requested never shrinks; forget the stalest.
                del self._homes[next(iter(self._homes))]
            self._homes[key] = updated
        return updated

    def on_placed(self, adapter: AdapterDemand, replica: ReplicaView, now: float) -> None:
        """Counts the request (base-model ones too) in the policy's own demand trackers,
        and (``victim_aware``) updates the adapter's demand score.

        A tracker passed in as ``demand`` is not touched: its owner observes requests.
        """
        key = adapter.key
        rate = self.demand.observe(key, now) if self._owns_demand else None
        if self._fast is not None:
            self._fast.observe(key, now)
        if self.victim_aware and key:
            scores = self._scores
            if len(scores) >= self.demand.max_keys:
                self._scores = scores = {k: v for k, v in scores.items() if k in self.demand}
            if rate is None:
                rate = self.demand.rate(key, now)
            scores[key] = math.log(rate) + now / self._score_tau if rate > 0 else -math.inf

    def _victim_value(self, replica: ReplicaView) -> float:
        """What a load on ``replica`` would evict, as a demand score: -inf when a slot is
        empty, else the least score among its GPU adapters (the eviction policy's
        likely victim; pinned ones are not told apart)."""
        if len(replica.gpu) + len(replica.loading) < replica.gpu_slots:
            return -math.inf
        scores = self._scores
        return min([scores.get(key, -math.inf) for key in replica.gpu], default=-math.inf)

    def new_eviction_policy(self) -> EvictionPolicy:
        """Demand-aware (decayed LFU) eviction, by use count rather than per byte.

        The tier that decides the GPU hit rate is counted in slots, one adapter each
        whatever its size, so bytes must not weigh: size-aware eviction lost up to 0.013
        of GPU hit rate in the simulator. The host and disk tiers, budgeted in bytes,
        hold several hundred adapters at the default budgets, so this matters little
        there.
        """
        return DemandAwareEviction(half_life_s=self.eviction_half_life_s, size_aware=False)


class AdaptivePolicy(CacheAwarePolicy):
    """``cache_aware`` with the options that follow drift, flash crowds and overload on.

    * ``fast_half_life_s=4``: a second demand estimate with a 4 s half-life; an
      adapter's share of the load is the larger of the two, so a flash crowd gains homes
      within seconds and keeps them while the slow estimate decays;
    * ``victim_aware``: a load goes to the cold home (or spill replica) with an empty
      slot or, failing that, whose least-demanded GPU adapter has the least demand, so a
      one-off does not push out a steady hot adapter where a cheaper victim exists;
    * ``eviction_half_life_s=120``: replicas evict by use counts that age over minutes,
      so a steady adapter outlives a burst of one-offs;
    * ``saturation_load=64``: when every replica runs at least a full batch, holders
      take up to three times the mean load and cold adapters keep one home.

    Failure modes are ``cache_aware``'s; in addition a victim score comes from this
    router's own placements, so a router that sees few requests judges victims badly.
    """

    name = "adaptive"

    def __init__(
        self,
        *,
        seed: int = 0,
        fast_half_life_s: float = 4.0,
        eviction_half_life_s: float = 120.0,
        saturation_load: int = 64,
        victim_aware: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(
            seed=seed,
            fast_half_life_s=fast_half_life_s,
            eviction_half_life_s=eviction_half_life_s,
            saturation_load=saturation_load,
            victim_aware=victim_aware,
            **options,
        )
