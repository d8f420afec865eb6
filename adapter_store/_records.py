"""Read-only records the adapter store returns: tenants, usage, listings, gc reports.

All are frozen dataclasses built from Redis replies; changing one changes nothing in the
store. Times are Unix seconds (``float``); ``None`` means "never" or "no limit".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic
from typing import TypeVar

from adapter_store._identity import AdapterVersion

__all__ = [
    "AdapterInfo",
    "GcReport",
    "Page",
    "Tenant",
    "TenantUsage",
    "VersionInfo",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; pass ``next_cursor`` back to get the next page.

    ``next_cursor`` is ``None`` on the last page. Cursors are opaque strings.
    """

    items: tuple[T, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant and its quotas (``None``: unlimited)."""

    name: str
    created_at: float
    max_adapters: int | None
    max_bytes: int | None


@dataclass(frozen=True, slots=True)
class TenantUsage:
    """What a tenant holds now, against its quotas.

    ``adapters`` counts adapter names with at least one live version; ``bytes`` is the sum
    of the sizes of its live versions (each version is charged its full size, even when its
    blobs are shared with other versions or tenants).
    """

    tenant: str
    adapters: int
    bytes: int
    max_adapters: int | None
    max_bytes: int | None


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One live version, the aliases that point at it, and its usage counters."""

    version: AdapterVersion
    aliases: tuple[str, ...]
    request_count: int
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """An adapter: its live versions, its aliases and its usage summed over versions.

    ``latest`` is the version the ``latest`` alias points at.
    """

    tenant: str
    name: str
    created_at: float
    latest: AdapterVersion
    versions: tuple[int, ...]
    aliases: Mapping[str, int]
    request_count: int
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class GcReport:
    """What one garbage collection pass did.

    ``blobs_kept`` counts unreferenced blobs spared because they were younger than the
    grace period or a push had announced it was about to use them.
    """

    blobs_deleted: int
    bytes_freed: int
    blobs_kept: int
    versions_purged: int
