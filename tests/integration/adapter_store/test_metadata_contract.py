"""The metadata contract: the same checks against RedisMetadataStore on a real
redis-server and against the functional tier's InMemoryMetadataStore, so the fake
cannot drift from what production does.

A check that needs to see "nothing changed" compares the whole state (every Redis key
and value; every field of the fake) before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from adapter_store import Admission
from adapter_store import Lease
from adapter_store import MetadataStore
from adapter_store import Publication
from adapter_store import RedisMetadataStore
from adapter_store import TenantLimits
from adapter_store._rate_limits import Buckets
from adapter_store._rate_limits import admit
from adapter_store.exceptions import AdapterNotFoundError
from adapter_store.exceptions import AuthenticationError
from adapter_store.exceptions import BlobCollectedError
from adapter_store.exceptions import ConflictError
from adapter_store.exceptions import QuotaExceededError
from adapter_store.exceptions import TenantNotFoundError
from tests.factories import publish_version
from tests.factories import sha256_hex
from tests.fakes import InMemoryMetadataStore
from tests.integration.adapter_store.conftest import redis_state


@pytest.fixture(params=["redis", "memory"])
def meta(request: pytest.FixtureRequest) -> Iterator[MetadataStore]:
    store: MetadataStore
    if request.param == "redis":
        store = RedisMetadataStore.from_url(request.getfixturevalue("redis_url"), key_prefix="t:")
    else:
        store = InMemoryMetadataStore()
    assert isinstance(store, MetadataStore)
    store.create_tenant("acme", now=1.0, max_adapters=None, max_bytes=None)
    yield store
    store.close()


def state_of(meta: MetadataStore) -> Any:
    if isinstance(meta, InMemoryMetadataStore):
        return meta.state()
    assert isinstance(meta, RedisMetadataStore)
    return redis_state(meta._redis)


def test_publish_allocates_consecutive_versions_and_moves_latest(meta: MetadataStore) -> None:
    v1 = publish_version(meta, content="a")
    v2 = publish_version(meta, content="b", aliases=("prod",))
    assert (v1.version, v2.version) == (1, 2)
    assert meta.resolve("acme", "chat", "latest") == v2
    assert meta.resolve("acme", "chat", "prod").digest == sha256_hex("b")
    got = meta.resolve("acme", "chat", "1")
    assert (got.digest, got.config_digest, got.size_bytes, got.rank, got.base_model) == (
        sha256_hex("a"),
        sha256_hex("a-config"),
        100,
        8,
        "tiny",
    )


def test_each_version_keeps_its_origin_through_resolve_and_listings(meta: MetadataStore) -> None:
    publish_version(meta, content="a")
    publish_version(meta, content="b", origin="trained")

    assert [meta.resolve("acme", "chat", n).origin for n in ("1", "2")] == ["pushed", "trained"]
    listed = meta.list_versions("acme", "chat", cursor=None, limit=10).items
    assert [v.version.origin for v in listed] == ["pushed", "trained"]
    assert meta.get_adapter("acme", "chat").latest.origin == "trained"


def test_concurrent_pushes_of_one_name_get_distinct_consecutive_versions(
    meta: MetadataStore,
) -> None:
    with ThreadPoolExecutor(16) as pool:
        versions = list(
            pool.map(lambda i: publish_version(meta, content=str(i)).version, range(16))
        )
    assert sorted(versions) == list(range(1, 17))
    assert meta.get_adapter("acme", "chat").versions == tuple(range(1, 17))
    assert meta.get_usage("acme").bytes == 1600


def test_resolve_names_what_is_missing(meta: MetadataStore) -> None:
    publish_version(meta)
    with pytest.raises(AdapterNotFoundError, match="no adapter 'nope'"):
        meta.resolve("acme", "nope", "latest")
    with pytest.raises(AdapterNotFoundError, match="no alias 'prod'"):
        meta.resolve("acme", "chat", "prod")
    with pytest.raises(AdapterNotFoundError, match="no live version 7"):
        meta.resolve("acme", "chat", "7")


def test_publish_to_unknown_tenant_is_rejected_and_writes_nothing(
    meta: MetadataStore,
) -> None:
    before = state_of(meta)
    with pytest.raises(TenantNotFoundError, match="loramux tenant create ghost"):
        publish_version(meta, tenant="ghost")
    assert state_of(meta) == before


def test_count_quota_counts_adapter_names_not_versions(meta: MetadataStore) -> None:
    meta.set_quota("acme", max_adapters=1, max_bytes=None)
    publish_version(meta, "one", content="a")
    publish_version(meta, "one", content="b")  # a new version of a held adapter is not a new one
    before = state_of(meta)
    with pytest.raises(QuotaExceededError, match="holds 1 adapters, its quota is 1"):
        publish_version(meta, "two")
    assert state_of(meta) == before
    meta.delete("acme", "one", None, now=11.0)
    assert publish_version(meta, "two").version == 1


def test_byte_quota_charges_every_version_its_full_size(meta: MetadataStore) -> None:
    meta.set_quota("acme", max_adapters=None, max_bytes=250)
    publish_version(meta, content="same", size=100)
    publish_version(meta, content="same", size=100)  # same blobs, charged again
    with pytest.raises(QuotaExceededError, match="holds 200 bytes, its quota is 250"):
        publish_version(meta, content="same", size=100)
    meta.check_publish("acme", "chat", 50)  # still fits
    with pytest.raises(QuotaExceededError):
        meta.check_publish("acme", "chat", 51)
    usage = meta.get_usage("acme")
    assert (usage.adapters, usage.bytes, usage.max_bytes) == (1, 200, 250)


def test_delete_version_drops_its_aliases_and_moves_latest_back(meta: MetadataStore) -> None:
    publish_version(meta, content="a", aliases=("stable",))
    publish_version(meta, content="b", aliases=("prod",))
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


def test_deleted_adapter_keeps_its_version_counter(meta: MetadataStore) -> None:
    publish_version(meta)
    publish_version(meta)
    assert meta.delete("acme", "chat", None, now=11.0) == 2
    with pytest.raises(AdapterNotFoundError, match="no adapter 'chat'"):
        meta.resolve("acme", "chat", "latest")
    assert meta.get_usage("acme").adapters == 0
    # A re-pushed name never reuses a number, so caches keyed by version stay correct.
    assert publish_version(meta).version == 3


def test_set_alias_needs_a_live_version(meta: MetadataStore) -> None:
    v1 = publish_version(meta)
    publish_version(meta)
    meta.set_alias(v1, "prod")
    assert meta.resolve("acme", "chat", "prod") == v1
    meta.delete("acme", "chat", 1, now=11.0)
    with pytest.raises(AdapterNotFoundError, match="no live version 1"):
        meta.set_alias(v1, "prod")
    with pytest.raises(AdapterNotFoundError, match="no alias 'prod'"):
        meta.remove_alias("acme", "chat", "prod")


def test_list_adapters_pages_in_name_order(meta: MetadataStore) -> None:
    names = [f"a{i:02d}" for i in range(7)]
    for name in reversed(names):
        publish_version(meta, name)
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


def test_list_versions_pages_with_aliases_and_usage(meta: MetadataStore) -> None:
    versions = [publish_version(meta, content=str(i)) for i in range(5)]
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


def test_record_usage_never_recreates_a_purged_version(meta: MetadataStore) -> None:
    v1 = publish_version(meta)
    publish_version(meta)
    meta.delete("acme", "chat", 1, now=11.0)
    assert meta.purge_deleted_versions(before=12.0) == 1
    before = state_of(meta)
    meta.record_usage(v1, now=13.0)
    assert state_of(meta) == before
    assert meta.list_versions("acme", "chat", cursor=None, limit=10).items[0].version.version == 2


def test_tenants_and_keys(meta: MetadataStore) -> None:
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


def test_gc_claims_spare_referenced_and_recently_announced_blobs(meta: MetadataStore) -> None:
    version = publish_version(meta, content="kept")
    announced = sha256_hex("announced")
    orphan = sha256_hex("orphan")
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


def test_a_publish_on_a_blob_gc_claimed_since_the_announce_is_refused(
    meta: MetadataStore,
) -> None:
    digest, config_digest = sha256_hex("w"), sha256_hex("c")
    _, generations = meta.announce_blobs([digest, config_digest], now=10.0)
    assert meta.claim_blob_for_gc(digest, announced_before=20.0, now=21.0) == "claimed"
    # Another push announcing the same blob again must not make the first one's pass.
    assert meta.announce_blobs([digest], now=22.0) == ([digest], {digest: 1})
    with pytest.raises(BlobCollectedError, match=f"gc deleted blob {digest}"):
        meta.publish(
            Publication(
                "acme",
                "chat",
                digest,
                config_digest,
                size_bytes=100,
                rank=8,
                base_model="tiny",
                created_at=23.0,
                generations=(generations[digest], generations[config_digest]),
            )
        )
    with pytest.raises(AdapterNotFoundError):
        meta.get_adapter("acme", "chat")
    assert meta.get_usage("acme").bytes == 0


# -- request limits -----------------------------------------------------------------------


def test_limits_are_stored_per_tenant_and_need_the_tenant(meta: MetadataStore) -> None:
    assert meta.get_limits("acme") == TenantLimits()
    limits = TenantLimits(requests_per_s=2.5, tokens_per_min=600, max_in_flight=3)
    meta.set_limits("acme", limits)
    assert meta.get_limits("acme") == limits
    meta.set_limits("acme", TenantLimits(max_in_flight=1))
    assert meta.get_limits("acme") == TenantLimits(max_in_flight=1)
    with pytest.raises(TenantNotFoundError):
        meta.set_limits("ghost", limits)
    with pytest.raises(TenantNotFoundError):
        meta.get_limits("ghost")


def _admit(meta: MetadataStore, limits: TenantLimits, now: float, tokens: int = 10) -> Admission:
    return meta.admit(
        Lease("acme", f"lease-{now!r}-{tokens}", now + 30.0), limits, tokens=tokens, now=now
    )


def test_admission_follows_the_pure_policy_step_for_step(meta: MetadataStore) -> None:
    """A scripted sequence: every answer equals the pure policy's on the same inputs."""
    limits = TenantLimits(requests_per_s=2.0, tokens_per_min=120, max_in_flight=None)
    buckets: Buckets | None = None
    for now, tokens in [(100.0, 10), (100.1, 10), (100.2, 10), (100.7, 50), (101.3, 70),
                        (101.31, 20), (140.0, 90), (139.0, 5), (139.5, 1)]:  # fmt: skip
        expected, after = admit(limits, buckets, in_flight=0, tokens=tokens, now=now)
        got = _admit(meta, limits, now, tokens)
        assert (got.admitted, got.limit) == (expected.admitted, expected.limit), (now, tokens)
        assert got.retry_after_s == pytest.approx(expected.retry_after_s, rel=1e-12, abs=1e-12)
        buckets = after
        for lease in list(_leases(meta)):  # in-flight is tested apart: end each request
            meta.release("acme", lease)


