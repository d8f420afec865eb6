"""Failures: Redis killed or unreachable, a blob store failing between write and publish.

Each test runs its own appendonly redis-server, so it can kill it and restart it on the
same files, as a crash and a restart would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter_store._blobs import BlobStore
from adapter_store._blobs import open_blob_store
from adapter_store._metadata import RedisMetadataStore
from adapter_store._redis_server import RedisServerProcess
from adapter_store._store import AdapterStore
from adapter_store.exceptions import AdapterNotFoundError
from adapter_store.exceptions import BackendUnavailableError
from tests.factories import BASE
from tests.factories import TinyBase
from tests.factories import build_store
from tests.fakes import HookedBlobs
from tests.integration.adapter_store.conftest import snapshot


@pytest.fixture
def server(own_redis_server: RedisServerProcess) -> RedisServerProcess:
    return own_redis_server


def _store(server: RedisServerProcess, blobs: BlobStore, manifest) -> AdapterStore:
    metadata = RedisMetadataStore.from_url(server.url, key_prefix="t:", attempts=2, timeout_s=2.0)
    return build_store(metadata, blobs, manifest)


def _restart(server: RedisServerProcess) -> RedisServerProcess:
    restarted = RedisServerProcess(server.data_dir, port=server.port, appendonly=True)
    restarted.start()
    return restarted


def test_redis_killed_between_blob_write_and_publish_leaves_no_version(
    server: RedisServerProcess, blob_url: str, tiny_base: TinyBase
) -> None:
    blobs = open_blob_store(blob_url)
    store = _store(server, blobs, tiny_base.manifest)
    v1 = store.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    usage = store.get_usage("acme")

    killer = _store(server, HookedBlobs(blobs, server.kill), tiny_base.manifest)
    with pytest.raises(BackendUnavailableError, match=r"Redis .* failed after 2 attempts"):
        killer.push("acme", "chat", tiny_base.adapters[1], base_model=BASE)

    restarted = _restart(server)
    try:
        store = _store(restarted, blobs, tiny_base.manifest)
        assert store.resolve("acme", "chat") == v1
        assert store.get_adapter("acme", "chat").versions == (1,)
        with pytest.raises(AdapterNotFoundError):
            store.resolve("acme", "chat@2")
        assert store.get_usage("acme") == usage
        # The orphan blob it left is collected; the published one is kept.
        assert store.gc(grace_s=0).blobs_deleted == 1
        assert store.pull("acme", "chat", Path(restarted.data_dir) / "out") == v1
        # The next push gets the next number: nothing was allocated by the failed one.
        assert store.push("acme", "chat", tiny_base.adapters[1], base_model=BASE).version == 2
    finally:
        restarted.stop()


def test_blob_failure_after_write_publishes_nothing_and_gc_restores_the_store(
    server: RedisServerProcess, blob_url: str, tiny_base: TinyBase
) -> None:
    blobs = open_blob_store(blob_url)
    store = _store(server, blobs, tiny_base.manifest)
    store.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    store.gc(grace_s=0)
    before = snapshot(store)

    def fail() -> None:
        raise BackendUnavailableError("injected: the blob store went away")

    failing = _store(server, HookedBlobs(blobs, fail), tiny_base.manifest)
    with pytest.raises(BackendUnavailableError, match="injected"):
        failing.push("acme", "chat", tiny_base.adapters[1], base_model=BASE)
    assert store.get_adapter("acme", "chat").versions == (1,)
    store.gc(grace_s=0)
    assert snapshot(store) == before


def test_resolve_with_redis_down_raises_backend_unavailable_then_recovers(
    server: RedisServerProcess, tmp_path: Path, tiny_base: TinyBase
) -> None:
    blobs = open_blob_store((tmp_path / "blobs").as_uri())
    store = _store(server, blobs, tiny_base.manifest)
    version = store.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    server.kill()
    with pytest.raises(BackendUnavailableError, match=r"Redis 127\.0\.0\.1:\d+: resolve"):
        store.resolve("acme", "chat")

    # Redis comes back while the store is backing off: the retry succeeds.
    restarted: list[RedisServerProcess] = []

    def restart_during_backoff(_delay: float) -> None:
        if not restarted:
            restarted.append(_restart(server))

    metadata = RedisMetadataStore.from_url(
        server.url, key_prefix="t:", attempts=3, sleep=restart_during_backoff
    )
    try:
        assert AdapterStore(metadata, blobs).resolve("acme", "chat") == version
        assert len(restarted) == 1
    finally:
        for process in restarted:
            process.stop()
