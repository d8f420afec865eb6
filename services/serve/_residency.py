"""The Redis path of the cluster view: replicas publish residency and load, routers listen.

The wire format, the keys and the channel are documented in ``docs/scheduler.md``
("Cluster view and its wire format"); the pure logic (ordering, gap detection,
staleness) is :class:`scheduler.ClusterView`. This module is the thin I/O shell around
it, on ``redis.asyncio``:

* :class:`ResidencyPublisher` (one per model replica) turns "something changed" hints
  into events. It diffs the replica's current :class:`ReplicaView` against what it last
  published, so the hints carry no data and cost nothing on the serving path.
* :class:`ResidencySubscriber` (one per router) applies the channel's events to a
  :class:`ClusterView` and reloads the snapshot hashes when the view asks for it.

Neither ever raises into its caller: Redis errors are logged (at most once per
``_ERROR_LOG_INTERVAL_S``), counted, and repaired by the next snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scheduler import ClusterView
from scheduler import LoadChanged
from scheduler import ReplicaGone
from scheduler import ReplicaSnapshot
from scheduler import ReplicaView
from scheduler import ResidencyChanged
from scheduler import Tier
from scheduler import ViewEvent
from scheduler import decode_event
from scheduler import encode_event
from scheduler import replica_key
from scheduler import residency_channel
from scheduler import snapshot_from_hash
from scheduler import snapshot_to_hash
from scheduler.exceptions import ViewEventError
from services.serve._failure_log import FailureLog

__all__ = ["PublisherStats", "ResidencyPublisher", "ResidencySubscriber", "SubscriberStats"]

logger = logging.getLogger(__name__)

DEFAULT_LOAD_INTERVAL_S = 0.1
"""At most one ``load`` event per replica in this many seconds (load changes coalesce)."""

_ERROR_LOG_INTERVAL_S = 60.0
_TIERS = (Tier.GPU, Tier.HOST, Tier.DISK, Tier.LOADING)
_TIER_ATTRS = {Tier.GPU: "gpu", Tier.HOST: "host", Tier.DISK: "disk", Tier.LOADING: "loading"}


@dataclass(slots=True)
class PublisherStats:
    """What a publisher sent: events published, flushes that failed (their events are
    lost; the next flush sends a snapshot)."""

    published: int = 0
    errors: int = 0


class ResidencyPublisher:
    """Publishes one replica's residency and load to Redis (channel + snapshot hash).

    ``view`` returns the replica's current state; call :meth:`residency_changed` (it
    fits :class:`AdapterCache`'s ``on_change``) and :meth:`load_changed` when something
    changed. A background task (:meth:`start`) then diffs ``view()`` against what it
    last published and, in one ``MULTI``/``EXEC``, ``PUBLISH``es a ``residency`` event
    per key and tier that changed and a ``load`` event, and ``HSET``s the snapshot with
    an ``EXPIRE`` of 3 × ``staleness_bound_s``. Residency is flushed at once; load alone
    at most every ``load_interval_s``. Every ``staleness_bound_s / 2`` (and after a
    failed flush) it publishes a full ``snapshot`` event instead, which refreshes the
    routers' entries, repairs lost events and keeps the hash alive. :meth:`aclose`
    publishes ``gone`` and deletes the hash.

    Failure mode: nothing queues. While Redis is slow or down the hints only mark the
    state dirty; the next flush that succeeds publishes the state of that moment, and
    routers see a ``seq`` gap and reload the hash. A flush taking longer than
    ``timeout_s`` counts as failed.
    """

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str,
        replica_id: str,
        view: Callable[[], ReplicaView],
        staleness_bound_s: float = 2.0,
        load_interval_s: float = DEFAULT_LOAD_INTERVAL_S,
        timeout_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not staleness_bound_s > 0:
            raise ValueError(f"staleness_bound_s={staleness_bound_s!r} must be > 0 seconds")
        self.replica_id = replica_id
        self.epoch = os.urandom(8).hex()
        self.stats = PublisherStats()
        self._client = client
        self._key = replica_key(key_prefix, replica_id)
        self._channel = residency_channel(key_prefix)
        self._view = view
        self._refresh_s = staleness_bound_s / 2
        self._ttl_ms = max(1, int(3 * staleness_bound_s * 1000))
        self._load_interval_s = load_interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._log = FailureLog(logger, _ERROR_LOG_INTERVAL_S, clock=clock)
        self._seq = 0
        # What the routers were last told; None: the next flush is a snapshot.
        self._published: ReplicaSnapshot | None = None
        self._snapshot_at = float("-inf")
        self._load_at = float("-inf")
        self._residency_dirty = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start publishing on the running loop (the first flush is a snapshot)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def residency_changed(self, _event: object = None) -> None:
        """Hint: an adapter changed tier (any argument is ignored). Never raises."""
        self._residency_dirty = True
        self._wake.set()

    def load_changed(self) -> None:
        """Hint: running or queued requests changed. Never raises."""
        self._wake.set()

    async def aclose(self) -> None:
        """Stop, then publish ``gone`` and delete the hash (best effort, bounded)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._seq += 1
        gone = ReplicaGone(self.replica_id, self.epoch, self._seq, self._clock())
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self._key)
        pipe.publish(self._channel, encode_event(gone))
        await self._execute(pipe, events=1)

    async def _run(self) -> None:
        while True:
            due = self._snapshot_at + self._refresh_s - self._clock()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, due))
            self._wake.clear()
            if not self._residency_dirty:  # only load changed (or a refresh): coalesce
                wait = self._load_at + self._load_interval_s - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
            if not await self.flush():
                await asyncio.sleep(self._refresh_s)  # Redis is failing: do not spin

    async def flush(self) -> bool:
        """Publish what changed since the last flush (a snapshot when one is due);
        False if it failed (counted and logged; the next flush is a snapshot)."""
        self._residency_dirty = False
        now = self._clock()
        try:
            view = self._view()
        except Exception:
            self.stats.errors += 1
            self._log.warning("replica %s: reading its state to publish failed", self.replica_id)
            return False
        last = self._published
        if last is None or now - self._snapshot_at >= self._refresh_s:
            self._seq += 1
            events: list[ViewEvent] = []
        else:
            events = self._deltas(last, view, now)
            if not events:
                return True
        snapshot = ReplicaSnapshot.of(view, epoch=self.epoch, seq=self._seq, at=now)
        if not events:
            events = [snapshot]
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(self._key, mapping=snapshot_to_hash(snapshot))
        pipe.pexpire(self._key, self._ttl_ms)
        for event in events:
            pipe.publish(self._channel, encode_event(event))
        if await self._execute(pipe, events=len(events)):
            self._published = snapshot
            if isinstance(events[0], ReplicaSnapshot):
                self._snapshot_at = now
            if any(isinstance(event, LoadChanged) for event in events):
                self._load_at = now
            return True
        self._published = None
        return False

    def _deltas(self, last: ReplicaSnapshot, view: ReplicaView, now: float) -> list[ViewEvent]:
        events: list[ViewEvent] = []

        def add(key: str, tier: Tier, present: bool) -> None:
            self._seq += 1
            events.append(
                ResidencyChanged(self.replica_id, self.epoch, self._seq, now, key, tier, present)
            )

        for tier in _TIERS:
            before, after = getattr(last, _TIER_ATTRS[tier]), getattr(view, _TIER_ATTRS[tier])
            for key in sorted(after - before):
                add(key, tier, True)
            for key in sorted(before - after):
                add(key, tier, False)
        if (view.in_flight, view.queued) != (last.in_flight, last.queued):
            self._seq += 1
            events.append(
                LoadChanged(
                    self.replica_id, self.epoch, self._seq, now, view.in_flight, view.queued
                )
            )
        return events

    async def _execute(self, pipe: Any, *, events: int) -> bool:
        try:
            await asyncio.wait_for(pipe.execute(), timeout=self._timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.errors += 1
            self._log.warning("replica %s: publishing residency to Redis failed", self.replica_id)
            return False
        self.stats.published += events
        return True


@dataclass(slots=True)
class SubscriberStats:
    """What a subscriber did: full reloads of the hashes, messages it could not decode,
    Redis errors (each followed by a reconnect)."""

    resyncs: int = 0
    bad_messages: int = 0
    errors: int = 0


class ResidencySubscriber:
    """Keeps a :class:`ClusterView` current from the replicas' Redis channel and hashes.

    :meth:`run` (a task for the router's lifetime) subscribes first, then reloads every
    snapshot hash (``SCAN <prefix>replica:*`` + ``HGETALL``, :meth:`resync`, which
    replaces the view), then applies each message. It reloads again when an applied
    event reveals a lost one (a ``seq`` gap, or a delta of an epoch it has no snapshot
    of), and every ``staleness_bound_s / 2`` when ``view.needs_snapshot`` lists a
    replica (older than the bound: its publisher stopped, or its events were lost); a
    replica whose hash expired is dropped by that reload.

    Failure mode: on a Redis error it logs (rate-limited), counts, waits ``retry_s`` and
    reconnects, which reloads everything; meanwhile the view ages and the router falls
    back to Ray's routing stats. Undecodable messages are counted and skipped.
    """

    def __init__(
        self,
        client: Any,
        *,
        key_prefix: str,
        view: ClusterView,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.view = view
        self.stats = SubscriberStats()
        self._client = client
        self._channel = residency_channel(key_prefix)
        self._pattern = re.sub(r"([*?\[\]\\])", r"\\\1", replica_key(key_prefix, "")) + "*"
        self._check_s = view.staleness_bound_s / 2
        self._retry_s = retry_s
        self._clock = clock
        self._log = FailureLog(logger, _ERROR_LOG_INTERVAL_S, clock=clock)

    async def run(self) -> None:
        """Follow the channel until cancelled; never raises anything else."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.errors += 1
                self._log.warning("cluster view: following Redis residency failed; reconnecting")
            await asyncio.sleep(self._retry_s)

    async def resync(self) -> None:
        """Replace the view with the replicas' snapshot hashes.

        Raises:
            redis.RedisError: Redis failed (the view is left as it was).
        """
        keys = [key async for key in self._client.scan_iter(match=self._pattern, count=500)]
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        snapshots = []
        for key, fields in zip(keys, await pipe.execute() if keys else [], strict=True):
            if not fields:
                continue  # expired between SCAN and HGETALL
            try:
                snapshots.append(snapshot_from_hash(fields))
            except ViewEventError:
                self.stats.bad_messages += 1
                self._log.warning("cluster view: replica hash %r is unreadable", key)
        self.view.replace_all(snapshots, self._clock())
        self.stats.resyncs += 1

    async def _follow(self) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            await self.resync()
            check_at = self._clock() + self._check_s
            while True:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True,
                    timeout=max(0.0, check_at - self._clock()),
                )
                now = self._clock()
                is_event = message is not None and message.get("type") == "message"
                if is_event and self._apply(message["data"], now):
                    await self.resync()
                if now >= check_at:
                    check_at = now + self._check_s
                    if self.view.needs_snapshot(now):
                        await self.resync()
        finally:
            await pubsub.aclose()

    def _apply(self, data: str | bytes, now: float) -> bool:
        """Apply one message; True when it revealed a lost event (reload the hashes)."""
        try:
            event = decode_event(data)
        except ViewEventError:
            self.stats.bad_messages += 1
            self._log.warning("cluster view: skipping an undecodable residency message")
            return False
        stats = self.view.stats
        lost_before = stats.gaps + stats.dropped_unknown
        self.view.apply(event, now)
        # A delta for an unknown replica is also how a new replica's first deltas look
        # when its snapshot message was missed: both need the hash.
        return stats.gaps + stats.dropped_unknown > lost_before
