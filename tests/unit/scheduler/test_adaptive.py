"""adaptive: demand that follows drift and flash crowds, victim-aware loads, overload.

Each test drives the policy the way a router does (rank, take the first replica, tell
the policy with ``on_placed``) and checks a behaviour that ``cache_aware`` lacks, so the
same assertion on the old policy would fail where it says so.
"""

from __future__ import annotations

import itertools

import pytest

from scheduler import AdapterDemand
from scheduler import ReplicaView
from scheduler import make_policy
from scheduler import select_replica
from scheduler._policies import AdaptivePolicy
from scheduler._policies import CacheAwarePolicy

BACKGROUND = [f"tenant{i}/steady{i}@1" for i in range(40)]


def replicas(count: int, load: int = 8, slots: int = 16) -> list[ReplicaView]:
    return [ReplicaView(f"r{i}", in_flight=load, gpu_slots=slots) for i in range(count)]


def place(policy: CacheAwarePolicy, key: str, views: list[ReplicaView], now: float) -> ReplicaView:
    """One routing decision as the router makes it (the rate is the policy's own)."""
    view = select_replica(policy.rank_replicas(AdapterDemand(key), views, now))
    policy.on_placed(AdapterDemand(key), view, now)
    return view


def warm_up(policy: CacheAwarePolicy, views: list[ReplicaView], until: float) -> None:
    """A minute of steady traffic: 20 requests/s spread evenly over 40 adapters."""
    keys = itertools.cycle(BACKGROUND)
    for step in range(int(until * 20)):
        place(policy, next(keys), views, step / 20)


def build(name: str, **options: object) -> CacheAwarePolicy:
    policy = make_policy(name, seed=3, **options)
    assert isinstance(policy, CacheAwarePolicy)
    return policy


def test_adaptive_is_the_default_and_cache_aware_is_kept() -> None:
    from scheduler import POLICY_NAMES

    assert POLICY_NAMES[:2] == ("adaptive", "cache_aware")
    assert isinstance(make_policy("adaptive"), AdaptivePolicy)
    assert type(make_policy("cache_aware")) is CacheAwarePolicy


@pytest.mark.parametrize(("name", "caught"), [("adaptive", True), ("cache_aware", False)])
def test_a_flash_crowd_gets_a_second_home_within_two_seconds(name: str, caught: bool) -> None:
    views = replicas(8)
    policy = build(name)
    warm_up(policy, views, until=60.0)
    flash = "tenant99/flash@1"
    background = itertools.cycle(BACKGROUND)
    now = 60.0
    # The flash adapter at 20 requests/s on top of the steady 20/s, for two seconds.
    for _ in range(40):
        now += 0.025
        place(policy, flash, views, now)
        now += 0.025
        place(policy, next(background), views, now)
    # Half the traffic is the flash adapter: with 8 replicas it needs about 3 homes. The
    # 30 s estimate alone has risen to ~4% of its new rate after 2 s and sees no need.
    assert (policy.home_count(flash) >= 2) is caught
    if caught:
        homes = set()
        for i in range(8):
            view = place(policy, flash, views, now + 0.001 * i)
            view.mark_placed(flash)  # the router's optimistic update
            homes.add(view.replica_id)
        assert len(homes) >= 2  # the copies take requests, not only the count


def test_after_a_re_rank_the_new_hot_adapter_gains_homes_and_the_old_one_loses_them() -> None:
    views = replicas(8)
    policy = build("adaptive")
    old_hot, new_hot = "tenant1/was-hot@1", "tenant2/now-hot@1"
    background = itertools.cycle(BACKGROUND)
    now = 0.0
    for _ in range(1200):  # a minute: half the requests for old_hot
        now += 0.025
        place(policy, old_hot, views, now)
        now += 0.025
        place(policy, next(background), views, now)
    assert policy.home_count(old_hot) >= 2
    # The re-rank: new_hot takes old_hot's place in the request stream.
    placed = 0
    while policy.home_count(new_hot) < 2 and placed < 200:
        now += 0.025
        place(policy, new_hot, views, now)
        placed += 1
        now += 0.025
        place(policy, next(background), views, now)
    # 20 of its requests a second, half the traffic: the 4 s estimate passes the share
    # that needs a second home (about 1/6 here) after 2.4 s, about 48 requests.
    assert placed <= 60, f"the new hot adapter needed {placed} requests to gain a home"
    # Old_hot's demand cools; its next request (three minutes on) finds one home again.
    for _ in range(3 * 60 * 20):
        now += 0.05
        place(policy, next(background), views, now)
    place(policy, old_hot, views, now)
    assert policy.home_count(old_hot) == 1


