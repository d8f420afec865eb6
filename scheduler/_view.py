"""A router's picture of the replicas, kept current from residency and load events.

Replicas publish what they hold and how busy they are; routers apply those events to a
:class:`ClusterView` and read ``view.replicas()`` for every placement. The wire format
(JSON, one event per message) and the Redis keys the services layer publishes to are
documented in ``docs/scheduler.md``; this module is pure (no Redis, no Ray) so the
simulator and tests drive it directly.

Ordering: every event carries the replica's ``epoch`` (one per replica process start)
and a per-replica sequence number ``seq`` that the replica increments for every event
it publishes. A view applies an event only if it is newer than the last one applied
for that replica; duplicates and reordered events are dropped and counted. A delta that
skips sequence numbers is applied but marks the replica as needing a snapshot (an event
was lost), as does a delta from an epoch the view has no snapshot of; for such a
replica a snapshot at the last applied ``seq`` is applied too (it is the repair).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from scheduler._types import ReplicaView
from scheduler._types import Tier
from scheduler.exceptions import UnknownReplicaError
from scheduler.exceptions import ViewEventError

__all__ = [
    "ClusterView",
    "LoadChanged",
    "ReplicaGone",
    "ReplicaSnapshot",
    "ResidencyChanged",
    "ViewEvent",
    "ViewStats",
    "decode_event",
    "encode_event",
    "replica_key",
    "residency_channel",
    "snapshot_from_hash",
    "snapshot_to_hash",
]

WIRE_VERSION = 1

_TIER_NAMES = {Tier.GPU: "gpu", Tier.HOST: "host", Tier.DISK: "disk", Tier.LOADING: "loading"}
_TIERS_BY_NAME = {name: tier for tier, name in _TIER_NAMES.items()}


def replica_key(prefix: str, replica_id: str) -> str:
    """The Redis hash holding a replica's latest snapshot: ``<prefix>replica:<id>``."""
    return f"{prefix}replica:{replica_id}"


def residency_channel(prefix: str) -> str:
    """The Redis pub/sub channel carrying every replica's events: ``<prefix>residency``."""
    return f"{prefix}residency"


# A snapshot's residency sets and load figures, by field name (the same in the view,
# the snapshot and the wire format).
_TIER_SETS = ("gpu", "host", "disk", "loading")
_LOAD_FIELDS = ("in_flight", "queued", "gpu_slots")


@dataclass(frozen=True, slots=True)
class ReplicaSnapshot:
    """Everything a replica holds and its load, replacing what the view knew of it."""

    replica_id: str
    epoch: str
    seq: int
    at: float
    gpu: frozenset[str] = frozenset()
    host: frozenset[str] = frozenset()
    disk: frozenset[str] = frozenset()
    loading: frozenset[str] = frozenset()
    in_flight: int = 0
    queued: int = 0
    gpu_slots: int = 8

    @classmethod
    def of(cls, view: ReplicaView, *, epoch: str, seq: int, at: float) -> ReplicaSnapshot:
        """The snapshot a replica publishes of its own state (``view``)."""
        return cls(
            view.replica_id,
            epoch,
            seq,
            at,
            **{name: frozenset(getattr(view, name)) for name in _TIER_SETS},
            **{name: getattr(view, name) for name in _LOAD_FIELDS},
        )


@dataclass(frozen=True, slots=True)
class ResidencyChanged:
    """``key`` entered (``present``) or left one tier of a replica.

    ``tier`` is GPU, HOST, DISK or LOADING; an adapter may be in several tiers at once
    (a GPU copy usually keeps its host copy), so each tier changes by its own event.
    """

    replica_id: str
    epoch: str
    seq: int
    at: float
    key: str
    tier: Tier
    present: bool

    def __post_init__(self) -> None:
        if self.tier not in _TIER_NAMES:
            raise ViewEventError(
                f"ResidencyChanged.tier must be GPU, HOST, DISK or LOADING, got {self.tier!r}; "
                "to say a tier no longer holds the key, send present=False for that tier"
            )


