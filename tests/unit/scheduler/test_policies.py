"""The registry and the baseline policies, ray_multiplex against Ray Serve's source."""

from __future__ import annotations

import random

import pytest

from scheduler import POLICY_NAMES
from scheduler import AdapterDemand
from scheduler import NoReplicasError
from scheduler import PolicyOptionError
from scheduler import ReplicaView
from scheduler import UnknownPolicyError
from scheduler import make_policy
from scheduler import select_replica

ADAPTER = AdapterDemand("tenant/adapter@1", size_bytes=1 << 20, rank=8, rate=1.0)


def replicas(count: int, **loads: int) -> list[ReplicaView]:
    views = [ReplicaView(f"r{index}") for index in range(count)]
    for view in views:
        view.in_flight = loads.get(view.replica_id, 0)
    return views


def ids(groups: list[list[ReplicaView]]) -> list[list[str]]:
    return [[view.replica_id for view in group] for group in groups]


# --- registry -----------------------------------------------------------------------


def test_registry_names_every_policy_and_builds_fresh_instances() -> None:
    assert set(POLICY_NAMES) == {
        "adaptive",
        "cache_aware",
        "round_robin",
        "least_loaded",
        "consistent_hash",
        "ray_multiplex",
    }
    for name in POLICY_NAMES:
        policy = make_policy(name, seed=3)
        assert policy.name == name
        assert make_policy(name) is not policy


def test_unknown_policy_error_lists_the_known_names() -> None:
    with pytest.raises(UnknownPolicyError) as caught:
        make_policy("fastest")
    for name in POLICY_NAMES:
        assert name in str(caught.value)
    # Still a KeyError (a failed lookup), but printed as the sentence, not its repr.
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == caught.value.args[0]


def test_options_are_checked() -> None:
    assert make_policy("cache_aware", epsilon=0.5).epsilon == 0.5  # type: ignore[attr-defined]
    with pytest.raises(PolicyOptionError, match="epsilon"):
        make_policy("round_robin", epsilon=0.5)
    with pytest.raises(PolicyOptionError, match="epsilon"):
        make_policy("consistent_hash", epsilon=0)
    with pytest.raises(PolicyOptionError, match="shrink_ratio"):
        make_policy("cache_aware", shrink_ratio=1.5)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_empty_replica_list_is_an_error(name: str) -> None:
    with pytest.raises(NoReplicasError):
        make_policy(name).rank_replicas(ADAPTER, [], 0.0)


@pytest.mark.parametrize("name", POLICY_NAMES)
@pytest.mark.parametrize("key", ["", "tenant/adapter@1"])
def test_every_ranking_is_nonempty_groups_of_given_replicas(name: str, key: str) -> None:
    views = replicas(6, r1=3, r4=9)
    policy = make_policy(name, seed=1)
    for step in range(20):
        groups = policy.rank_replicas(AdapterDemand(key), views, float(step))
        assert groups and all(groups)
        flat = [view for group in groups for view in group]
        assert all(any(view is given for given in views) for view in flat)
        assert len({id(view) for view in flat}) == len(flat)
        policy.on_placed(AdapterDemand(key), select_replica(groups), float(step))


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_same_seed_same_decisions(name: str) -> None:
    def decisions(seed: int) -> list[str]:
        rng = random.Random(7)
        views = replicas(8)
        policy = make_policy(name, seed=seed)
        chosen = []
        for step in range(200):
            demand = AdapterDemand(f"t/a{rng.randrange(30)}@1", rate=rng.random())
            view = select_replica(policy.rank_replicas(demand, views, step * 0.01))
            policy.on_placed(demand, view, step * 0.01)
            view.queued += 1
            views[rng.randrange(8)].queued = 0
            chosen.append(view.replica_id)
        return chosen

    assert decisions(seed=5) == decisions(seed=5)


def test_seed_changes_the_random_choices() -> None:
    def choices(seed: int) -> list[str]:
        policy = make_policy("least_loaded", seed=seed)
        views = replicas(16)
        return [
            select_replica(policy.rank_replicas(ADAPTER, views, 0.0)).replica_id for _ in range(30)
        ]

    assert choices(1) != choices(2)


def test_select_replica_takes_the_first_of_the_first_nonempty_group() -> None:
    a, b, c = replicas(3)
    assert select_replica([[], [b, a], [c]]) is b
    with pytest.raises(NoReplicasError):
        select_replica([[], []])


# --- round robin, least loaded, consistent hash --------------------------------------


def test_round_robin_visits_every_replica_in_turn() -> None:
    policy = make_policy("round_robin")
    views = replicas(3)
    chosen = [ids(policy.rank_replicas(ADAPTER, views, 0.0)) for _ in range(4)]
    assert chosen == [[["r0"]], [["r1"]], [["r2"]], [["r0"]]]


def test_least_loaded_returns_a_pair_less_loaded_first() -> None:
    policy = make_policy("least_loaded", seed=0)
    views = replicas(8, r0=5, r1=5, r2=5, r3=5, r4=5, r5=5, r6=5, r7=0)
    for _ in range(50):
        (pair,) = policy.rank_replicas(ADAPTER, views, 0.0)
        assert len(pair) == 2 and pair[0] is not pair[1]
        assert pair[0].load <= pair[1].load