@pytest.mark.parametrize(("name", "spares_hot"), [("adaptive", True), ("cache_aware", False)])
def test_a_one_off_is_loaded_where_it_evicts_a_cold_adapter(name: str, spares_hot: bool) -> None:
    views = replicas(2, load=2)
    policy = build(name)
    one_off = "tenant7/one-off@1"
    home, other = (
        (views[0], views[1])
        if policy.homes(one_off, views)[0] is views[0]
        else (views[1], views[0])
    )
    hot = [f"tenant3/hot{i}@1" for i in range(16)]
    cold = [f"tenant4/cold{i}@1" for i in range(16)]
    home.gpu.update(hot)
    other.gpu.update(cold)
    for key in cold:  # each seen once, long ago
        policy.on_placed(AdapterDemand(key), other, 0.0)
    for step in range(600):  # the hot ones steadily, for a minute
        policy.on_placed(AdapterDemand(hot[step % 16]), home, 60.0 + step / 10)
    chosen = select_replica(policy.rank_replicas(AdapterDemand(one_off), views, 120.0))
    # Both are its cold homes with a free (unpinned) slot and the same load; the old
    # policy takes its first home and evicts a hot adapter there.
    assert (chosen is other) is spares_hot


def test_an_empty_slot_is_the_cheapest_victim() -> None:
    views = replicas(2, load=2)
    policy = build("adaptive")
    one_off = "tenant7/one-off@1"
    home = policy.homes(one_off, views)[0]
    other = views[1] if home is views[0] else views[0]
    home.gpu.update(f"tenant5/x{i}@1" for i in range(16))
    other.gpu.update(f"tenant6/y{i}@1" for i in range(15))
    for key in home.gpu:
        policy.on_placed(AdapterDemand(key), home, 0.0)
    for key in other.gpu:  # busier adapters, but a slot is empty
        for step in range(10):
            policy.on_placed(AdapterDemand(key), other, step)
    assert select_replica(policy.rank_replicas(AdapterDemand(one_off), views, 10.0)) is other


def test_adaptive_eviction_keeps_a_steady_adapter_over_a_burst_of_one_offs() -> None:
    eviction = build("adaptive").new_eviction_policy()
    steady = "tenant1/steady@1"
    eviction.on_insert(steady, 1, 0.0)
    for second in range(1, 120):  # one request a second for two minutes
        eviction.on_access(steady, float(second))
    burst = "tenant2/burst@1"
    eviction.on_insert(burst, 1, 120.0)
    for _ in range(20):  # a one-off burst of 20 requests in the same second
        eviction.on_access(burst, 120.5)
    assert eviction.victim([steady, burst], 125.0) == burst


def saturated(views: list[ReplicaView]) -> None:
    for view in views:
        view.in_flight, view.queued, view.pinned = 64, 40, view.gpu_slots


def test_at_overload_a_busy_holder_is_preferred_over_balance() -> None:
    key = "tenant1/adapter@1"
    policy = build("adaptive")
    views = replicas(8)
    saturated(views)
    holder = views[5]
    holder.gpu.add(key)
    holder.queued += 150  # 2.4x the mean load: beyond holder_cap, within 3x the mean
    assert select_replica(policy.rank_replicas(AdapterDemand(key), views, 0.0)) is holder
    # The same holder is skipped while some replica still has room (not saturated).
    views[0].in_flight, views[0].queued, views[0].pinned = 4, 0, 4
    assert select_replica(policy.rank_replicas(AdapterDemand(key), views, 0.0)) is not holder


def test_at_overload_a_cold_adapter_waits_at_its_home_not_the_least_loaded() -> None:
    key = "tenant1/cold@1"
    for name, at_home in (("adaptive", True), ("cache_aware", False)):
        policy = build(name)
        views = replicas(8)
        saturated(views)
        home = policy.homes(key, views)[0]
        home.queued += 20  # a little busier than the rest
        chosen = select_replica(policy.rank_replicas(AdapterDemand(key), views, 0.0))
        # Every slot everywhere is pinned: the load waits wherever it goes, and at its
        # home the adapter's later requests share the one copy.
        assert (chosen is home) is at_home, name


def test_adaptive_options_are_checked() -> None:
    from scheduler.exceptions import PolicyOptionError

    with pytest.raises(PolicyOptionError, match="fast_half_life_s"):
        make_policy("adaptive", fast_half_life_s=-1.0)
    with pytest.raises(PolicyOptionError, match="overload_holder_factor"):
        make_policy("adaptive", overload_holder_factor=0.0)
    # Options of the base policy pass through the subclass.
    assert make_policy("adaptive", epsilon=0.5).epsilon == 0.5  # type: ignore[attr-defined]
