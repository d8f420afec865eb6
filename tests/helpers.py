"""Small helpers shared by tests (fixtures live in the conftest files)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx


def wait_until(condition: Callable[[], object], timeout_s: float, interval_s: float = 0.5) -> None:
    """Poll ``condition`` until it is truthy; an HTTP error counts as not yet (a service
    still starting). Raises AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s:.0f} s")
        time.sleep(interval_s)


class Clock:
    """A clock a test moves by hand: ``clock.now += 5``; starts at 1000 s."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
