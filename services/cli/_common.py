"""What the ``loramux`` commands share: the ``--direct`` switch, errors, progress bars
and how sizes and times are printed (the views they print are :mod:`._views`)."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from typing import TYPE_CHECKING
from typing import Annotated
from typing import Any

import typer

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.progress import ProgressColumn
    from rich.progress import TaskID

__all__ = [
    "DirectOption",
    "TransferBar",
    "fail",
    "progress_task",
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
def progress_task(
    description: str, *columns: ProgressColumn, transient: bool = True, **fields: Any
) -> Iterator[tuple[Progress, TaskID]]:
    """A rich bar on stderr for the duration of the block: the description and the bar,
    then ``columns``; ``fields`` are the task's own (``{task.fields[...]}``)."""
    from rich.console import Console
    from rich.progress import BarColumn
    from rich.progress import Progress
    from rich.progress import TextColumn

    leading = (TextColumn("{task.description}"), BarColumn())
    with Progress(*leading, *columns, transient=transient, console=Console(stderr=True)) as bar:
        yield bar, bar.add_task(description, total=None, **fields)


@contextlib.contextmanager
def transfer_bar(description: str) -> Iterator[TransferBar]:
    """A transient bar (bytes, speed) on stderr for the duration of the block."""
    from rich.progress import DownloadColumn
    from rich.progress import TransferSpeedColumn

    with progress_task(description, DownloadColumn(), TransferSpeedColumn()) as (bar, task):
        yield TransferBar(bar, task)


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
