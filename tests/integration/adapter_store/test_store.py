"""AdapterStore on real Redis and on both blob backends (S3 over HTTP and file://)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from typing import cast

import pytest

from adapter_store._blobs import blob_key
from adapter_store._identity import AdapterVersion
from adapter_store._metadata import RedisMetadataStore
from adapter_store._source import AdapterFiles
from adapter_store._source import read_adapter_source
from adapter_store._store import AdapterStore
from adapter_store.exceptions import AdapterNotFoundError
from adapter_store.exceptions import AuthenticationError
from adapter_store.exceptions import BackendUnavailableError
from adapter_store.exceptions import ConflictError
from adapter_store.exceptions import InvalidNameError
from adapter_store.exceptions import InvalidReferenceError
from adapter_store.exceptions import ManifestNotFoundError
from adapter_store.exceptions import QuotaExceededError
from adapter_store.exceptions import TenantNotFoundError
from tests.factories import BASE
from tests.factories import TinyBase
from tests.factories import blob_key_of
from tests.factories import sha256_hex
from tests.factories import tiny_llama
from tests.factories import write_wide_adapter
from tests.fakes import HookedBlobs
from tests.integration.adapter_store.conftest import snapshot
from tests.malformed import MALFORMED_CASES
from tests.malformed import MalformedCase


def _lora_tensors(model: object) -> dict[str, object]:
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}  # type: ignore[attr-defined]


def test_push_pull_round_trip_loads_in_peft_with_identical_tensors(
    store: AdapterStore, tiny_base: TinyBase, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel

    source = tiny_base.adapters[0]
    version = store.push("acme", "chat", source, base_model=BASE)
    pulled = store.pull("acme", "chat@1", tmp_path / "pulled")
    assert pulled == version
    for filename in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "pulled" / filename).read_bytes() == (source / filename).read_bytes()

    original = _lora_tensors(PeftModel.from_pretrained(tiny_llama(), str(source)))
    loaded = _lora_tensors(PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "pulled")))
    assert original.keys() == loaded.keys()
    assert len(original) == 2 * 2 * 2  # lora_A and lora_B of q_proj and v_proj, 2 layers
    for key, tensor in original.items():
        assert torch.equal(tensor, loaded[key]), key


def test_a_large_adapter_is_spooled_and_round_trips_byte_for_byte(
    store: AdapterStore, tmp_path: Path
) -> None:
    # 16 MiB of weights: read from disk in chunks into a mapped temporary file, then
    # validated, hashed and stored (a put to S3, or a file) from that mapping.
    store.register_manifest(write_wide_adapter(tmp_path / "wide", "wide-llama"))
    source = tmp_path / "wide"

    version = store.push("acme", "wide", source, base_model="wide-llama")
    pulled = tmp_path / "pulled"
    store.pull("acme", "wide", pulled)

    weights = (source / "adapter_model.safetensors").read_bytes()
    assert len(weights) > 16 << 20
    assert (version.digest, version.rank) == (sha256_hex(weights), 64)
    assert (pulled / "adapter_model.safetensors").read_bytes() == weights


def test_fetch_fills_the_disk_cache_with_verified_files(
    store: AdapterStore, tiny_base: TinyBase
) -> None:
    version = store.push("acme", "chat", tiny_base.adapters[1], base_model=BASE)
    path = store.fetch(version)
    assert sha256_hex((path / "adapter_model.safetensors").read_bytes()) == version.digest
    assert sha256_hex((path / "adapter_config.json").read_bytes()) == version.config_digest
    assert store.fetch(version) == path


def test_identical_pushes_store_the_bytes_once(store: AdapterStore, tiny_base: TinyBase) -> None:
    store.ensure_tenant("beta")
    a = store.push("acme", "one", tiny_base.adapters[0], base_model=BASE)
    b = store.push("beta", "two", tiny_base.adapters[0], base_model=BASE)
    assert (a.digest, a.config_digest) == (b.digest, b.config_digest)
    assert sorted(store.blobs.list()) == sorted([blob_key(a.digest), blob_key(a.config_digest)])
    # Each tenant is charged the full size of its version, shared bytes or not.
    assert store.get_usage("acme").bytes == store.get_usage("beta").bytes == a.size_bytes


def test_concurrent_pushes_of_one_name_get_versions_1_to_16(
    store: AdapterStore, tiny_base: TinyBase
) -> None:
    files = [read_adapter_source(path) for path in tiny_base.adapters]

    def push(i: int) -> int:
        return store.push("acme", "hot", files[i % 3], base_model=BASE).version

    with ThreadPoolExecutor(16) as pool:
        versions = list(pool.map(push, range(16)))
    assert sorted(versions) == list(range(1, 17))
    assert store.resolve("acme", "hot").version == 16


def test_push_with_an_unregistered_base_model_says_how_to_register(
    store: AdapterStore, tiny_base: TinyBase
) -> None:
    before = snapshot(store)
    with pytest.raises(ManifestNotFoundError, match=r"loramux base register .* --id llama-70b"):
        store.push("acme", "chat", tiny_base.adapters[0], base_model="llama-70b")
    assert snapshot(store) == before


def test_push_of_an_incompatible_adapter_writes_nothing(
    store: AdapterStore, tmp_path: Path
) -> None:
    from adapter_store.exceptions import IncompatibleAdapterError
    from tests.factories import make_peft_adapter

    wider = tiny_llama(hidden_size=128, intermediate_size=256)
    adapter = make_peft_adapter(wider, tmp_path / "wide")
    before = snapshot(store)
    with pytest.raises(IncompatibleAdapterError):
        store.push("acme", "chat", adapter, base_model=BASE)
    assert snapshot(store) == before


def test_bad_names_are_rejected_before_anything_is_read(store: AdapterStore) -> None:
    files = AdapterFiles(b"{}", b"")
    for tenant, name in (("acme", "../x"), ("a/b", "x"), ("acme", "x\x00")):
        with pytest.raises(InvalidNameError):
            store.push(tenant, name, files, base_model=BASE)
    with pytest.raises(InvalidNameError, match="reserved"):
        store.push("acme", "x", files, base_model=BASE, aliases=["latest"])


def test_quota_rejection_leaves_redis_and_blobs_unchanged(
    store: AdapterStore, tiny_base: TinyBase
) -> None:
    store.set_quota("acme", max_adapters=1)
    store.push("acme", "one", tiny_base.adapters[0], base_model=BASE)
    before = snapshot(store)
    with pytest.raises(QuotaExceededError, match="holds 1 adapters, its quota is 1"):
        store.push("acme", "two", tiny_base.adapters[1], base_model=BASE)
    assert snapshot(store) == before
    size = store.get_usage("acme").bytes
    store.set_quota("acme", max_bytes=size)
    with pytest.raises(QuotaExceededError, match=f"holds {size} bytes, its quota is {size}"):
        store.push("acme", "one", tiny_base.adapters[1], base_model=BASE)


def test_push_to_an_unknown_tenant_is_refused(store: AdapterStore, tiny_base: TinyBase) -> None:
    with pytest.raises(TenantNotFoundError, match="loramux tenant create ghost"):
        store.push("ghost", "chat", tiny_base.adapters[0], base_model=BASE)


def test_versions_aliases_and_delete(store: AdapterStore, tiny_base: TinyBase) -> None:
    v1, v2, v3 = (store.push("acme", "chat", path, base_model=BASE) for path in tiny_base.adapters)
    assert store.set_alias("acme", "chat@1", "prod") == v1
    assert store.set_alias("acme", "chat:prod", "stable") == v1
    info = store.get_adapter("acme", "chat")
    assert info.versions == (1, 2, 3)
    assert dict(info.aliases) == {"latest": 3, "prod": 1, "stable": 1}
    assert info.latest == v3

    assert store.delete("acme", "chat@1") == 1
    with pytest.raises(AdapterNotFoundError, match="no alias 'prod'"):
        store.resolve("acme", "chat:prod")
    with pytest.raises(InvalidReferenceError, match="not an alias"):
        store.delete("acme", "chat:latest")
    assert store.delete("acme", "chat@3") == 1
    assert store.resolve("acme", "chat") == v2
    assert dict(store.get_adapter("acme", "chat").aliases) == {"latest": 2}
    assert store.delete("acme", "chat") == 1
    with pytest.raises(AdapterNotFoundError, match="no adapter 'chat'"):
        store.get_adapter("acme", "chat")
    assert store.get_usage("acme").bytes == 0
    assert store.push("acme", "chat", tiny_base.adapters[0], base_model=BASE).version == 4


def test_gc_removes_only_blobs_no_live_version_references(
    store: AdapterStore, tiny_base: TinyBase
) -> None:
    v1 = store.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    v2 = store.push("acme", "chat", tiny_base.adapters[1], base_model=BASE)
    store.delete("acme", "chat@1")
    # Within the grace period the deleted version's blobs were announced too recently.
    assert store.gc(grace_s=3600).blobs_deleted == 0
    report = store.gc(grace_s=0)
    assert report.blobs_deleted == 1  # v1's weights; its config equals v2's and is kept
    assert report.versions_purged == 1
    assert sorted(store.blobs.list()) == sorted([blob_key(v2.digest), blob_key(v2.config_digest)])
    assert v1.config_digest == v2.config_digest
    # The deleted content can be pushed again: its blob is uploaded afresh.
    v3 = store.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    assert v3.digest == v1.digest and store.blobs.head(blob_key(v3.digest)) == len(
        (tiny_base.adapters[0] / "adapter_model.safetensors").read_bytes()
    )


def test_list_adapters_pages(store: AdapterStore, tiny_base: TinyBase) -> None:
    files = read_adapter_source(tiny_base.adapters[0])
    for name in ("c", "a", "b", "d"):
        store.push("acme", name, files, base_model=BASE)
    first = store.list_adapters("acme", limit=3)
    assert [i.name for i in first.items] == ["a", "b", "c"]
    rest = store.list_adapters("acme", cursor=first.next_cursor, limit=3)
    assert ([i.name for i in rest.items], rest.next_cursor) == (["d"], None)
    with pytest.raises(ValueError, match="page limit"):
        store.list_adapters("acme", limit=0)


def test_record_usage_counts_requests(store: AdapterStore, tiny_base: TinyBase) -> None:
    ticks = iter(range(100, 200))
    clocked = AdapterStore(store.metadata, store.blobs, clock=lambda: float(next(ticks)))
    version = clocked.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    for _ in range(3):
        clocked.record_usage(version)
    info = clocked.get_adapter("acme", "chat")
    assert (info.request_count, info.last_used_at) == (3, 104.0)  # push read the clock twice


def test_tenants_keys_and_quotas(store: AdapterStore) -> None:
    tenant, key = store.create_tenant("beta", max_adapters=5, max_bytes=1000)
    assert (tenant.name, tenant.max_adapters, tenant.max_bytes) == ("beta", 5, 1000)
    assert store.tenant_for_key(key) == "beta"
    second = store.issue_key("beta")
    assert store.revoke_key(key) == "beta"
    with pytest.raises(AuthenticationError):
        store.tenant_for_key(key)
    assert store.tenant_for_key(second) == "beta"
    with pytest.raises(AuthenticationError):
        store.tenant_for_key("not-a-key")
    with pytest.raises(ConflictError):
        store.create_tenant("beta")
    # Only a hash of the key is stored.
    assert not any(key in k or second in k for k in store.metadata._redis.keys("*"))
    store.set_quota("beta")
    usage = store.get_usage("beta")
    assert (usage.max_adapters, usage.max_bytes, usage.adapters) == (None, None, 0)
    with pytest.raises(ValueError, match="max_bytes"):
        store.set_quota("beta", max_bytes=-1)
    assert store.list_tenants() == ["acme", "beta"]


@pytest.mark.parametrize("case", MALFORMED_CASES, ids=lambda case: case.id)
def test_each_malformed_adapter_is_rejected_and_the_store_is_unchanged(
    case: MalformedCase, store: AdapterStore, tiny_base: TinyBase, tmp_path: Path
) -> None:
    source = case.write(tiny_base.adapters[0], tmp_path / case.id)
    limited = AdapterStore(store.metadata, store.blobs, limits=case.limits)
    before = snapshot(store)
    with pytest.raises(case.error, match=re.escape(case.message)):
        limited.push("acme", "bad", source, base_model=BASE)
    assert snapshot(store) == before


def test_gc_during_a_push_spares_the_blobs_the_push_announced(
    store: AdapterStore, tiny_base: TinyBase, tmp_path: Path
) -> None:
    reports = []
    pushing = AdapterStore(
        store.metadata,
        HookedBlobs(store.blobs, lambda: reports.append(store.gc(grace_s=3600))),
    )
    version = pushing.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    assert [r.blobs_deleted for r in reports] == [0, 0]
    assert reports[0].blobs_kept == 1  # the config blob, written but not yet published
    assert store.pull("acme", "chat", tmp_path / "out") == version


def test_a_push_waits_for_gc_to_finish_deleting_a_blob_it_needs(
    store: AdapterStore, tiny_base: TinyBase, tmp_path: Path
) -> None:
    """gc claimed an unreferenced blob; a push of the same bytes must not skip the upload
    because the blob is still there, only to have gc delete it after the publish."""
    old = store.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    store.delete("acme", "chat")
    now = time.time()
    claim = store.metadata.claim_blob_for_gc(old.digest, announced_before=now + 60, now=now)
    assert claim == "claimed"

    waits: list[float] = []

    def gc_finishes(delay: float) -> None:
        waits.append(delay)
        store.blobs.delete(blob_key(old.digest))
        store.metadata.release_gc_claims([old.digest], announced_before=0.0)

    waiting = AdapterStore(store.metadata, store.blobs, sleep=gc_finishes)
    again = waiting.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    assert again.digest == old.digest
    assert len(waits) == 1  # it waited once, then found the claim released
    assert store.blobs.head(blob_key(old.digest)) == old.size_bytes - len(
        (tiny_base.adapters[0] / "adapter_config.json").read_bytes()
    )
    assert store.pull("acme", "chat", tmp_path / "out") == again


def _blobs_of(files: AdapterFiles) -> dict[str, int]:
    """Blob key -> size of an adapter's two files."""
    return {blob_key_of(data): len(data) for data in (files.config_bytes, files.weights_bytes)}


