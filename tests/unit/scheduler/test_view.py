"""ClusterView: ordering, optimistic updates, staleness, snapshots, the wire format."""

from __future__ import annotations

import json

import pytest

from scheduler import AdapterDemand as Demand
from scheduler import ClusterView
from scheduler import LoadChanged
from scheduler import ReplicaGone
from scheduler import ReplicaSnapshot
from scheduler import ReplicaView
from scheduler import ResidencyChanged
from scheduler import Tier
from scheduler import UnknownReplicaError
from scheduler import ViewEventError
from scheduler import decode_event
from scheduler import encode_event
from scheduler import make_policy
from scheduler import replica_key
from scheduler import residency_channel
from scheduler import select_replica
from scheduler import snapshot_from_hash
from scheduler import snapshot_to_hash

KEY = "tenant/adapter@1"


def snapshot(
    replica_id: str = "r0", seq: int = 1, epoch: str = "e1", **fields: object
) -> ReplicaSnapshot:
    return ReplicaSnapshot(replica_id=replica_id, epoch=epoch, seq=seq, at=0.0, **fields)  # type: ignore[arg-type]


def residency(
    seq: int, key: str = KEY, tier: Tier = Tier.GPU, present: bool = True, epoch: str = "e1"
) -> ResidencyChanged:
    return ResidencyChanged("r0", epoch, seq, 0.0, key, tier, present)


def test_snapshot_installs_a_replica_and_deltas_apply_in_order() -> None:
    view = ClusterView()
    assert view.apply(snapshot(gpu=frozenset({"t/a@1"}), in_flight=2), now=0.0)
    replica = view.get("r0")
    assert replica.gpu == {"t/a@1"} and replica.load == 2
    assert view.apply(residency(2, tier=Tier.HOST), now=0.1)
    assert view.apply(LoadChanged("r0", "e1", 3, 0.0, in_flight=1, queued=4), now=0.2)
    assert view.apply(residency(4, key="t/a@1", present=False), now=0.3)
    assert replica.tier_of(KEY) is Tier.HOST and replica.tier_of("t/a@1") is Tier.NONE
    assert (replica.in_flight, replica.queued) == (1, 4)
    assert view.stats.applied == 4


def test_stale_and_duplicate_events_are_dropped() -> None:
    view = ClusterView()
    view.apply(snapshot(seq=5), now=0.0)
    assert not view.apply(residency(5), now=0.1)  # duplicate
    assert not view.apply(residency(3), now=0.1)  # reordered, older
    assert not view.apply(snapshot(seq=4, gpu=frozenset({KEY})), now=0.1)
    assert view.get("r0").tier_of(KEY) is Tier.NONE
    assert view.stats.dropped_stale == 3


def test_a_gap_applies_the_delta_but_asks_for_a_snapshot() -> None:
    view = ClusterView(staleness_bound_s=10.0)
    view.apply(snapshot(seq=1), now=0.0)
    assert view.needs_snapshot(now=0.0) == []
    assert view.apply(residency(5), now=0.1)  # 2..4 were lost
    assert view.get("r0").tier_of(KEY) is Tier.GPU
    assert view.needs_snapshot(now=0.1) == ["r0"] and view.stats.gaps == 1
    view.apply(snapshot(seq=6), now=0.2)
    assert view.needs_snapshot(now=0.2) == []


def test_after_a_gap_a_snapshot_at_the_same_seq_repairs_the_replica() -> None:
    view = ClusterView(staleness_bound_s=10.0)
    view.apply(snapshot(seq=1), now=0.0)
    view.apply(residency(5), now=0.1)  # 2..4 were lost; the hash holds the state at 5

    assert view.apply(snapshot(seq=5, host=frozenset({"t/lost@1"})), now=0.2)

    assert view.get("r0").tier_of("t/lost@1") is Tier.HOST
    assert view.needs_snapshot(now=0.2) == []
    assert not view.apply(snapshot(seq=5), now=0.3)  # once repaired, a duplicate again


def test_a_new_epoch_needs_its_snapshot_before_deltas() -> None:
    view = ClusterView()
    view.apply(snapshot(seq=40, gpu=frozenset({KEY})), now=0.0)
    # The replica restarted: its numbering starts again, under a new epoch.
    assert not view.apply(residency(1, key="t/b@1", epoch="e2"), now=0.1)
    assert view.needs_snapshot(now=0.1) == ["r0"]
    assert view.apply(snapshot(seq=1, epoch="e2"), now=0.2)
    assert view.get("r0").gpu == set()
    assert view.apply(residency(2, key="t/b@1", epoch="e2"), now=0.3)


def test_deltas_for_unknown_replicas_are_dropped() -> None:
    view = ClusterView()
    assert not view.apply(residency(1), now=0.0)
    assert len(view) == 0 and view.stats.dropped_unknown == 1


