"""cache_aware: tiers, bounded load, replication and shrink, stable homes."""

from __future__ import annotations

import math

import pytest

from scheduler import AdapterDemand
from scheduler import DemandTracker
from scheduler import ReplicaView
from scheduler import make_policy
from scheduler import select_replica
from scheduler._policies import CacheAwarePolicy
from scheduler.exceptions import PolicyOptionError

KEY = "tenant/adapter@1"


def replicas(count: int, load: int = 0) -> list[ReplicaView]:
    return [ReplicaView(f"r{index}", in_flight=load) for index in range(count)]


def ids(groups: list[list[ReplicaView]]) -> list[list[str]]:
    return [[view.replica_id for view in group] for group in groups]


def policy_with_total_rate(total_rate: float, **options: float) -> CacheAwarePolicy:
    """A policy reading a shared tracker whose total rate is ``total_rate`` at t=0."""
    tracker = DemandTracker(half_life_s=30.0)
    tau = 30.0 / math.log(2)
    tracker.observe("background", 0.0, weight=total_rate * tau)
    policy = make_policy("cache_aware", demand=tracker, **options)
    assert isinstance(policy, CacheAwarePolicy)
    return policy


def test_holders_are_ranked_gpu_loading_host_disk_then_non_holders() -> None:
    views = replicas(5)
    views[3].gpu.add(KEY)
    views[0].host.add(KEY)
    views[4].disk.add(KEY)
    views[1].loading.add(KEY)
    groups = ids(make_policy("cache_aware").rank_replicas(AdapterDemand(KEY), views, 0.0))
    flat = [replica_id for group in groups for replica_id in group]
    # A replica loading it beats a host copy: joining the load makes no second copy.
    assert flat[:4] == ["r3", "r1", "r0", "r4"]
    assert flat[4:] == ["r2"]
    assert groups[0] == ["r3"]


def test_within_a_tier_the_less_loaded_holder_comes_first() -> None:
    views = replicas(6, load=1)
    policy = make_policy("cache_aware")
    home = select_replica(policy.rank_replicas(AdapterDemand(KEY), views, 0.0))
    others = [view for view in views if view is not home]
    for view in others[:2]:
        view.gpu.add(KEY)
    others[0].in_flight = 3
    groups = policy.rank_replicas(AdapterDemand(KEY), views, 0.0)
    assert groups[0] == [others[1], others[0]]  # neither is the home: one group, by load


def test_an_overloaded_holder_is_skipped() -> None:
    views = replicas(4)
    views[0].gpu.add(KEY)
    views[0].in_flight = 40  # holder cap = max(cap, 32, ceil(1.5 * 41 / 4)) = 32
    views[1].host.add(KEY)
    groups = make_policy("cache_aware").rank_replicas(AdapterDemand(KEY), views, 0.0)
    assert groups[0] == [views[1]]
    assert all(view is not views[0] for group in groups for view in group)


def test_load_below_the_floor_is_never_overload() -> None:
    views = replicas(4)
    views[2].gpu.add(KEY)
    views[2].in_flight = 3  # above (1 + eps) * mean, below load_floor = 4
    assert make_policy("cache_aware").rank_replicas(AdapterDemand(KEY), views, 0.0)[0] == [views[2]]


def test_cold_adapter_has_a_stable_home_shared_by_routers_with_the_same_seed() -> None:
    views = replicas(16)
    first, second = make_policy("cache_aware", seed=4), make_policy("cache_aware", seed=4)
    homes = {}
    for index in range(200):
        key = f"t/a{index}@1"
        choice = select_replica(first.rank_replicas(AdapterDemand(key), views, 0.0))
        assert select_replica(first.rank_replicas(AdapterDemand(key), views, 1.0)) is choice
        assert select_replica(second.rank_replicas(AdapterDemand(key), views, 2.0)) is choice
        homes[key] = choice.replica_id
    # Homes spread over the replicas rather than piling up (200 keys over 16 replicas).
    per_replica = [list(homes.values()).count(view.replica_id) for view in views]
    assert min(per_replica) >= 3 and max(per_replica) <= 30
    other_seed = make_policy("cache_aware", seed=5)
    moved = sum(
        select_replica(other_seed.rank_replicas(AdapterDemand(key), views, 0.0)).replica_id != home
        for key, home in homes.items()
    )
    assert moved > 100


