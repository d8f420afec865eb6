"""A supervised redis-server comes back after SIGKILL on the same URL with every
acknowledged write, and the metadata store serves again within seconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from adapter_store import BackendUnavailableError
from adapter_store import RedisMetadataStore
from adapter_store._redis_server import RedisServerProcess
from tests.factories import publish_version


def _wait_until(check: object, timeout_s: float) -> float:
    """Seconds until ``check()`` stops raising BackendUnavailableError."""
    start = time.monotonic()
    while True:
        try:
            check()  # type: ignore[operator]
            return time.monotonic() - start
        except BackendUnavailableError:
            if time.monotonic() - start > timeout_s:
                raise
            time.sleep(0.05)


def test_a_killed_server_is_restarted_with_every_published_version(tmp_path: Path) -> None:
    server = RedisServerProcess(tmp_path / "redis", appendonly=True, fsync="everysec")
    server.start()
    server.supervise(check_every_s=0.05)
    meta = RedisMetadataStore.from_url(server.url, key_prefix="t:", attempts=1, timeout_s=1.0)
    try:
        meta.create_tenant("acme", now=1.0, max_adapters=None, max_bytes=None)
        published = [publish_version(meta, content=str(i)) for i in range(20)]
        pid = server._proc.pid  # type: ignore[union-attr]
        server.kill()
        with pytest.raises(BackendUnavailableError):
            meta.resolve("acme", "chat", "latest")
        recovered_s = _wait_until(lambda: meta.resolve("acme", "chat", "latest"), 10.0)
        assert recovered_s < 5.0
        # The supervisor counts the restart just after the server answers its PING.
        deadline = time.monotonic() + 2.0
        while server.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.restarts == 1 and server._proc.pid != pid  # type: ignore[union-attr]
        assert meta.resolve("acme", "chat", "latest") == published[-1]
        assert meta.get_adapter("acme", "chat").versions == tuple(range(1, 21))
    finally:
        meta.close()
        server.stop()
    assert not server.running
    time.sleep(0.3)  # the supervisor is gone: nothing restarts a stopped server
    assert not server.running
