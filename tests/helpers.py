"""Small helpers shared by tests (fixtures live in the conftest files)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import httpx

# What a tenant's key sees of a replica in /v1/stats and the dashboard: its
# configuration and its own residency, never the counters that sum every tenant.
TENANT_REPLICA_FIELDS = frozenset(
    {
        "replica_id",
        "gpu_slots",
        "engine",
        "quantization",
        "base_model_bytes",
        "base_model_full_bytes",
        "residency",
    }
)


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


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` (an ASGI app) served by uvicorn in a thread on a free loopback port; yields
    its URL, and stops the server when the block ends."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def asgi_http(app: Any) -> httpx.AsyncClient:
    """An HTTP client that calls the ASGI ``app`` in process (use as ``async with``)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://loramux.test")
