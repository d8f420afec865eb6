"""The stats board: the replicas' latest reports, for ``/v1/stats`` and ``/healthz``."""

from __future__ import annotations

import time

from services.client import ReplicaStats

__all__ = ["StatsBoard"]


class StatsBoard:
    """The replicas' latest reports, for ``/v1/stats`` and ``/healthz`` (one replica).

    A report older than ``stale_after_s`` is dropped: that replica is gone or stuck.
    """

    def __init__(self, stale_after_s: float) -> None:
        self._stale_after_s = stale_after_s
        self._reports: dict[str, tuple[float, ReplicaStats]] = {}

    def report(self, replica_id: str, stats: ReplicaStats) -> None:
        self._reports[replica_id] = (time.monotonic(), stats)

    def snapshot(self) -> list[ReplicaStats]:
        """The live replicas' latest stats, by replica id."""
        now = time.monotonic()
        self._reports = {
            replica_id: (at, stats)
            for replica_id, (at, stats) in self._reports.items()
            if now - at <= self._stale_after_s
        }
        return [stats for _, (_, stats) in sorted(self._reports.items())]