def test_placement_is_optimistic_until_the_replica_reports() -> None:
    view = ClusterView()
    view.apply(snapshot(host=frozenset({"t/warm@1"})), now=0.0)
    view.on_placed("r0", KEY, now=0.1)
    view.on_placed("r0", "t/warm@1", now=0.1)
    view.on_placed("r0", "", now=0.1)  # base model: load only
    replica = view.get("r0")
    assert replica.queued == 3
    assert replica.loading == {KEY}  # the host copy is resident: not marked loading
    # The replica reports the GPU copy: the optimistic "loading" mark goes.
    view.apply(residency(2), now=0.2)
    assert replica.loading == set() and replica.tier_of(KEY) is Tier.GPU
    view.apply(LoadChanged("r0", "e1", 3, 0.0, in_flight=3, queued=0), now=0.3)
    assert (replica.in_flight, replica.queued) == (3, 0)


@pytest.mark.parametrize(
    ("tier", "loading", "pinned"),
    [
        ("", {KEY}, 1),  # nowhere: a load from S3 starts, marked loading, takes a slot
        ("host", set(), 1),  # a cheap load: not marked, but it will take a slot
        ("disk", set(), 1),
        ("loading", {KEY}, 0),  # the load in progress already holds its slot
        ("gpu", set(), 0),  # whether a request already pins it is unknown: not counted
    ],
)
def test_mark_placed_counts_the_request_and_the_slot_its_load_needs(
    tier: str, loading: set[str], pinned: int
) -> None:
    replica = ReplicaView("r0", queued=2)
    if tier:
        getattr(replica, tier).add(KEY)
    assert replica.mark_placed(KEY) is (tier == "")
    assert replica.queued == 3
    assert replica.loading == loading and replica.pinned == pinned
    assert replica.mark_placed("") is False  # the base model: load only
    assert (replica.queued, replica.pinned) == (4, pinned)


def test_optimistic_pins_last_until_the_next_load_report_or_snapshot() -> None:
    view = ClusterView()
    view.apply(snapshot(), now=0.0)
    view.on_placed("r0", KEY, now=0.1)
    view.on_placed("r0", KEY, now=0.1)  # joins the load it marked: no second slot
    replica = view.get("r0")
    assert replica.pinned == 1
    view.apply(LoadChanged("r0", "e1", 2, 0.0, in_flight=2, queued=0), now=0.2)
    assert replica.pinned == 0  # the wire carries no pins: the report replaces the guess
    view.on_placed("r0", "t/other@1", now=0.3)
    view.apply(snapshot(seq=3), now=0.4)
    assert replica.pinned == 0


def test_snapshot_reconciles_optimistic_marks() -> None:
    view = ClusterView()
    view.apply(snapshot(), now=0.0)
    view.on_placed("r0", KEY, now=0.1)
    view.apply(snapshot(seq=2, in_flight=1), now=0.2)
    replica = view.get("r0")
    assert replica.loading == set() and replica.load == 1


def test_reported_loading_survives_an_optimistic_mark_being_confirmed() -> None:
    view = ClusterView()
    view.apply(snapshot(), now=0.0)
    view.on_placed("r0", KEY, now=0.1)
    view.apply(residency(2, tier=Tier.LOADING), now=0.2)
    assert view.get("r0").loading == {KEY}


def test_finished_requests_come_off_the_load() -> None:
    view = ClusterView()
    view.apply(snapshot(in_flight=1, queued=1), now=0.0)
    view.on_finished("r0", now=1.0)
    view.on_finished("r0", now=1.0)
    view.on_finished("r0", now=1.0)
    assert view.get("r0").load == 0
    view.on_finished("gone", now=1.0)  # a replica that left: ignored


def test_placing_on_an_unknown_replica_is_an_error() -> None:
    with pytest.raises(UnknownReplicaError, match="r9"):
        ClusterView().on_placed("r9", KEY, now=0.0)
    with pytest.raises(UnknownReplicaError):
        ClusterView().get("r9")


def test_staleness_is_measured_per_replica_and_bounded() -> None:
    view = ClusterView(staleness_bound_s=2.0)
    view.apply(snapshot("r0"), now=0.0)
    view.apply(snapshot("r1"), now=1.0)
    view.apply(ReplicaSnapshot("r2", "e1", 1, at=2.0), now=2.5)
    assert view.staleness(now=3.0) == {"r0": 3.0, "r1": 2.0, "r2": 0.5}
    assert view.max_staleness(now=3.0) == 3.0
    assert view.needs_snapshot(now=3.0) == ["r0"]
    assert view.stats.max_lag_s == 1.0  # r1: published at t=0, applied at t=1
    assert ClusterView().max_staleness(now=1.0) == 0.0


def test_membership_changes_rebuild_the_sorted_replica_list_only_then() -> None:
    view = ClusterView()
    view.apply(snapshot("r1"), now=0.0)
    view.apply(snapshot("r0"), now=0.0)
    listed = view.replicas()
    assert [replica.replica_id for replica in listed] == ["r0", "r1"]
    view.apply(ResidencyChanged("r1", "e1", 2, 0.0, KEY, Tier.GPU, True), now=0.1)
    assert view.replicas() is listed
    view.apply(ReplicaGone("r1", "e1", 3, 0.0), now=0.2)
    assert [replica.replica_id for replica in view.replicas()] == ["r0"]
    assert "r1" not in view


