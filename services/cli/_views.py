"""The backend-neutral views the adapter and tenant commands print.

A command that works both through the service and directly on the store gets its data
from a backend (:mod:`services.cli._service` or :mod:`services.cli._store`) as these
views, so each verb is printed by one function whichever backend answered.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Literal
from typing import TypeVar

__all__ = ["AdapterRow", "PushRequest", "UsageView", "VersionRow", "VersionView"]

_View = TypeVar("_View", "VersionView", "UsageView")


@dataclass(frozen=True)
class PushRequest:
    """What ``loramux push`` (or ``train --local``) asks a backend to publish.

    ``base_model`` is given with ``--direct`` only: the service pushes for the base it
    serves.
    """

    path: Path
    name: str
    aliases: list[str] = field(default_factory=list)
    base_model: str | None = None
    origin: Literal["pushed", "trained"] = "pushed"


@dataclass(frozen=True)
class VersionView:
    """One adapter version as the commands print it."""

    key: str
    name: str
    version: int
    size_bytes: int
    rank: int
    digest: str
    base_model: str
    created_at: float
    origin: str

    @classmethod
    def of(cls, version: object) -> VersionView:
        """From anything with these attributes: the store's ``AdapterVersion`` or the
        API's ``AdapterVersionInfo``."""
        return _from_attributes(cls, version)


@dataclass(frozen=True)
class VersionRow:
    """A line of ``show``; the counters are None where the backend does not know them."""

    version: VersionView
    aliases: tuple[str, ...]
    requests: int | None
    last_used_at: float | None


@dataclass(frozen=True)
class AdapterRow:
    """A line of ``ls``: an adapter, its latest version, aliases (alias -> version)."""

    name: str
    latest: VersionView
    version_count: int
    aliases: dict[str, int]
    requests: int | None
    last_used_at: float | None


@dataclass(frozen=True)
class UsageView:
    """A tenant's usage against its quotas (None: unlimited)."""

    tenant: str
    adapters: int
    bytes: int
    max_adapters: int | None
    max_bytes: int | None

    @classmethod
    def of(cls, usage: object) -> UsageView:
        """From the store's or the API's ``TenantUsage``."""
        return _from_attributes(cls, usage)


def _from_attributes(cls: type[_View], source: object) -> _View:
    return cls(**{field.name: getattr(source, field.name) for field in dataclasses.fields(cls)})
