"""Eviction policies: LRU and the demand-aware (decayed frequency per byte) one."""

from __future__ import annotations

from scheduler import DemandAwareEviction
from scheduler import LRUEviction
from scheduler import make_policy


def test_lru_evicts_the_least_recently_touched_candidate() -> None:
    lru = LRUEviction()
    for step, key in enumerate(["a", "b", "c"]):
        lru.on_insert(key, 1, float(step))
    lru.on_access("a", 3.0)
    assert lru.victim(["a", "b", "c"], 4.0) == "b"
    assert lru.victim(["a", "c"], 4.0) == "c"
    assert lru.victim([], 4.0) is None


def test_demand_aware_keeps_the_frequent_adapter_that_lru_would_evict() -> None:
    demand_aware, lru = DemandAwareEviction(half_life_s=60.0), LRUEviction()
    for policy in (demand_aware, lru):
        policy.on_insert("hot", 1000, 0.0)
        for step in range(20):
            policy.on_access("hot", 0.1 * step)
        policy.on_insert("one-off", 1000, 5.0)  # touched more recently, once
    assert lru.victim(["hot", "one-off"], 6.0) == "hot"
    assert demand_aware.victim(["hot", "one-off"], 6.0) == "one-off"


def test_demand_aware_ages_out_a_once_hot_adapter() -> None:
    policy = DemandAwareEviction(half_life_s=1.0)
    policy.on_insert("was-hot", 1000, 0.0)
    for _ in range(50):
        policy.on_access("was-hot", 0.0)
    policy.on_insert("now-warm", 1000, 20.0)
    for step in range(3):
        policy.on_access("now-warm", 20.0 + step)
    # 25 half-lives later the 51 old uses weigh less than 4 recent ones.
    assert policy.victim(["was-hot", "now-warm"], 25.0) == "was-hot"


def test_demand_aware_evicts_the_larger_of_equally_used_adapters() -> None:
    policy = DemandAwareEviction(half_life_s=30.0)
    policy.on_insert("small", 1 << 20, 0.0)
    policy.on_insert("large", 64 << 20, 0.0)
    assert policy.victim(["small", "large"], 1.0) == "large"
    size_blind = DemandAwareEviction(half_life_s=30.0, size_aware=False)
    size_blind.on_insert("small", 1 << 20, 0.0)
    size_blind.on_insert("large", 64 << 20, 1.0)
    # Size blind, one use each: the older use has decayed more.
    assert size_blind.victim(["small", "large"], 2.0) == "small"


def test_demand_aware_evicts_unknown_candidates_first_and_handles_empty() -> None:
    policy = DemandAwareEviction()
    policy.on_insert("known", 10, 0.0)
    assert policy.victim(["known", "stranger"], 1.0) == "stranger"
    assert policy.victim([], 1.0) is None


def test_removed_adapter_keeps_its_history_when_it_returns() -> None:
    policy = DemandAwareEviction(half_life_s=60.0)
    policy.on_insert("regular", 10, 0.0)
    for step in range(10):
        policy.on_access("regular", float(step))
    policy.on_remove("regular")
    policy.on_insert("newcomer", 10, 11.0)
    policy.on_insert("regular", 10, 12.0)
    assert policy.victim(["regular", "newcomer"], 13.0) == "newcomer"


def test_each_policy_names_its_eviction() -> None:
    assert isinstance(make_policy("cache_aware").new_eviction_policy(), DemandAwareEviction)
    for name in ("ray_multiplex", "round_robin", "least_loaded", "consistent_hash"):
        assert isinstance(make_policy(name).new_eviction_policy(), LRUEviction)
    first, second = (make_policy("ray_multiplex").new_eviction_policy() for _ in range(2))
    assert first is not second  # one per replica tier
