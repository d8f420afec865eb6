"""The AdapterStore facade over the in-memory metadata store and file:// blobs: push,
resolve, pull, list, alias, delete, gc, tenants, without a redis-server.

The same facade on Redis and S3 is covered in tests/integration/adapter_store; the
in-memory store is held to Redis' behaviour by test_metadata_contract.py there.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from adapter_store import AdapterNotFoundError
from adapter_store import AdapterStore
from adapter_store import AuthenticationError
from adapter_store import ConflictError
from adapter_store import InvalidReferenceError
from adapter_store import QuotaExceededError
from adapter_store import read_adapter_source
from tests.factories import BASE
from tests.factories import TinyBase
from tests.factories import blob_key_of
from tests.fakes import HookedBlobs
from tests.fakes import InMemoryMetadataStore
from tests.malformed import MALFORMED_CASES
from tests.malformed import MalformedCase

FILES = ("adapter_config.json", "adapter_model.safetensors")


def everything(store: AdapterStore, metadata: InMemoryMetadataStore) -> tuple[Any, list[str]]:
    """All the store holds: the metadata's whole state and every blob key."""
    return metadata.state(), sorted(store.blobs.list())


def test_a_pushed_adapter_resolves_and_pulls_back_byte_for_byte(
    store: AdapterStore, tiny_base: TinyBase, tmp_path: Path
) -> None:
    source = tiny_base.adapters[0]
    version = store.push("acme", "chat", source, base_model=BASE, aliases=["prod"])
    assert (version.tenant, version.name, version.version, version.rank) == ("acme", "chat", 1, 8)
    assert store.resolve("acme", "chat") == store.resolve("acme", "chat:prod") == version
    assert store.resolve("acme", "chat@1") == version
    assert sorted(store.blobs.list()) == sorted(
        blob_key_of((source / name).read_bytes()) for name in FILES
    )

    assert store.pull("acme", "chat:prod", tmp_path / "out") == version
    cached = store.fetch(version)
    for name in FILES:
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes()
        assert (cached / name).read_bytes() == (source / name).read_bytes()


def test_versions_are_numbered_in_order_and_never_reused(
    store: AdapterStore, tiny_base: TinyBase
) -> None:
    v1, v2, v3 = (store.push("acme", "chat", path, base_model=BASE) for path in tiny_base.adapters)
    assert [v.version for v in (v1, v2, v3)] == [1, 2, 3]
    store.set_alias("acme", "chat@1", "stable")
    assert store.delete("acme", "chat@3") == 1
    assert store.resolve("acme", "chat") == v2  # latest falls back to the newest live one
    with pytest.raises(InvalidReferenceError, match="not an alias"):
        store.delete("acme", "chat:stable")
    assert store.delete("acme", "chat") == 2
    with pytest.raises(AdapterNotFoundError, match="no adapter 'chat'"):
        store.resolve("acme", "chat:stable")
    assert store.push("acme", "chat", tiny_base.adapters[0], base_model=BASE).version == 4


def test_concurrent_pushes_of_one_name_get_versions_1_to_8(
    store: AdapterStore, tiny_base: TinyBase
) -> None:
    files = [read_adapter_source(path) for path in tiny_base.adapters]
    with ThreadPoolExecutor(8) as pool:
        versions = list(
            pool.map(
                lambda i: store.push("acme", "hot", files[i % 3], base_model=BASE).version,
                range(8),
            )
        )
    assert sorted(versions) == list(range(1, 9))
    assert store.get_adapter("acme", "hot").versions == tuple(range(1, 9))


def test_listings_page_by_name_and_by_version(store: AdapterStore, tiny_base: TinyBase) -> None:
    files = read_adapter_source(tiny_base.adapters[0])
    for name in ("c", "a", "b"):
        store.push("acme", name, files, base_model=BASE)
    store.push("acme", "a", files, base_model=BASE)
    first = store.list_adapters("acme", limit=2)
    assert [info.name for info in first.items] == ["a", "b"]
    rest = store.list_adapters("acme", cursor=first.next_cursor, limit=2)
    assert ([info.name for info in rest.items], rest.next_cursor) == (["c"], None)

    versions = store.list_versions("acme", "a", limit=1)
    assert [v.version.version for v in versions.items] == [1]
    assert versions.next_cursor == "1"
    last = store.list_versions("acme", "a", cursor=versions.next_cursor)
    assert [(v.version.version, v.aliases) for v in last.items] == [(2, ("latest",))]
    with pytest.raises(InvalidReferenceError, match="invalid version cursor 'x'"):
        store.list_versions("acme", "a", cursor="x")


