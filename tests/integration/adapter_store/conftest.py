"""Fixtures for the AdapterStore integration tests: a store on real backends, a
tiny Llama with its manifest, and real PEFT adapters for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapter_store._blobs import BlobStore, open_blob_store
from adapter_store._disk_cache import DiskCache
from adapter_store._manifest import BaseModelManifest, manifest_from_model
from adapter_store._metadata import RedisMetadataStore
from adapter_store._store import AdapterStore
from tests.factories import make_peft_adapter, tiny_llama

BASE = "tiny-llama"


@dataclass(frozen=True)
class TinyBase:
    """The tiny Llama, its manifest and three distinct adapters saved by PEFT."""

    model: object
    manifest: BaseModelManifest
    adapters: tuple[Path, ...]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> TinyBase:
    model = tiny_llama()
    root = tmp_path_factory.mktemp("adapters")
    adapters = tuple(make_peft_adapter(model, root / f"a{seed}", seed=seed) for seed in range(3))
    return TinyBase(model, manifest_from_model(BASE, model), adapters)


class HookedBlobs:
    """A blob store that runs ``after_put`` after every write, to act in the middle of
    a push (fail it, kill Redis, run gc)."""

    def __init__(self, inner: BlobStore, after_put: Callable[[], None]) -> None:
        self._inner = inner
        self._after_put = after_put

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._inner.put_bytes(key, data)
        self._after_put()


def build_store(
    redis_url: str, blobs: BlobStore, cache_dir: Path, manifest: BaseModelManifest
) -> AdapterStore:
    store = AdapterStore(
        RedisMetadataStore.from_url(redis_url, key_prefix="t:"),
        blobs,
        disk_cache=DiskCache(cache_dir, blobs, 1 << 30),
    )
    store.register_manifest(manifest)
    store.ensure_tenant("acme")
    return store


@pytest.fixture
def store(
    redis_url: str, blob_url: str, tmp_path: Path, tiny_base: TinyBase
) -> Iterator[AdapterStore]:
    with build_store(
        redis_url, open_blob_store(blob_url), tmp_path / "cache", tiny_base.manifest
    ) as built:
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