@dataclass(frozen=True, slots=True)
class LoadChanged:
    """A replica's running and queued request counts."""

    replica_id: str
    epoch: str
    seq: int
    at: float
    in_flight: int
    queued: int


@dataclass(frozen=True, slots=True)
class ReplicaGone:
    """The replica is shutting down; routers drop it from their view."""

    replica_id: str
    epoch: str
    seq: int
    at: float


ViewEvent = ReplicaSnapshot | ResidencyChanged | LoadChanged | ReplicaGone


@dataclass(slots=True)
class ViewStats:
    """What a view has applied and dropped, and how late events arrived.

    ``max_lag_s`` is the largest ``now - event.at`` seen on apply (publisher clock to
    router clock, so it includes clock skew; negative lags count as zero).
    """

    applied: int = 0
    dropped_stale: int = 0
    dropped_unknown: int = 0
    gaps: int = 0
    max_lag_s: float = 0.0


@dataclass(slots=True)
class _ReplicaState:
    view: ReplicaView
    epoch: str
    seq: int
    updated_at: float
    needs_snapshot: bool = False
    # Adapters this router marked loading on a placement, until the replica reports.
    assumed_loading: set[str] = field(default_factory=set)


class ClusterView:
    """The router's replicas: residency by tier and load, per replica, kept current.

    * :meth:`apply` takes one event; :meth:`replace_all` a full set of snapshots (the
      replicas not in it are dropped), as read from Redis on start-up or resync.
    * :meth:`on_placed` optimistically counts a request as queued on the replica and,
      if the replica does not hold the adapter, marks it loading there, so the next
      decision sees the placement before the replica reports it. :meth:`on_finished`
      takes a request off. A :class:`LoadChanged` or snapshot from the replica replaces
      the optimistic load; a snapshot also replaces the optimistic loading marks.
    * ``pinned``: the wire format carries no pin count (routers read it from the
      replicas' routing stats), so a view's ``pinned`` counts only the slots this
      router's own placements will need since the replica's last load report or
      snapshot, which resets it to 0.
    * Staleness: each replica's age is the time since the view last applied an event of
      it. A replica older than ``staleness_bound_s`` (or with a lost event) is listed by
      :meth:`needs_snapshot` so the caller fetches its hash; :meth:`staleness` measures
      the ages.

    :meth:`replicas` returns the views sorted by replica id, the same list object until
    the membership changes, so policies' per-replica-set caches stay valid. Callers
    treat the :class:`ReplicaView` objects as read-only; this class mutates them in
    place between decisions.

    Failure mode: between a lost event and the next snapshot the view is wrong for that
    replica (bounded by the caller's resync period); optimistic load from placements
    whose replica never reports again stays until the replica is dropped.

    Not thread-safe: one view per router event loop.
    """

    def __init__(self, *, staleness_bound_s: float = 2.0) -> None:
        if not staleness_bound_s > 0:
            raise ValueError(f"staleness_bound_s={staleness_bound_s!r} must be > 0 seconds")
        self.staleness_bound_s = staleness_bound_s
        self.stats = ViewStats()
        self._states: dict[str, _ReplicaState] = {}
        self._replicas: list[ReplicaView] = []

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, replica_id: object) -> bool:
        return replica_id in self._states

    def replicas(self) -> list[ReplicaView]:
        """The replica views, sorted by id (do not mutate the list or the views)."""
        return self._replicas

    def get(self, replica_id: str) -> ReplicaView:
        """The view of one replica.

        Raises:
            UnknownReplicaError: no such replica in view.
        """
        return self._state(replica_id).view

    def apply(self, event: ViewEvent, now: float) -> bool:
        """Apply one event received at ``now`` (router clock); False if it was dropped.

        Dropped: an event not newer than the last applied one of its replica (same
        epoch, ``seq`` not larger), and a delta for a replica the view has no snapshot
        of in that epoch (the replica is then listed by :meth:`needs_snapshot`).
        """
        self.stats.max_lag_s = max(self.stats.max_lag_s, now - event.at)
        if isinstance(event, ReplicaSnapshot):
            return self._apply_snapshot(event, now)
        state = self._states.get(event.replica_id)
        if state is None or state.epoch != event.epoch:
            if state is not None:
                state.needs_snapshot = True
            self.stats.dropped_unknown += 1
            return False
        if event.seq <= state.seq:
            self.stats.dropped_stale += 1
            return False
        if event.seq > state.seq + 1:
            state.needs_snapshot = True
            self.stats.gaps += 1
        state.seq = event.seq
        state.updated_at = now
        self.stats.applied += 1
        if isinstance(event, ReplicaGone):
            self._remove(event.replica_id)
        elif isinstance(event, LoadChanged):
            state.view.in_flight = event.in_flight
            state.view.queued = event.queued
            state.view.pinned = 0
        else:
            self._apply_residency(state, event)
        return True

    def forget(self, replica_id: str) -> None:
        """Drop a replica known to be dead, at once (its ``ReplicaGone`` never comes).

        A snapshot it published before dying brings it back at the next resync until
        its entry expires in Redis; routers only rank replicas Ray Serve still lists,
        so that stale residency is never chosen.
        """
        self._remove(replica_id)

    def replace_all(self, snapshots: Iterable[ReplicaSnapshot], now: float) -> None:
        """Make the view exactly these replicas (a full resync); others are dropped.

        A snapshot older than what the view already applied for its replica (same
        epoch, lower ``seq``) keeps the newer state.
        """
        keep = set()
        for snapshot in snapshots:
            keep.add(snapshot.replica_id)
            self._apply_snapshot(snapshot, now)
        for replica_id in [rid for rid in self._states if rid not in keep]:
            self._remove(replica_id)

    def on_placed(self, replica_id: str, key: str, now: float) -> None:
        """Count a request this router just sent (:meth:`ReplicaView.mark_placed`): +1
        queued, the adapter loading if absent, one more slot pinned if it must load.

        Raises:
            UnknownReplicaError: no such replica in view.
        """
        state = self._state(replica_id)
        if state.view.mark_placed(key):
            state.assumed_loading.add(key)

    def on_finished(self, replica_id: str, now: float) -> None:
        """Take one request off the replica's load (a response this router saw end).

        A replica that has left the view is ignored: its requests left with it.
        """
        state = self._states.get(replica_id)
        if state is None:
            return
        view = state.view
        if view.queued:
            view.queued -= 1
        elif view.in_flight:
            view.in_flight -= 1

    def staleness(self, now: float) -> dict[str, float]:
        """Seconds since each replica's last applied event, by replica id."""
        return {rid: now - state.updated_at for rid, state in self._states.items()}

    def updated_at(self, replica_id: str) -> float | None:
        """When (the ``now`` passed) the view last applied an event of the replica;
        None if it is not in view."""
        state = self._states.get(replica_id)
        return None if state is None else state.updated_at

    def max_staleness(self, now: float) -> float:
        """The oldest replica's age in seconds (0.0 with no replicas)."""
        return max((now - s.updated_at for s in self._states.values()), default=0.0)

    def needs_snapshot(self, now: float) -> list[str]:
        """Replicas to resync: older than the staleness bound, or with a lost event."""
        bound = self.staleness_bound_s
        return sorted(
            rid
            for rid, state in self._states.items()
            if state.needs_snapshot or now - state.updated_at > bound
        )

    def _state(self, replica_id: str) -> _ReplicaState:
        try:
            return self._states[replica_id]
        except KeyError:
            raise UnknownReplicaError(
                f"replica {replica_id!r} is not in the cluster view "
                f"({len(self._states)} replicas known); it never published or has left"
            ) from None

    def _apply_snapshot(self, snapshot: ReplicaSnapshot, now: float) -> bool:
        state = self._states.get(snapshot.replica_id)
        # After a lost event, a snapshot at the last applied seq is what repairs the
        # replica: publishers write the hash with the deltas it covers, so it is often
        # exactly that recent.
        if (
            state is not None
            and state.epoch == snapshot.epoch
            and (
                snapshot.seq < state.seq or (snapshot.seq == state.seq and not state.needs_snapshot)
            )
        ):
            self.stats.dropped_stale += 1
            return False
        if state is None:
            state = _ReplicaState(
                view=ReplicaView(snapshot.replica_id),
                epoch=snapshot.epoch,
                seq=snapshot.seq,
                updated_at=now,
            )
            self._states[snapshot.replica_id] = state
            self._rebuild_replica_list()
        view = state.view
        for current, reported in (
            (view.gpu, snapshot.gpu),
            (view.host, snapshot.host),
            (view.disk, snapshot.disk),
            (view.loading, snapshot.loading),
        ):
            current.clear()
            current.update(reported)
        view.in_flight = snapshot.in_flight
        view.queued = snapshot.queued
        view.pinned = 0
        view.gpu_slots = snapshot.gpu_slots
        state.epoch = snapshot.epoch
        state.seq = snapshot.seq
        state.updated_at = now
        state.needs_snapshot = False
        state.assumed_loading.clear()
        self.stats.applied += 1
        return True

    @staticmethod
    def _apply_residency(state: _ReplicaState, event: ResidencyChanged) -> None:
        view = state.view
        tier_set = {
            Tier.GPU: view.gpu,
            Tier.HOST: view.host,
            Tier.DISK: view.disk,
            Tier.LOADING: view.loading,
        }[event.tier]
        if event.present:
            tier_set.add(event.key)
        else:
            tier_set.discard(event.key)
        # Any report about the key replaces this router's guess that it is loading.
        if event.key in state.assumed_loading:
            state.assumed_loading.discard(event.key)
            if not (event.tier is Tier.LOADING and event.present):
                view.loading.discard(event.key)

    def _remove(self, replica_id: str) -> None:
        if self._states.pop(replica_id, None) is not None:
            self._rebuild_replica_list()

    def _rebuild_replica_list(self) -> None:
        self._replicas = [self._states[rid].view for rid in sorted(self._states)]