def test_consistent_hash_is_stable_and_skips_an_overloaded_home() -> None:
    policy = make_policy("consistent_hash", epsilon=0.25)
    views = replicas(8)
    (home,) = policy.rank_replicas(ADAPTER, views, 0.0)[0]
    assert all(policy.rank_replicas(ADAPTER, views, 0.0) == [[home]] for _ in range(5))
    home.in_flight = 10  # cap = ceil(1.25 * 11 / 8) = 2
    (spill,) = policy.rank_replicas(ADAPTER, views, 0.0)[0]
    assert spill is not home and spill.load < 2


def test_consistent_hash_moves_few_keys_when_a_replica_joins() -> None:
    policy = make_policy("consistent_hash")
    views = replicas(8)
    keys = [f"t/a{index}@1" for index in range(400)]
    before = {
        key: select_replica(policy.rank_replicas(AdapterDemand(key), views, 0)) for key in keys
    }
    grown = [*views, ReplicaView("r8")]
    after = {
        key: select_replica(policy.rank_replicas(AdapterDemand(key), grown, 0)) for key in keys
    }
    moved = [key for key in keys if after[key] is not before[key]]
    assert all(after[key].replica_id == "r8" for key in moved)
    assert 0 < len(moved) < len(keys) / 4


# --- ray_multiplex: Ray Serve 2.60 ------------------------------------------------------


def ray_pair_indices(rng: random.Random, count: int) -> tuple[int, int]:
    """PowerOfTwoChoicesRequestRouter.choose_replicas's draw (pow_2_router.py)."""
    i = rng.randrange(count)
    j = rng.randrange(count - 1)
    if j >= i:
        j += 1
    return i, j


def test_ray_multiplex_draws_pairs_exactly_as_ray_does() -> None:
    policy = make_policy("ray_multiplex", seed=11)
    reference = random.Random(11)
    views = replicas(5)
    for view in views:
        view.gpu.add("t/other@1")  # equal model counts: everyone is in the fewest set
    for _ in range(30):
        (pair,) = policy.rank_replicas(ADAPTER, views, 0.0)
        i, j = ray_pair_indices(reference, 5)
        assert pair == [views[i], views[j]]  # equal loads keep the draw order


def test_ray_multiplex_routes_to_holders_however_busy_they_are() -> None:
    views = replicas(4, r2=50)
    views[2].gpu.add(ADAPTER.key)
    policy = make_policy("ray_multiplex")
    for _ in range(10):
        assert policy.rank_replicas(ADAPTER, views, 0.0) == [[views[2]]]


def test_ray_multiplex_counts_loading_ids_but_not_host_or_disk() -> None:
    views = replicas(3)
    views[0].host.add(ADAPTER.key)
    views[1].disk.add(ADAPTER.key)
    views[2].loading.add(ADAPTER.key)  # _get_loading_and_loaded_model_ids reports it
    assert make_policy("ray_multiplex").rank_replicas(ADAPTER, views, 0.0) == [[views[2]]]


def test_ray_multiplex_falls_back_to_fewest_models_ignoring_load() -> None:
    views = replicas(4, r3=40)
    for view in views[:3]:
        view.gpu.update({"t/x@1", "t/y@1"})
    views[3].gpu.add("t/x@1")  # fewest models, though the busiest
    policy = make_policy("ray_multiplex")
    for _ in range(10):
        assert policy.rank_replicas(ADAPTER, views, 0.0) == [[views[3]]]


def test_ray_multiplex_full_holders_reject_and_fewest_then_all_take_over() -> None:
    views = replicas(4, r0=5, r1=5, r2=0, r3=0)
    views[0].gpu.add(ADAPTER.key)
    views[1].gpu.add(ADAPTER.key)
    views[2].gpu.update({"t/x@1", "t/y@1"})
    views[3].gpu.update({"t/x@1", "t/y@1"})
    policy = make_policy("ray_multiplex", max_ongoing_requests=5)
    # Holders r0, r1 are full (queue length 5 is not below 5); the fewest-models set is
    # r0, r1 (one model each), also full; then all replicas: r2 or r3 accept.
    for _ in range(20):
        (group,) = policy.rank_replicas(ADAPTER, views, 0.0)
        assert group and {view.replica_id for view in group} <= {"r2", "r3"}
    views[2].in_flight = views[3].in_flight = 5
    for _ in range(5):  # nobody accepts: the request waits on the holders' pair
        (group,) = policy.rank_replicas(ADAPTER, views, 0.0)
        assert {view.replica_id for view in group} == {"r0", "r1"}


def test_ray_multiplex_burst_for_a_cold_adapter_scatters() -> None:
    """The known failure: before the first load is reported, every request of a burst
    picks among all the fewest-models replicas."""
    views = replicas(8)
    policy = make_policy("ray_multiplex", seed=0)
    targets = {
        select_replica(policy.rank_replicas(ADAPTER, views, 0.0)).replica_id for _ in range(16)
    }
    assert len(targets) > 3
