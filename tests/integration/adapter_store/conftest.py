"""Fixtures for the AdapterStore integration tests: a store on real backends, a
tiny Llama with its manifest, and real PEFT adapters for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapter_store._blobs import open_blob_store
from adapter_store._metadata import RedisMetadataStore
from adapter_store._store import AdapterStore
from tests.factories import TinyBase
from tests.factories import build_store


@pytest.fixture
def store(
    redis_url: str, blob_url: str, tmp_path: Path, tiny_base: TinyBase
) -> Iterator[AdapterStore]:
    metadata = RedisMetadataStore.from_url(redis_url, key_prefix="t:")
    blobs = open_blob_store(blob_url)
    with build_store(metadata, blobs, tiny_base.manifest, cache_dir=tmp_path / "cache") as built:
        yield built


def redis_state(client: Any) -> dict[str, Any]:
    """Every key of a ``decode_responses`` Redis client with its value."""
    values: dict[str, Any] = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        if kind == "hash":
            values[key] = client.hgetall(key)
        elif kind == "string":
            values[key] = client.get(key)
        elif kind == "zset":
            values[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            values[key] = sorted(client.smembers(key))
    return values


def snapshot(store: AdapterStore) -> tuple[dict[str, Any], list[str]]:
    """Everything the store holds: every Redis key with its value, every blob key."""
    return redis_state(store.metadata._redis), list(store.blobs.list())