@pytest.mark.parametrize("change", ["add", "remove"])
def test_homes_move_minimally_when_the_replica_set_changes(change: str) -> None:
    views = replicas(10)
    policy = make_policy("cache_aware")
    keys = [f"t/a{index}@1" for index in range(300)]
    before = {
        key: select_replica(policy.rank_replicas(AdapterDemand(key), views, 0.0)) for key in keys
    }
    if change == "add":
        changed = [*views, ReplicaView("r10")]
    else:
        changed = [view for view in views if view.replica_id != "r3"]
    after = {
        key: select_replica(policy.rank_replicas(AdapterDemand(key), changed, 0.0)) for key in keys
    }
    moved = [key for key in keys if after[key] is not before[key]]
    if change == "add":
        assert all(after[key].replica_id == "r10" for key in moved)
    else:
        assert all(before[key].replica_id == "r3" for key in moved)
        assert len(moved) == sum(view.replica_id == "r3" for view in before.values())
    assert 0 < len(moved) < len(keys) / 4


def test_hot_adapter_gains_homes_as_its_rate_rises_and_shrinks_when_it_cools() -> None:
    views = replicas(8, load=6)  # total 48: cap = max(4, ceil(1.25 * 49 / 8)) = 8
    policy = policy_with_total_rate(100.0)
    homes = policy.homes(KEY, views)
    first_home = homes[0]
    first_home.gpu.add(KEY)

    def first_group(rate: float) -> list[ReplicaView]:
        return policy.rank_replicas(AdapterDemand(KEY, rate=rate), views, 0.0)[0]

    # need = share * 49 / 8: 0.3 at 5 %, 1.5 at 25 %, 3.1 at 50 %, 6.1 at 100 %.
    assert first_group(5.0) == [first_home]
    assert policy.home_count(KEY) == 1
    assert len(first_group(25.0)) == 2
    grown = first_group(50.0)
    assert policy.home_count(KEY) == 4
    assert set(map(id, grown)) == set(map(id, policy.homes(KEY, views)))
    assert grown[0] is first_home  # the only home with a GPU copy: no cold penalty
    assert policy.home_count(KEY) == 4 and len(first_group(100.0)) == 7
    # The hot homes now all hold it; as demand falls, the set shrinks back to one home.
    for home in policy.homes(KEY, views):
        home.gpu.add(KEY)
    first_group(60.0)  # need 3.7, not below 0.5 * (7 - 1): within the band, no change
    assert policy.home_count(KEY) == 7
    first_group(40.0)  # need 2.45 < 3: shrinks, to ceil(2.45 / 0.5)
    assert policy.home_count(KEY) == 5
    first_group(5.0)
    assert policy.home_count(KEY) == 1
    groups = policy.rank_replicas(AdapterDemand(KEY, rate=5.0), views, 0.0)
    # The other copies are still usable: every GPU copy in one group, least loaded
    # first, the home winning the tie.
    assert groups[0][0] is first_home and len(groups[0]) == 7


def test_replication_band_stops_flapping_at_the_boundary() -> None:
    views = replicas(8, load=6)
    policy = policy_with_total_rate(100.0)
    for rate in (20.0, 17.0, 12.0, 9.0, 17.0, 12.0):  # need 1.23 .. 0.55, all above 0.5
        policy.rank_replicas(AdapterDemand(KEY, rate=rate), views, 0.0)
        assert policy.home_count(KEY) == 2
    policy.rank_replicas(AdapterDemand(KEY, rate=7.0), views, 0.0)  # need 0.43 < 0.5
    assert policy.home_count(KEY) == 1


def test_the_hot_key_cap_forgets_the_key_ranked_least_recently() -> None:
    views = replicas(8, load=6)
    policy = policy_with_total_rate(100.0, max_hot_keys=2)
    first, second, third = "t/first@1", "t/second@1", "t/third@1"
    for key in (first, second, first):  # first was hot first but ranked again last
        policy.rank_replicas(AdapterDemand(key, rate=50.0), views, 0.0)
    assert policy.home_count(first) == policy.home_count(second) == 4
    policy.rank_replicas(AdapterDemand(third, rate=50.0), views, 0.0)
    assert policy.home_count(third) == 4
    assert policy.home_count(first) == 4  # kept its homes (and its hysteresis band)
    assert policy.home_count(second) == 1  # the stale one was forgotten


def test_idle_cluster_does_not_replicate_a_popular_adapter() -> None:
    views = replicas(8)
    policy = policy_with_total_rate(10.0)
    policy.rank_replicas(AdapterDemand(KEY, rate=10.0), views, 0.0)
    assert policy.home_count(KEY) == 1  # need = 1.0 * 1 / 4: nothing to spread


def test_hot_homes_prefer_a_gpu_copy_unless_it_is_much_busier() -> None:
    views = replicas(8, load=6)
    policy = policy_with_total_rate(100.0, cold_penalty=2.0)
    policy.rank_replicas(AdapterDemand(KEY, rate=25.0), views, 0.0)
    first, second = policy.homes(KEY, views)
    first.gpu.add(KEY)
    first.in_flight = 7
    assert policy.rank_replicas(AdapterDemand(KEY, rate=25.0), views, 0.0)[0] == [first, second]
    first.in_flight = 7
    second.in_flight = 4  # 4 + 2 < 7
    assert policy.rank_replicas(AdapterDemand(KEY, rate=25.0), views, 0.0)[0] == [second, first]