def _leases(meta: MetadataStore) -> list[str]:
    if isinstance(meta, InMemoryMetadataStore):
        return list(meta.state()["_leases"].get("acme", {}))
    assert isinstance(meta, RedisMetadataStore)
    return list(meta._redis.zrange("t:lf:acme", 0, -1))


def test_in_flight_leases_are_released_or_expire(meta: MetadataStore) -> None:
    limits = TenantLimits(max_in_flight=2)
    first, second = _admit(meta, limits, 10.0), _admit(meta, limits, 10.5)
    assert (first.in_flight, second.in_flight) == (1, 2)
    refused = _admit(meta, limits, 11.0)
    assert (refused.admitted, refused.limit, refused.in_flight) == (False, "max_in_flight", 2)
    meta.release("acme", "lease-10.0-10")
    meta.release("acme", "lease-10.0-10")  # twice: a no-op
    assert _admit(meta, limits, 12.0).admitted
    # The ingress holding the other two died: they expire after their ttl (30 s), unless
    # renewed; a renewed lease outlives the ttl it was admitted with.
    meta.renew_leases({"acme": ["lease-12.0-10", "lease-gone"]}, now=35.0, lease_ttl_s=30.0)
    answer = _admit(meta, limits, 41.0)
    assert (answer.admitted, answer.in_flight) == (True, 2)
    assert sorted(_leases(meta)) == ["lease-12.0-10", "lease-41.0-10"]


def test_a_refused_request_charges_nothing(meta: MetadataStore) -> None:
    limits = TenantLimits(requests_per_s=1.0, tokens_per_min=60)
    assert _admit(meta, limits, 5.0, tokens=60).admitted
    before = state_of(meta)
    refused = _admit(meta, limits, 5.5, tokens=1)
    assert (refused.admitted, refused.limit) == (False, "requests_per_s")
    assert refused.retry_after_s == pytest.approx(0.5)
    assert state_of(meta) == before


def test_concurrent_admissions_never_exceed_the_budget(meta: MetadataStore) -> None:
    limits = TenantLimits(requests_per_s=5.0, max_in_flight=None)
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda i: meta.admit(Lease("acme", f"l{i}", 80.0), limits, tokens=1, now=50.0),
                range(40),
            )
        )
    assert sum(a.admitted for a in answers) == 5