# --- wire format ------------------------------------------------------------------


def encode_event(event: ViewEvent) -> str:
    """The JSON text of an event (the Redis channel's message format, see the docs)."""
    fields: dict[str, Any] = {
        "v": WIRE_VERSION,
        "replica": event.replica_id,
        "epoch": event.epoch,
        "seq": event.seq,
        "at": event.at,
    }
    if isinstance(event, ReplicaSnapshot):
        fields.update(
            kind="snapshot",
            **{name: sorted(getattr(event, name)) for name in _TIER_SETS},
            **{name: getattr(event, name) for name in _LOAD_FIELDS},
        )
    elif isinstance(event, ResidencyChanged):
        fields.update(
            kind="residency", key=event.key, tier=_TIER_NAMES[event.tier], present=event.present
        )
    elif isinstance(event, LoadChanged):
        fields.update(kind="load", in_flight=event.in_flight, queued=event.queued)
    else:
        fields.update(kind="gone")
    return json.dumps(fields, separators=(",", ":"))


def decode_event(text: str | bytes) -> ViewEvent:
    """Parse one event; unknown extra fields are ignored (newer publishers may add some).

    Raises:
        ViewEventError: not JSON, not an object, an unknown ``v`` or ``kind``, or a field
            missing or of the wrong type (the message names it).
    """
    try:
        fields = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ViewEventError(f"cluster-view event is not JSON: {e}") from e
    if not isinstance(fields, dict):
        raise ViewEventError(
            f"cluster-view event must be a JSON object, got {type(fields).__name__}"
        )
    reader = _FieldReader(fields)
    version = reader.integer("v")
    if version != WIRE_VERSION:
        raise ViewEventError(
            f"cluster-view event version v={version} is not supported (this router reads "
            f"v={WIRE_VERSION}); upgrade the router or the publisher"
        )
    kind = reader.string("kind")
    common = {
        "replica_id": reader.string("replica"),
        "epoch": reader.string("epoch"),
        "seq": reader.integer("seq"),
        "at": reader.number("at"),
    }
    if kind == "snapshot":
        return ReplicaSnapshot(
            **common,
            **{name: reader.keys(name) for name in _TIER_SETS},
            **{name: reader.count(name) for name in _LOAD_FIELDS},
        )
    if kind == "residency":
        tier_name = reader.string("tier")
        if tier_name not in _TIERS_BY_NAME:
            raise ViewEventError(
                f"cluster-view event field 'tier' is {tier_name!r}; "
                f"expected one of {sorted(_TIERS_BY_NAME)}"
            )
        return ResidencyChanged(
            **common,
            key=reader.string("key"),
            tier=_TIERS_BY_NAME[tier_name],
            present=reader.boolean("present"),
        )
    if kind == "load":
        return LoadChanged(
            **common, in_flight=reader.count("in_flight"), queued=reader.count("queued")
        )
    if kind == "gone":
        return ReplicaGone(**common)
    raise ViewEventError(
        f"cluster-view event kind {kind!r} is unknown; "
        "expected one of 'snapshot', 'residency', 'load', 'gone'"
    )