def test_replace_all_resyncs_the_whole_view() -> None:
    view = ClusterView()
    view.apply(snapshot("r0"), now=0.0)
    view.apply(snapshot("r1"), now=0.0)
    view.replace_all([snapshot("r1", seq=2, gpu=frozenset({KEY})), snapshot("r2")], now=1.0)
    assert [replica.replica_id for replica in view.replicas()] == ["r1", "r2"]
    assert view.get("r1").tier_of(KEY) is Tier.GPU


def test_policies_rank_the_views_and_placements_feed_back() -> None:
    view = ClusterView()
    for index in range(4):
        view.apply(snapshot(f"r{index}"), now=0.0)
    policy = make_policy("cache_aware")
    chosen = select_replica(policy.rank_replicas(Demand(KEY), view.replicas(), 0.0))
    view.on_placed(chosen.replica_id, KEY, now=0.0)
    assert chosen.tier_of(KEY) is Tier.LOADING
    # The next request for the adapter follows the optimistic copy.
    assert select_replica(policy.rank_replicas(Demand(KEY), view.replicas(), 0.0)) is chosen


# --- wire format ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        ReplicaSnapshot(
            "r0",
            "e1",
            7,
            12.5,
            gpu=frozenset({KEY}),
            host=frozenset({KEY, "t/b@2"}),
            disk=frozenset(),
            loading=frozenset({"t/c@1"}),
            in_flight=3,
            queued=1,
            gpu_slots=16,
        ),
        ResidencyChanged("r0", "e1", 8, 13.0, KEY, Tier.DISK, False),
        LoadChanged("r0", "e1", 9, 13.5, in_flight=0, queued=2),
        ReplicaGone("r0", "e1", 10, 14.0),
    ],
)
def test_events_round_trip_through_json(event: object) -> None:
    text = encode_event(event)  # type: ignore[arg-type]
    assert json.loads(text)["v"] == 1
    assert decode_event(text) == event
    assert decode_event(text.encode()) == event


def test_snapshot_round_trips_through_the_redis_hash() -> None:
    event = snapshot(gpu=frozenset({KEY}), in_flight=2)
    fields = {name.encode(): value.encode() for name, value in snapshot_to_hash(event).items()}
    assert snapshot_from_hash(fields) == event
    with pytest.raises(ViewEventError, match="snapshot"):
        snapshot_from_hash({})
    with pytest.raises(ViewEventError, match="ReplicaGone"):
        snapshot_from_hash({"snapshot": encode_event(ReplicaGone("r0", "e1", 1, 0.0))})


def test_redis_names() -> None:
    assert replica_key("loramux:", "abc") == "loramux:replica:abc"
    assert residency_channel("loramux:") == "loramux:residency"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "not JSON"),
        ("[1]", "JSON object"),
        ('{"v": 2, "kind": "gone"}', "version"),
        ('{"v": 1, "kind": "gone", "replica": "r0", "epoch": "e", "seq": 1}', "'at'"),
        ('{"v": 1, "kind": "gone", "replica": "r0", "epoch": "e", "seq": "1", "at": 0}', "'seq'"),
        ('{"v": 1, "kind": "gone", "replica": "r0", "epoch": "e", "seq": true, "at": 0}', "'seq'"),
        ('{"v": 1, "kind": "melt", "replica": "r0", "epoch": "e", "seq": 1, "at": 0}', "melt"),
        (
            '{"v": 1, "kind": "load", "replica": "r0", "epoch": "e", "seq": 1, "at": 0,'
            ' "in_flight": -1, "queued": 0}',
            "'in_flight'",
        ),
        (
            '{"v": 1, "kind": "residency", "replica": "r0", "epoch": "e", "seq": 1, "at": 0,'
            ' "key": "k", "tier": "cloud", "present": true}',
            "cloud",
        ),
        (
            '{"v": 1, "kind": "snapshot", "replica": "r0", "epoch": "e", "seq": 1, "at": 0,'
            ' "gpu": [1], "host": [], "disk": [], "loading": [], "in_flight": 0, "queued": 0,'
            ' "gpu_slots": 8}',
            "'gpu'",
        ),
    ],
)
def test_bad_wire_data_is_a_clear_error(text: str, problem: str) -> None:
    with pytest.raises(ViewEventError, match=problem):
        decode_event(text)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    fields = json.loads(encode_event(ReplicaGone("r0", "e1", 1, 0.0)))
    fields["hostname"] = "node-3"
    assert decode_event(json.dumps(fields)) == ReplicaGone("r0", "e1", 1, 0.0)


def test_residency_event_rejects_the_none_tier() -> None:
    with pytest.raises(ViewEventError, match="present=False"):
        ResidencyChanged("r0", "e1", 1, 0.0, KEY, Tier.NONE, True)


def test_snapshot_of_a_replica_view() -> None:
    replica = ReplicaView("r5", gpu={KEY}, in_flight=2, gpu_slots=4)
    event = ReplicaSnapshot.of(replica, epoch="e9", seq=3, at=1.0)
    view = ClusterView()
    view.apply(event, now=1.0)
    assert view.get("r5") == replica and view.get("r5") is not replica
