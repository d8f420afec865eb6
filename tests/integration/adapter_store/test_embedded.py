"""The embedded redis-server is shared by every process using one data directory."""

from __future__ import annotations

from pathlib import Path

import redis

from adapter_store._embedded import open_embedded_redis


def test_a_second_opener_connects_to_the_running_server(tmp_path: Path) -> None:
    url, server = open_embedded_redis(tmp_path)
    assert server is not None
    try:
        again, second = open_embedded_redis(tmp_path)
        assert (again, second) == (url, None)
        redis.Redis.from_url(url).set("k", "v")
    finally:
        server.stop()
    # Stopped: the next opener starts a fresh server on the same appendonly files.
    url, server = open_embedded_redis(tmp_path)
    assert server is not None
    try:
        assert redis.Redis.from_url(url).get("k") == b"v"
    finally:
        server.stop()