def snapshot_to_hash(snapshot: ReplicaSnapshot) -> dict[str, str]:
    """The fields of the replica's Redis hash (``replica_key``): one, ``snapshot``.

    Kept as a single JSON field so a reader gets a consistent snapshot with one HGET and
    the hash has room for fields added later.
    """
    return {"snapshot": encode_event(snapshot)}


def snapshot_from_hash(fields: Mapping[str | bytes, str | bytes]) -> ReplicaSnapshot:
    """The snapshot stored in a replica's Redis hash (as returned by HGETALL).

    Raises:
        ViewEventError: no ``snapshot`` field, or it does not decode to a snapshot.
    """
    text = fields.get("snapshot", fields.get(b"snapshot"))
    if text is None:
        raise ViewEventError(
            f"replica hash has no 'snapshot' field (fields: {sorted(map(str, fields))})"
        )
    event = decode_event(text)
    if not isinstance(event, ReplicaSnapshot):
        raise ViewEventError(f"replica hash 'snapshot' field holds a {type(event).__name__}")
    return event


class _FieldReader:
    """Typed access to a decoded event's fields, with errors that name the field."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields

    def _get(self, name: str, expected: type | tuple[type, ...], what: str) -> Any:
        if name not in self._fields:
            raise ViewEventError(f"cluster-view event is missing field {name!r}")
        value = self._fields[name]
        # bool is an int subclass: a boolean is never a valid number here, and vice versa.
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise ViewEventError(f"cluster-view event field {name!r} must be {what}, got {value!r}")
        return value

    def string(self, name: str) -> str:
        return self._get(name, str, "a string")

    def integer(self, name: str) -> int:
        return self._get(name, int, "an integer")

    def count(self, name: str) -> int:
        value = self.integer(name)
        if value < 0:
            raise ViewEventError(f"cluster-view event field {name!r} must be >= 0, got {value}")
        return value

    def number(self, name: str) -> float:
        value = float(self._get(name, (int, float), "a number"))
        if not math.isfinite(value):
            raise ViewEventError(f"cluster-view event field {name!r} must be finite")
        return value

    def boolean(self, name: str) -> bool:
        return self._get(name, bool, "true or false")

    def keys(self, name: str) -> frozenset[str]:
        values = self._get(name, list, "a list of adapter keys")
        if not all(isinstance(value, str) for value in values):
            raise ViewEventError(f"cluster-view event field {name!r} must hold only strings")
        return frozenset(values)
