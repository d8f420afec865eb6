"""What the ``loramux`` commands share: the ``--direct`` switch, errors, progress bars,
and the backend-neutral views the adapter and tenant commands print.

A command that works both through the service and directly on the store gets its data
from a backend (:mod:`services.cli._service` or :mod:`services.cli._store`) as these
views, so each verb is printed by one function whichever backend answered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = [
    "AdapterRow",
    "DirectOption",
    "TransferBar",
    "UsageView",
    "VersionRow",
    "VersionView",
    "fail",
    "size",
    "transfer_bar",
    "when",
]

DirectOption = Annotated[
    bool,
    typer.Option(
        "--direct",
        envvar="LORAMUX_DIRECT",
        help="Work on the adapter store (Redis + blobs) directly instead of through the "
        "running service (LORAMUX_REDIS_URL, LORAMUX_BLOB_URL, ...).",
    ),
]


def fail(message: str) -> typer.Exit:
    """Print one ``error:`` line on stderr; raise the returned Exit (status 1)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


_View = TypeVar("_View", "VersionView", "UsageView")


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


class TransferBar:
    """A rich progress bar fed either by byte increments (the store's ``on_progress``)
    or by running totals (the SDK's ``on_progress(done, total)``)."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def start(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def report(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total or None)


@contextlib.contextmanager
def transfer_bar(description: str) -> Iterator[TransferBar]:
    """A transient bar (bytes, speed) on stderr for the duration of the block."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, transient=True, console=Console(stderr=True)) as progress:
        yield TransferBar(progress, progress.add_task(description, total=None))


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