def test_a_refused_push_leaves_metadata_and_blobs_as_they_were(
    store: AdapterStore, metadata: InMemoryMetadataStore, tiny_base: TinyBase
) -> None:
    store.set_quota("acme", max_adapters=1)
    store.push("acme", "one", tiny_base.adapters[0], base_model=BASE)
    before = everything(store, metadata)
    with pytest.raises(QuotaExceededError, match="holds 1 adapters, its quota is 1"):
        store.push("acme", "two", tiny_base.adapters[1], base_model=BASE)
    assert everything(store, metadata) == before


@pytest.mark.parametrize("case", MALFORMED_CASES, ids=lambda case: case.id)
def test_each_malformed_adapter_is_refused_and_nothing_is_written(
    case: MalformedCase,
    store: AdapterStore,
    metadata: InMemoryMetadataStore,
    tiny_base: TinyBase,
    tmp_path: Path,
) -> None:
    source = case.write(tiny_base.adapters[0], tmp_path / case.id)
    limited = AdapterStore(metadata, store.blobs, limits=case.limits)
    before = everything(store, metadata)
    with pytest.raises(case.error, match=re.escape(case.message)):
        limited.push("acme", "bad", source, base_model=BASE)
    assert everything(store, metadata) == before


def test_gc_collects_what_deleted_versions_left_and_a_push_it_races_uploads_again(
    store: AdapterStore, tiny_base: TinyBase, tmp_path: Path
) -> None:
    old = store.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    kept = store.push("acme", "chat", tiny_base.adapters[1], base_model=BASE)
    store.delete("acme", "chat@1")
    assert store.gc(grace_s=3600).blobs_deleted == 0  # announced too recently
    report = store.gc(grace_s=0)
    assert (report.blobs_deleted, report.versions_purged) == (1, 1)
    assert blob_key_of((tiny_base.adapters[0] / FILES[1]).read_bytes()) not in set(
        store.blobs.list()
    )

    # gc with no grace runs once, right after the push writes the weights (its second
    # blob; the config blob is shared with version 2) and deletes them; the push notices
    # on reading them back and uploads them again before publishing.
    writes: list[None] = []
    ran: list[int] = []

    def gc_once() -> None:
        writes.append(None)
        if len(writes) == 2:
            ran.append(store.gc(grace_s=0).blobs_deleted)

    racing = AdapterStore(store.metadata, HookedBlobs(store.blobs, gc_once))
    again = racing.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    assert ran == [1]
    assert (again.version, again.digest) == (3, old.digest)
    assert store.pull("acme", "chat@3", tmp_path / "out") == again
    assert store.resolve("acme", "chat@2") == kept


def test_tenants_keys_and_quotas(store: AdapterStore, metadata: InMemoryMetadataStore) -> None:
    tenant, key = store.create_tenant("beta", max_adapters=2, max_bytes=1000)
    assert (tenant.name, tenant.max_adapters, tenant.max_bytes) == ("beta", 2, 1000)
    assert store.tenant_for_key(key) == "beta"
    assert key not in repr(metadata.state())  # only its hash is kept
    assert store.revoke_key(key) == "beta"
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        store.tenant_for_key(key)
    with pytest.raises(AuthenticationError, match="start with 'lmx_'"):
        store.tenant_for_key("not-a-key")
    with pytest.raises(ConflictError, match="pick another name"):
        store.create_tenant("beta")
    assert store.ensure_tenant("beta") == store.get_tenant("beta")
    store.set_quota("beta")
    usage = store.get_usage("beta")
    assert (usage.adapters, usage.bytes, usage.max_adapters, usage.max_bytes) == (0, 0, None, None)
    assert store.list_tenants() == ["acme", "beta"]


def test_usage_is_counted_per_version_and_summed_per_adapter(
    store: AdapterStore, tiny_base: TinyBase
) -> None:
    ticks = iter(range(100, 200))
    clocked = AdapterStore(store.metadata, store.blobs, clock=lambda: float(next(ticks)))
    v1 = clocked.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    v2 = clocked.push("acme", "chat", tiny_base.adapters[1], base_model=BASE)
    for version in (v1, v2, v2):
        clocked.record_usage(version)
    rows = clocked.list_versions("acme", "chat").items
    assert [(row.request_count, row.last_used_at) for row in rows] == [(1, 104.0), (2, 106.0)]
    info = clocked.get_adapter("acme", "chat")
    assert (info.request_count, info.last_used_at, info.created_at) == (3, 106.0, v1.created_at)
