"""The discrete-event simulator: conservation, a hand-computed schedule, the bound."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from scheduler import POLICY_NAMES
from scheduler import AdapterDemand
from scheduler import CostProfile
from scheduler import EvictionPolicy
from scheduler import LRUEviction
from scheduler import ReplicaView
from scheduler import SchedulerError
from scheduler import SimConfig
from scheduler import SynthSpec
from scheduler import Tier
from scheduler import TraceRequest
from scheduler import UnknownProfileError
from scheduler import cost_profile
from scheduler import make_policy
from scheduler import simulate
from scheduler import synthesize
from tests.fakes import RecordingPolicy

# Round numbers so the schedule below can be worked out by hand: a 100-byte adapter
# takes 2 + 1 = 3 s from S3 and 0.5 + 1 = 1.5 s from host to GPU; a step over b
# sequences prefilling p tokens takes 1 + 0.5 b + 0.01 p seconds; at most 2 run at once.
HAND = CostProfile(
    name="hand",
    description="round numbers for a hand-computed schedule",
    bytes_per_rank=1,
    default_rank=100,
    s3_latency_s=2.0,
    s3_bytes_per_s=100.0,
    disk_latency_s=0.5,
    disk_bytes_per_s=100.0,
    h2d_fixed_s=0.5,
    h2d_bytes_per_s=100.0,
    step_base_s=1.0,
    step_per_seq_s=0.5,
    prefill_per_token_s=0.01,
    max_batch=2,
)


class FirstReplicaPolicy(RecordingPolicy):
    """Every request to the first replica; records what it was told."""

    name = "first_replica"

    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]:
        return [list(replicas)]


def test_one_replica_matches_the_hand_computed_schedule() -> None:
    trace = [
        TraceRequest(0.0, "a", 100, 3),  # r0: cold load of a (S3 0-3, copy 3-4.5)
        TraceRequest(1.0, "a", 0, 1),  # r1: a is loading: a miss that starts no load
        TraceRequest(2.0, "b", 0, 2),  # r2: b needs the only slot, pinned by a: waits
        TraceRequest(2.5, "", 0, 1),  # r3: base model, runs at once: step 2.5-4.0
        TraceRequest(8.0, "a", 0, 1),  # r4: a is on the GPU: a hit; interrupts at 9.0
    ]
    # 4.5: a loaded; r0+r1 admitted, prefill 100 tokens: step 4.5-7.5 (1+1+1 s), both get
    #      their first token; r1 (1 token) finishes.
    # 7.5: r0 alone, 1.5 s steps, next completion at step 4 = 10.5, but r4 arrives at 8.0
    #      so the run stops at the boundary 9.0; r0+r4 step 9.0-11.0 finishes both.
    # 11.0: a unpinned, evicted for b: S3 11-14, copy 14-15.5; r2 steps 15.5-17, 17-18.5.
    policy = FirstReplicaPolicy()
    result = simulate(trace, policy, SimConfig(replicas=1, gpu_slots=1, profile=HAND))
    outcomes = result.outcomes
    assert [o.first_token_s for o in outcomes] == pytest.approx([7.5, 7.5, 17.0, 4.0, 11.0])
    assert [o.finish_s for o in outcomes] == pytest.approx([11.0, 7.5, 18.5, 4.0, 11.0])
    assert [o.tier for o in outcomes] == [Tier.NONE, Tier.LOADING, Tier.NONE, Tier.GPU, Tier.GPU]
    assert result.completions == 5
    assert result.cold_loads == 2 and result.s3_bytes == 200
    assert result.gpu_hit_rate == pytest.approx(1 / 4)  # the base request is not counted
    assert result.loading_hit_rate == pytest.approx(1 / 4)
    assert result.ttft_p50_s == pytest.approx(6.5)  # TTFTs 7.5, 6.5, 15.0, 1.5, 3.0
    assert result.load_imbalance == pytest.approx(1.0)
    assert result.throughput_rps == pytest.approx(5 / 18.5)
    # Busy 2.5-4, 4.5-11 and 15.5-18.5: 11 s of the 18.5 s span.
    assert result.mean_utilization == pytest.approx(11 / 18.5)
    assert [(a.key, r.replica_id) for a, r in policy.placed] == [
        (r.adapter, "replica-000") for r in trace
    ]


def test_imbalance_is_max_over_mean_busy_time() -> None:
    trace = [TraceRequest(float(i), "a", 0, 2) for i in range(4)]
    config = SimConfig(replicas=2, gpu_slots=1, profile=HAND)
    result = simulate(trace, FirstReplicaPolicy(), config)  # the second replica idles
    assert result.load_imbalance == pytest.approx(2.0)
    assert result.occupancy_imbalance == pytest.approx(2.0)
    assert {o.replica for o in result.outcomes} == {0}


def test_a_host_hit_skips_s3_and_a_disk_hit_skips_the_host() -> None:
    # Two slots' worth of adapters cycle through one slot, so a comes back from host.
    trace = [
        TraceRequest(0.0, "a", 0, 1),
        TraceRequest(10.0, "b", 0, 1),
        TraceRequest(20.0, "a", 0, 1),
    ]
    config = SimConfig(replicas=1, gpu_slots=1, profile=HAND)
    result = simulate(trace, FirstReplicaPolicy(), config)
    assert [o.tier for o in result.outcomes] == [Tier.NONE, Tier.NONE, Tier.HOST]
    assert result.cold_loads == 2
    # From host only the copy remains: 1.5 s, then a 1.5 s step.
    assert result.outcomes[2].first_token_s == pytest.approx(23.0)
    # With no host budget, a comes back from disk: 1.5 s read + 1.5 s copy + 1.5 s step.
    no_host = simulate(trace, FirstReplicaPolicy(), dataclasses.replace(config, host_cache_mb=0))
    assert no_host.outcomes[2].tier is Tier.DISK
    assert no_host.outcomes[2].first_token_s == pytest.approx(24.5)


def test_stale_views_hide_residency_until_the_refresh() -> None:
    seen: list[Tier] = []

    class Recorder(FirstReplicaPolicy):
        def rank_replicas(self, adapter, replicas, now):  # type: ignore[no-untyped-def]
            seen.append(replicas[0].tier_of(adapter.key))
            return [list(replicas)]

    trace = [
        TraceRequest(0.0, "a", 0, 1),
        TraceRequest(6.0, "a", 0, 1),
        TraceRequest(11.0, "a", 0, 1),
    ]
    exact = SimConfig(replicas=1, gpu_slots=1, profile=HAND)
    simulate(trace, Recorder(), exact)
    assert seen == [Tier.NONE, Tier.GPU, Tier.GPU]
    seen.clear()
    # Refreshed at 0 (nothing) and at 11 (loaded at 4.5): at 6 the view still shows the
    # optimistic "loading" mark the router put there after placing the first request.
    simulate(trace, Recorder(), dataclasses.replace(exact, view_refresh_s=10.0))
    assert seen == [Tier.NONE, Tier.LOADING, Tier.GPU]


def test_bad_configuration_and_unknown_profiles_are_rejected() -> None:
    with pytest.raises(SchedulerError, match="replicas=0"):
        SimConfig(replicas=0, gpu_slots=1, profile=HAND)
    with pytest.raises(SchedulerError, match="'hand' is invalid"):
        dataclasses.replace(HAND, step_base_s=0.0)
    with pytest.raises(UnknownProfileError, match="a100-7b"):
        cost_profile("tpu")
    with pytest.raises(SchedulerError, match="no requests"):
        simulate([], FirstReplicaPolicy(), SimConfig(replicas=1, gpu_slots=1, profile=HAND))


_requests = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=5, allow_nan=False),  # gap to the previous arrival
        st.sampled_from(["", "a", "b", "c", "d", "e", "f"]),
        st.integers(min_value=0, max_value=50),
        st.integers(min_value=1, max_value=6),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=_requests,
    replicas=st.integers(min_value=1, max_value=3),
    slots=st.integers(min_value=1, max_value=3),
    max_batch=st.integers(min_value=1, max_value=4),
    refresh=st.sampled_from([0.0, 0.7]),
    seed=st.integers(min_value=0, max_value=3),
)
def test_every_request_completes_once_and_no_policy_beats_the_bound_in_order(
    rows: list[tuple[float, str, int, int]],
    replicas: int,
    slots: int,
    max_batch: int,
    refresh: float,
    seed: int,
) -> None:
    trace = []
    now = 0.0
    for gap, adapter, prompt, output in rows:
        now += gap
        trace.append(TraceRequest(now, adapter, prompt, output))
    profile = dataclasses.replace(HAND, max_batch=max_batch)
    config = SimConfig(
        replicas=replicas, gpu_slots=slots, profile=profile, view_refresh_s=refresh, bound=True,
        host_cache_mb=150 / 2**20,  # room for one adapter, so host evictions happen too
    )  # fmt: skip
    for policy in [FirstReplicaPolicy(), *(make_policy(name, seed=seed) for name in POLICY_NAMES)]:
        result = simulate(trace, policy, config)
        assert result.completions == len(trace)
        for outcome in result.outcomes:
            assert 0 <= outcome.replica < replicas
            assert outcome.arrival_s < outcome.first_token_s <= outcome.finish_s
            assert not math.isnan(outcome.finish_s)
        if not result.deferred_loads:  # loads in arrival order: MIN is a strict bound
            assert result.gpu_hit_rate <= result.bound_gpu_hit_rate + 1e-12, policy.name


def test_a_deferred_load_reorders_service_and_can_beat_min_on_arrival_order() -> None:
    # One slot, a b a b: MIN on the arrival order hits nothing. Here b's load waits for
    # a's two requests (a is pinned), so the second a and, after b loads, the second b hit.
    trace = [
        TraceRequest(0.0, "a", 0, 6),
        TraceRequest(1.0, "b", 0, 1),
        TraceRequest(5.0, "a", 0, 1),
        TraceRequest(30.0, "b", 0, 1),
    ]
    config = SimConfig(replicas=1, gpu_slots=1, profile=HAND, bound=True)
    result = simulate(trace, FirstReplicaPolicy(), config)
    assert result.deferred_loads == 1
    assert [o.tier for o in result.outcomes] == [Tier.NONE, Tier.NONE, Tier.GPU, Tier.GPU]
    assert result.bound_gpu_hit_rate == 0.0 < result.gpu_hit_rate


def test_an_eviction_policy_that_picks_a_pinned_entry_is_reported() -> None:
    class EvictsAnything(LRUEviction):
        def victim(self, candidates, now):  # type: ignore[no-untyped-def]
            return "not-a-candidate"

    class Policy(FirstReplicaPolicy):
        def new_eviction_policy(self) -> EvictionPolicy:
            return EvictsAnything()

    trace = [TraceRequest(0.0, "a", 0, 1), TraceRequest(9.0, "b", 0, 1)]
    with pytest.raises(SchedulerError, match="'not-a-candidate', which is not among"):
        simulate(trace, Policy(), SimConfig(replicas=1, gpu_slots=1, profile=HAND))


def test_the_a100_profile_matches_its_documented_figures() -> None:
    profile = cost_profile("a100-7b")
    assert profile.adapter_bytes(16) == 32 * 2**20  # rank 16 on q,k,v,o of a 7B model
    assert profile.adapter_bytes(0) == profile.adapter_bytes(profile.default_rank)
    cold = profile.s3_seconds(profile.adapter_bytes(16)) + profile.h2d_seconds(
        profile.adapter_bytes(16)
    )
    assert 0.05 < cold < 0.2  # about 0.1 s, far below the 4.4 s production p50 reference
    assert profile.step_seconds(1) == pytest.approx(0.0155)


def test_a_pooled_profile_runs_like_its_replicas_sharing_the_work_evenly() -> None:
    profile = cost_profile("a100-7b")
    pooled = profile.pooled(8)
    assert pooled.max_batch == 8 * profile.max_batch
    assert pooled.step_seconds(8 * 40, 8 * 512) == pytest.approx(profile.step_seconds(40, 512))
    assert pooled.replica_capacity_rps(512, 128) == pytest.approx(
        8 * profile.replica_capacity_rps(512, 128)
    )
    size = profile.adapter_bytes(16)
    assert 8 * pooled.h2d_seconds(size) == pytest.approx(profile.h2d_seconds(size))
    assert dataclasses.replace(profile.pooled(1), name=profile.name) == profile
    with pytest.raises(SchedulerError, match="pooled replicas=0 must be >= 1"):
        profile.pooled(0)


def test_the_pooled_replica_hits_at_least_as_often_as_the_partitioned_replicas() -> None:
    # The pooled replica is the reference for what placement loses by partitioning the
    # slots; on a drifting workload the partitioned run stays below it.
    spec = SynthSpec(
        adapters=400, tenants=40, zipf_alpha=0.9, arrival_cv=2.0, rate_rps=60.0,
        duration_s=60.0, drift_period_s=20.0, flash_period_s=30.0, flash_duration_s=10.0,
        seed=5,
    )  # fmt: skip
    trace = synthesize(spec)
    profile = cost_profile("a100-7b")
    split = simulate(
        trace, make_policy("adaptive", seed=1), SimConfig(replicas=4, gpu_slots=4, profile=profile)
    )
    config = SimConfig(replicas=4, gpu_slots=4, profile=profile, view_refresh_s=0.5)
    one = config.pooled()
    assert (one.replicas, one.gpu_slots, one.view_refresh_s) == (1, 16, 0.0)
    assert one.host_cache_mb == 4 * config.host_cache_mb and one.profile == profile.pooled(4)
    pooled = simulate(trace, make_policy("adaptive", seed=1), one)
    assert split.gpu_hit_rate < pooled.gpu_hit_rate < 1.0


class MeasuringPolicy(FirstReplicaPolicy):
    """FirstReplicaPolicy that records ``measure(adapter, replicas)`` at each decision."""

    def __init__(self, measure: Callable[[AdapterDemand, Sequence[ReplicaView]], Any]) -> None:
        super().__init__()
        self._measure = measure
        self.seen: list[Any] = []

    def rank_replicas(
        self, adapter: AdapterDemand, replicas: Sequence[ReplicaView], now: float
    ) -> list[list[ReplicaView]]:
        self.seen.append(self._measure(adapter, replicas))
        return super().rank_replicas(adapter, replicas, now)


def test_the_rate_a_policy_ranks_with_excludes_the_request_being_placed() -> None:
    # As in the services router: demand is counted once the request is placed.
    trace = [TraceRequest(0.0, "a", 0, 1), TraceRequest(0.0, "a", 0, 1)]
    policy = MeasuringPolicy(lambda adapter, replicas: adapter.rate)
    simulate(trace, policy, SimConfig(replicas=1, gpu_slots=1, profile=HAND))
    tau = 30.0 / math.log(2)  # SimConfig's default demand half-life
    assert policy.seen == [0.0, pytest.approx(1.0 / tau)]


@pytest.mark.parametrize("refresh", [0.0, 0.001])
def test_views_report_pinned_slots(refresh: float) -> None:
    trace = [
        TraceRequest(0.0, "a", 100, 3),  # nothing pinned yet
        TraceRequest(1.0, "a", 0, 1),  # a loading: 1
        TraceRequest(2.0, "b", 0, 2),  # a still loading: 1
        TraceRequest(2.5, "", 0, 1),  # a loading, b waiting for the slot: 2
        TraceRequest(8.0, "a", 0, 1),  # a on the GPU with a request running, b waiting: 2
    ]
    policy = MeasuringPolicy(lambda adapter, replicas: replicas[0].pinned)
    config = SimConfig(replicas=1, gpu_slots=1, profile=HAND, view_refresh_s=refresh)
    result = simulate(trace, policy, config)
    assert policy.seen == [0, 1, 1, 2, 2]
    # Only r4 hit the GPU (TTFT 3.0); r3, the base-model request, is not counted.
    assert result.ttft_p99_gpu_hit_s == pytest.approx(3.0)


def test_stale_views_take_the_routers_optimistic_update_between_refreshes() -> None:
    trace = [
        TraceRequest(0.0, "a", 0, 1),
        TraceRequest(0.1, "a", 0, 1),  # the view still has the first refresh: 0 pins
        TraceRequest(0.2, "b", 0, 1),
    ]
    policy = MeasuringPolicy(lambda adapter, replicas: replicas[0].pinned)
    config = SimConfig(replicas=1, gpu_slots=2, profile=HAND, view_refresh_s=100.0)
    simulate(trace, policy, config)
    # a marked loading (one slot) on its first placement; its second joins that load.
    assert policy.seen == [0, 1, 1]


@pytest.mark.parametrize(("exact_load", "expected"), [(False, [0, 1, 2]), (True, [0, 1, 0])])
def test_exact_load_reads_queue_lengths_at_every_decision_between_refreshes(
    exact_load: bool, expected: list[int]
) -> None:
    trace = [
        TraceRequest(0.0, "a", 0, 1),
        TraceRequest(0.1, "a", 0, 1),
        TraceRequest(50.0, "a", 0, 1),  # both done by now; no refresh since 0
    ]
    policy = MeasuringPolicy(lambda adapter, replicas: replicas[0].load)
    config = SimConfig(
        replicas=1, gpu_slots=1, profile=HAND, view_refresh_s=100.0, exact_load=exact_load
    )
    simulate(trace, policy, config)
    assert policy.seen == expected


def test_without_optimistic_views_residency_waits_for_the_next_report() -> None:
    # Ray's multiplexed routing: a load the router started is unknown until reported.
    trace = [
        TraceRequest(0.0, "a", 0, 1),
        TraceRequest(6.0, "a", 0, 1),
        TraceRequest(11.0, "a", 0, 1),
    ]
    policy = MeasuringPolicy(lambda adapter, replicas: replicas[0].tier_of(adapter.key))
    config = SimConfig(
        replicas=1, gpu_slots=1, profile=HAND, view_refresh_s=10.0, optimistic_views=False
    )
    simulate(trace, policy, config)
    assert policy.seen == [Tier.NONE, Tier.NONE, Tier.GPU]


def test_replica_ids_name_the_replicas_and_must_be_one_distinct_name_each() -> None:
    policy = MeasuringPolicy(lambda adapter, replicas: [r.replica_id for r in replicas])
    config = SimConfig(replicas=2, gpu_slots=1, profile=HAND, replica_ids=("x1", "y2"))
    simulate([TraceRequest(0.0, "a", 0, 1)], policy, config)
    assert policy.seen == [["x1", "y2"]]
    for ids in (("x1",), ("x1", "x1")):
        with pytest.raises(SchedulerError, match="replica_ids must be 2 distinct names"):
            SimConfig(replicas=2, gpu_slots=1, profile=HAND, replica_ids=ids)