class _GcBeforePublish:
    """Metadata that runs ``gc`` just before a publish, once."""

    def __init__(self, inner: RedisMetadataStore, gc: Callable[[], None]) -> None:
        self._inner = inner
        self._gc = gc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def publish(self, *args: Any, **kwargs: Any) -> AdapterVersion:
        self._gc()
        return self._inner.publish(*args, **kwargs)


@pytest.mark.parametrize("moment", ["after-first-write", "before-publish"])
def test_a_push_whose_blob_gc_deleted_uploads_it_again_before_publishing(
    moment: str, store: AdapterStore, tiny_base: TinyBase, tmp_path: Path
) -> None:
    """gc with no grace period runs in the middle of a push and deletes its blobs; the
    push must notice (read-back or publish) and upload them again."""
    reports = []

    def gc_once() -> None:
        if not reports:
            reports.append(store.gc(grace_s=0))

    files = read_adapter_source(tiny_base.adapters[0])
    if moment == "after-first-write":
        pushing = AdapterStore(store.metadata, HookedBlobs(store.blobs, gc_once))
    else:
        hooked = cast(RedisMetadataStore, _GcBeforePublish(store.metadata, gc_once))
        pushing = AdapterStore(hooked, store.blobs)
    version = pushing.push("acme", "chat", files, base_model=BASE)
    assert reports[0].blobs_deleted == (1 if moment == "after-first-write" else 2)
    for key, size in _blobs_of(files).items():
        assert store.blobs.head(key) == size
    assert store.pull("acme", "chat", tmp_path / "out") == version
    assert store.gc(grace_s=0).blobs_deleted == 0


def test_a_push_whose_blobs_gc_keeps_deleting_publishes_nothing(
    store: AdapterStore, tiny_base: TinyBase
) -> None:
    pushing = AdapterStore(store.metadata, HookedBlobs(store.blobs, lambda: store.gc(grace_s=0)))
    with pytest.raises(BackendUnavailableError, match=r"nothing was published.*--grace-s"):
        pushing.push("acme", "chat", tiny_base.adapters[0], base_model=BASE)
    with pytest.raises(AdapterNotFoundError):
        store.get_adapter("acme", "chat")
    assert store.get_usage("acme").bytes == 0
