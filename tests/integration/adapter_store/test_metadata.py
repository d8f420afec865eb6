"""MetadataStore against a real redis-server: versions, aliases, quotas, keys, listing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from adapter_store._identity import AdapterVersion
from adapter_store._metadata import RedisMetadataStore, _Publication
from adapter_store.exceptions import (
    AdapterNotFoundError,
    AuthenticationError,
    BackendUnavailableError,
    BlobCollectedError,
    ConflictError,
    QuotaExceededError,
    TenantNotFoundError,
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def meta(redis_url: str) -> Iterator[RedisMetadataStore]:
    store = RedisMetadataStore.from_url(redis_url, key_prefix="t:")
    store.create_tenant("acme", now=1.0, max_adapters=None, max_bytes=None)
    yield store
    store.close()


def _publish(
    meta: RedisMetadataStore,
    name: str = "chat",
    *,
    tenant: str = "acme",
    content: str = "w",
    size: int = 100,
    aliases: tuple[str, ...] = (),
) -> AdapterVersion:
    return meta.publish(
        tenant,
        name,
        digest=_digest(content),
        config_digest=_digest(content + "-config"),
        size_bytes=size,
        rank=8,
        base_model="tiny",
        now=10.0,
        generations=(0, 0),  # no blob here was ever claimed by gc
        aliases=aliases,
    )


def test_publish_allocates_consecutive_versions_and_moves_latest(meta: RedisMetadataStore) -> None:
    v1 = _publish(meta, content="a")
    v2 = _publish(meta, content="b", aliases=("prod",))
    assert (v1.version, v2.version) == (1, 2)
    assert meta.resolve("acme", "chat", "latest") == v2
    assert meta.resolve("acme", "chat", "prod").digest == _digest("b")
    got = meta.resolve("acme", "chat", "1")
    assert (got.digest, got.config_digest, got.size_bytes, got.rank, got.base_model) == (
        _digest("a"),
        _digest("a-config"),
        100,
        8,
        "tiny",
    )


def test_concurrent_pushes_of_one_name_get_distinct_consecutive_versions(
    meta: RedisMetadataStore,
) -> None:
    with ThreadPoolExecutor(16) as pool:
        versions = list(pool.map(lambda i: _publish(meta, content=str(i)).version, range(16)))
    assert sorted(versions) == list(range(1, 17))
    assert meta.get_adapter("acme", "chat").versions == tuple(range(1, 17))
    assert meta.get_usage("acme").bytes == 1600


def test_resolve_names_what_is_missing(meta: RedisMetadataStore) -> None:
    _publish(meta)
    with pytest.raises(AdapterNotFoundError, match="no adapter 'nope'"):
        meta.resolve("acme", "nope", "latest")
    with pytest.raises(AdapterNotFoundError, match="no alias 'prod'"):
        meta.resolve("acme", "chat", "prod")
    with pytest.raises(AdapterNotFoundError, match="no live version 7"):
        meta.resolve("acme", "chat", "7")


def test_publish_to_unknown_tenant_is_rejected_and_writes_nothing(
    meta: RedisMetadataStore, redis_client
) -> None:
    before = sorted(redis_client.keys("*"))
    with pytest.raises(TenantNotFoundError, match="loramux tenant create ghost"):
        _publish(meta, tenant="ghost")
    assert sorted(redis_client.keys("*")) == before


def test_count_quota_counts_adapter_names_not_versions(meta: RedisMetadataStore, redis_client) -> None:
    meta.set_quota("acme", max_adapters=1, max_bytes=None)
    _publish(meta, "one", content="a")
    _publish(meta, "one", content="b")  # a new version of a held adapter is not a new one
    before = sorted(redis_client.keys("*"))
    with pytest.raises(QuotaExceededError, match="holds 1 adapters, its quota is 1"):
        _publish(meta, "two")
    assert sorted(redis_client.keys("*")) == before
    meta.delete("acme", "one", None, now=11.0)
    assert _publish(meta, "two").version == 1


def test_byte_quota_charges_every_version_its_full_size(meta: RedisMetadataStore) -> None:
    meta.set_quota("acme", max_adapters=None, max_bytes=250)
    _publish(meta, content="same", size=100)
    _publish(meta, content="same", size=100)  # same blobs, charged again
    with pytest.raises(QuotaExceededError, match="holds 200 bytes, its quota is 250"):
        _publish(meta, content="same", size=100)
    meta.check_publish("acme", "chat", 50)  # still fits
    with pytest.raises(QuotaExceededError):
        meta.check_publish("acme", "chat", 51)
    usage = meta.get_usage("acme")
    assert (usage.adapters, usage.bytes, usage.max_bytes) == (1, 200, 250)


def test_delete_version_drops_its_aliases_and_moves_latest_back(meta: RedisMetadataStore) -> None:
    _publish(meta, content="a", aliases=("stable",))
    _publish(meta, content="b", aliases=("prod",))
    meta.delete("acme", "chat", 2, now=11.0)
    assert meta.resolve("acme", "chat", "latest").version == 1
    assert meta.resolve("acme", "chat", "stable").version == 1
    with pytest.raises(AdapterNotFoundError, match="no alias 'prod'"):
        meta.resolve("acme", "chat", "prod")
    with pytest.raises(AdapterNotFoundError, match="no live version 2"):
        meta.resolve("acme", "chat", "2")
    with pytest.raises(AdapterNotFoundError):
        meta.delete("acme", "chat", 2, now=12.0)
    assert meta.get_usage("acme").bytes == 100


def test_deleted_adapter_keeps_its_version_counter(meta: RedisMetadataStore) -> None:
    _publish(meta)
    _publish(meta)
    assert meta.delete("acme", "chat", None, now=11.0) == 2
    with pytest.raises(AdapterNotFoundError, match="no adapter 'chat'"):
        meta.resolve("acme", "chat", "latest")
    assert meta.get_usage("acme").adapters == 0
    # A re-pushed name never reuses a number, so caches keyed by version stay correct.
    assert _publish(meta).version == 3


def test_set_alias_needs_a_live_version(meta: RedisMetadataStore) -> None:
    v1 = _publish(meta)
    _publish(meta)
    meta.set_alias(v1, "prod")
    assert meta.resolve("acme", "chat", "prod") == v1
    meta.delete("acme", "chat", 1, now=11.0)
    with pytest.raises(AdapterNotFoundError, match="no live version 1"):
        meta.set_alias(v1, "prod")
    with pytest.raises(AdapterNotFoundError, match="no alias 'prod'"):
        meta.remove_alias("acme", "chat", "prod")


def test_list_adapters_pages_in_name_order(meta: RedisMetadataStore) -> None:
    names = [f"a{i:02d}" for i in range(7)]
    for name in reversed(names):
        _publish(meta, name)
    seen: list[str] = []
    cursor = None
    while True:
        page = meta.list_adapters("acme", cursor=cursor, limit=3)
        seen.extend(info.name for info in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == names
    assert meta.list_adapters("acme", cursor=None, limit=10).next_cursor is None


def test_list_versions_pages_with_aliases_and_usage(meta: RedisMetadataStore) -> None:
    versions = [_publish(meta, content=str(i)) for i in range(5)]
    meta.set_alias(versions[1], "prod")
    meta.record_usage(versions[1], now=50.0)
    meta.record_usage(versions[1], now=60.0)
    first = meta.list_versions("acme", "chat", cursor=None, limit=2)
    assert [v.version.version for v in first.items] == [1, 2]
    assert first.items[1].aliases == ("prod",)
    assert (first.items[1].request_count, first.items[1].last_used_at) == (2, 60.0)
    rest = meta.list_versions("acme", "chat", cursor=first.next_cursor, limit=10)
    assert [v.version.version for v in rest.items] == [3, 4, 5]
    assert rest.items[-1].aliases == ("latest",)
    assert rest.next_cursor is None
    info = meta.get_adapter("acme", "chat")
    assert (info.request_count, info.last_used_at) == (2, 60.0)
    assert info.aliases == {"latest": 5, "prod": 2}


def test_record_usage_never_recreates_a_purged_version(meta: RedisMetadataStore) -> None:
    v1 = _publish(meta)
    _publish(meta)
    meta.delete("acme", "chat", 1, now=11.0)
    assert meta.purge_deleted_versions(before=12.0) == 1
    meta.record_usage(v1, now=13.0)
    assert meta.list_versions("acme", "chat", cursor=None, limit=10).items[0].version.version == 2
    assert meta._redis.exists(meta._version_key(v1)) == 0


def test_tenants_and_keys(meta: RedisMetadataStore) -> None:
    with pytest.raises(ConflictError):
        meta.create_tenant("acme", now=2.0, max_adapters=None, max_bytes=None)
    meta.create_tenant("beta", now=2.0, max_adapters=3, max_bytes=1000)
    assert meta.list_tenants() == ["acme", "beta"]
    assert meta.get_tenant("beta").max_adapters == 3
    meta.add_key("beta", "h1")
    assert meta.tenant_for_key("h1") == "beta"
    assert meta.revoke_key("h1") == "beta"
    assert meta.tenant_for_key("h1") is None
    with pytest.raises(AuthenticationError):
        meta.revoke_key("h1")
    with pytest.raises(TenantNotFoundError):
        meta.add_key("ghost", "h2")
    with pytest.raises(ConflictError, match="pick another name"):
        meta.create_tenant("beta", now=3.0, max_adapters=None, max_bytes=None)


def test_a_key_moved_to_another_tenant_leaves_the_old_tenants_key_set(
    meta: RedisMetadataStore, redis_client
) -> None:
    meta.create_tenant("beta", now=2.0, max_adapters=None, max_bytes=None)
    meta.add_key("acme", "h1")
    meta.add_key("beta", "h1")
    assert meta.tenant_for_key("h1") == "beta"
    assert redis_client.smembers("t:tk:acme") == set()
    assert redis_client.smembers("t:tk:beta") == {b"h1"}
    meta.add_key("beta", "h1")  # idempotent
    assert redis_client.smembers("t:tk:beta") == {b"h1"}
    with pytest.raises(TenantNotFoundError):
        meta.get_usage("ghost")


def test_gc_claims_spare_referenced_and_recently_announced_blobs(meta: RedisMetadataStore) -> None:
    version = _publish(meta, content="kept")
    announced = _digest("announced")
    orphan = _digest("orphan")
    assert meta.announce_blobs([announced], now=100.0) == ([], {announced: 0})
    claim = meta.claim_blob_for_gc
    assert claim(version.digest, announced_before=50.0, now=101.0) == "referenced"
    assert claim(announced, announced_before=50.0, now=101.0) == "recent"
    assert claim(announced, announced_before=100.5, now=101.0) == "claimed"
    meta.release_gc_claims([announced], announced_before=50.0)
    assert claim(orphan, announced_before=50.0, now=101.0) == "claimed"
    # A push that announces a blob gc is deleting learns so and must wait, then re-upload.
    assert meta.announce_blobs([orphan], now=102.0) == ([orphan], {orphan: 1})
    assert meta.gc_claimed([orphan, announced], now=103.0) == [orphan]
    meta.release_gc_claims([orphan], announced_before=50.0)
    assert meta.gc_claimed([orphan], now=104.0) == []


def test_a_retried_publish_returns_the_version_the_first_try_made(meta: RedisMetadataStore) -> None:
    # A publish whose reply was lost is retried with the same push token.
    publication = _Publication(
        "acme", "chat", _digest("w"), _digest("c"), 100, 8, "tiny", 10.0, token="token-1"
    )
    first = meta._run_publish(publication)
    again = meta._run_publish(publication)
    assert first == again == 1
    assert meta.get_adapter("acme", "chat").versions == (1,)
    assert meta.get_usage("acme").bytes == 100


def test_a_publish_on_a_blob_gc_claimed_since_the_announce_is_refused(
    meta: RedisMetadataStore,
) -> None:
    digest, config_digest = _digest("w"), _digest("c")
    _, generations = meta.announce_blobs([digest, config_digest], now=10.0)
    assert meta.claim_blob_for_gc(digest, announced_before=20.0, now=21.0) == "claimed"
    # Another push announcing the same blob again must not make the first one's pass.
    assert meta.announce_blobs([digest], now=22.0) == ([digest], {digest: 1})
    with pytest.raises(BlobCollectedError, match=f"gc deleted blob {digest}"):
        meta.publish(
            "acme",
            "chat",
            digest=digest,
            config_digest=config_digest,
            size_bytes=100,
            rank=8,
            base_model="tiny",
            now=23.0,
            generations=(generations[digest], generations[config_digest]),
        )
    with pytest.raises(AdapterNotFoundError):
        meta.get_adapter("acme", "chat")
    assert meta.get_usage("acme").bytes == 0


def test_an_unexpected_error_reply_names_the_operation(meta: RedisMetadataStore, redis_client) -> None:
    redis_client.set("t:a:acme/chat", "not a hash")  # WRONGTYPE for every hash command
    with pytest.raises(BackendUnavailableError, match=r"load adapters of acme.*WRONGTYPE"):
        meta.get_adapter("acme", "chat")
    with pytest.raises(BackendUnavailableError, match=r"publish acme/chat.*WRONGTYPE"):
        _publish(meta)
    with pytest.raises(BackendUnavailableError, match=r"resolve acme/chat.*check the Redis"):
        meta.resolve("acme", "chat", "latest")


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.exceptions.MasterDownError("Link with MASTER is down"),
    ],
    ids=["READONLY", "MASTERDOWN"],
)
def test_failover_errors_are_retried_then_reported(redis_url: str, error: Exception) -> None:
    sleeps: list[float] = []
    meta = RedisMetadataStore.from_url(redis_url, key_prefix="t:", sleep=sleeps.append)
    replies = iter([error, "ok"])

    def flaky() -> str:
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    assert meta._call("SET x", flaky) == "ok"
    assert len(sleeps) == 1

    def always() -> str:
        raise error

    with pytest.raises(BackendUnavailableError, match="SET x failed after 4 attempts"):
        meta._call("SET x", always)
    meta.close()