def test_spill_prefers_a_replica_that_can_start_the_load_now() -> None:
    views = replicas(6)
    policy = make_policy("cache_aware")
    assert isinstance(policy, CacheAwarePolicy)
    (home,) = policy.homes(KEY, views)
    home.in_flight = 40  # over the holder cap: the home is skipped
    groups = policy.rank_replicas(AdapterDemand(KEY), views, 0.0)
    spill = groups[-1]
    assert home not in spill and len(spill) >= 2
    for view in views:
        view.pinned = view.gpu_slots  # every slot in use by a request: loads would wait
    spill[1].pinned = view.gpu_slots - 1
    assert select_replica(policy.rank_replicas(AdapterDemand(KEY), views, 0.0)) is spill[1]


def test_base_model_requests_get_a_pair_by_load() -> None:
    views = replicas(5)
    views[2].in_flight = 9
    for _ in range(20):
        (pair,) = make_policy("cache_aware").rank_replicas(AdapterDemand(""), views, 0.0)
        assert len(pair) == 2 and pair[0].load <= pair[1].load


def test_own_tracker_counts_placements_and_a_shared_one_is_left_alone() -> None:
    own = make_policy("cache_aware")
    assert isinstance(own, CacheAwarePolicy)
    views = replicas(3)
    for step in range(10):
        own.on_placed(AdapterDemand(KEY), views[0], float(step))
    assert own.demand.rate(KEY, 10.0) > 0
    shared_tracker = DemandTracker()
    shared = make_policy("cache_aware", demand=shared_tracker)
    shared.on_placed(AdapterDemand(KEY), views[0], 0.0)
    assert len(shared_tracker) == 0


def test_a_gpu_holder_takes_load_past_the_cap_up_to_the_holder_cap() -> None:
    views = replicas(4)
    views[1].gpu.add(KEY)
    views[1].in_flight = 20  # cap = max(4, ceil(1.25 * 21 / 4)) = 7, holder cap 32
    views[2].host.add(KEY)
    groups = make_policy("cache_aware").rank_replicas(AdapterDemand(KEY), views, 0.0)
    assert groups[0] == [views[1]]  # no second copy while the holder has batch room
    small = make_policy("cache_aware", holder_floor=8).rank_replicas(AdapterDemand(KEY), views, 0.0)
    assert views[1] not in [view for group in small for view in group]


def test_a_load_goes_where_a_gpu_slot_is_free_or_unpinned() -> None:
    views = replicas(8)
    policy = make_policy("cache_aware")
    assert isinstance(policy, CacheAwarePolicy)
    (home,) = policy.homes(KEY, views)
    home.host.add(KEY)
    assert select_replica(policy.rank_replicas(AdapterDemand(KEY), views, 0.0)) is home
    home.pinned = home.gpu_slots  # every slot needed by a request there: a load waits
    groups = policy.rank_replicas(AdapterDemand(KEY), views, 0.0)
    assert select_replica(groups) is not home
    assert groups[-1] == [home]  # still ranked, last, in case every replica is pinned
    for view in views:
        view.pinned = view.gpu_slots
    assert select_replica(policy.rank_replicas(AdapterDemand(KEY), views, 0.0)) is home


def test_cold_adapters_take_the_less_loaded_of_their_first_homes() -> None:
    views = replicas(8)
    policy = make_policy("cache_aware", cold_choices=2)
    assert isinstance(policy, CacheAwarePolicy)
    first, second, *_ = [views[p] for p in policy._rendezvous.order(KEY, views)]
    assert select_replica(policy.rank_replicas(AdapterDemand(KEY), views, 0.0)) is first
    first.in_flight = 3
    assert select_replica(policy.rank_replicas(AdapterDemand(KEY), views, 0.0)) is second
    second.loading.update({"t/x@1", "t/y@1"})  # two loads on its link: 0 + 2 * 4 > 3
    assert select_replica(policy.rank_replicas(AdapterDemand(KEY), views, 0.0)) is first


@pytest.mark.parametrize(
    "option", ["holder_epsilon", "holder_floor", "cold_choices", "load_weight"]
)
def test_new_options_are_checked(option: str) -> None:
    with pytest.raises(PolicyOptionError, match=option):
        make_policy("cache_aware", **{option: -1})


def test_eviction_counts_uses_not_bytes() -> None:
    eviction = make_policy("cache_aware").new_eviction_policy()
    eviction.on_insert("big", 64 * 2**20, 0.0)
    eviction.on_access("big", 1.0)
    eviction.on_insert("small", 2**20, 2.0)
    # A GPU slot holds one adapter whatever its size: the more used one stays.
    assert eviction.victim(["big", "small"], 3.0) == "small"
