"""RedisMetadataStore specifics on a real redis-server: the key layout, push tokens,
error replies, retries. The behaviour every metadata store shares is checked in
test_metadata_contract.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from adapter_store import Publication
from adapter_store._metadata import _PUBLISH
from adapter_store._metadata import RedisMetadataStore
from adapter_store.exceptions import BackendUnavailableError
from adapter_store.exceptions import TenantNotFoundError
from tests.factories import publish_version
from tests.factories import sha256_hex


@pytest.fixture
def meta(redis_url: str) -> Iterator[RedisMetadataStore]:
    store = RedisMetadataStore.from_url(redis_url, key_prefix="t:")
    store.create_tenant("acme", now=1.0, max_adapters=None, max_bytes=None)
    yield store
    store.close()


def test_publish_writes_the_documented_version_hash_with_exact_times(
    meta: RedisMetadataStore, redis_client
) -> None:
    # 17 significant digits: a time sent as a JSON number would come back rounded.
    now = 1733334567.1234567
    version = publish_version(meta, content="a", aliases=("prod",), now=now)
    fields = {k.decode(): v.decode() for k, v in redis_client.hgetall("t:v:acme/chat@1").items()}
    assert fields == {
        "d": sha256_hex("a"),
        "c": sha256_hex("a-config"),
        "s": "100",
        "r": "8",
        "b": "tiny",
        "t": repr(now),
        "o": "pushed",
    }
    assert meta.resolve("acme", "chat", "prod") == version
    assert version.created_at == now
    assert redis_client.hgetall("t:a:acme/chat") == {
        b"n": b"1",
        b"c": repr(now).encode(),
        b"@latest": b"1",
        b"@prod": b"1",
    }


def test_script_keys_are_named_and_a_missing_name_fails_before_redis(
    meta: RedisMetadataStore,
) -> None:
    publication = Publication("acme", "chat", "d", "c", 1, 8, "tiny", 1.0)
    keys, args = meta._publish_call(publication, token="tok")
    key_list, arg_list = _PUBLISH.call_args(keys, args)
    assert key_list[_PUBLISH.keys.index("token_key")] == "t:push:tok"
    assert len(arg_list) == 1 and '"size_bytes": "1"' in arg_list[0]
    with pytest.raises(ValueError, match="script keys"):
        _PUBLISH.call_args({k: v for k, v in keys.items() if k != "blobgen_key"}, args)


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


def test_a_retried_publish_returns_the_version_the_first_try_made(meta: RedisMetadataStore) -> None:
    # A publish whose reply was lost is retried with the same push token.
    publication = Publication(
        "acme", "chat", sha256_hex("w"), sha256_hex("c"), 100, 8, "tiny", 10.0
    )
    first = meta._run_publish(publication, token="token-1")
    again = meta._run_publish(publication, token="token-1")
    assert first == again == 1
    assert meta.get_adapter("acme", "chat").versions == (1,)
    assert meta.get_usage("acme").bytes == 100


def test_an_unexpected_error_reply_names_the_operation(
    meta: RedisMetadataStore, redis_client
) -> None:
    redis_client.set("t:a:acme/chat", "not a hash")  # WRONGTYPE for every hash command
    with pytest.raises(BackendUnavailableError, match=r"load adapters of acme.*WRONGTYPE"):
        meta.get_adapter("acme", "chat")
    with pytest.raises(BackendUnavailableError, match=r"publish acme/chat.*WRONGTYPE"):
        publish_version(meta)
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
