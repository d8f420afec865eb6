"""The replica-side disk cache against real blob stores (S3 over HTTP and file://).

Tests taking ``blob_url`` run once per backend. Downloads are counted by a wrapper that
delegates to the real store.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from adapter_store import BackendUnavailableError
from adapter_store import BlobStore
from adapter_store import DiskCache
from adapter_store import IntegrityError
from adapter_store import InvalidNameError
from adapter_store import InvalidReferenceError
from adapter_store import LocalBlobStore
from adapter_store import S3BlobStore
from adapter_store import blob_key
from adapter_store import open_blob_store
from adapter_store._blobs import Hasher
from adapter_store._redis_server import free_port
from tests.factories import blob_key_of
from tests.factories import sha256_hex


class CountingBlobStore:
    """Delegates to a real store; counts downloads, can corrupt the first few."""

    def __init__(self, inner: BlobStore, *, corrupt_first: int = 0) -> None:
        self.inner = inner
        self.downloads: list[str] = []
        self.corrupt_first = corrupt_first
        self.before_download: Callable[[], None] = lambda: None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.inner.url

    def download(
        self,
        key: str,
        dest: Path,
        on_progress: Callable[[int], None] | None = None,
        *,
        hasher: Hasher | None = None,
    ) -> int:
        with self._lock:
            self.downloads.append(key)
            corrupt = len(self.downloads) <= self.corrupt_first
        self.before_download()
        if not corrupt:
            return self.inner.download(key, dest, on_progress, hasher=hasher)
        # Same size, different bytes: only the sha256 can tell.
        size = self.inner.download(key, dest, on_progress)
        dest.write_bytes(b"\0" * size)
        if hasher is not None:
            hasher.update(dest.read_bytes())
        return size

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def head(self, key: str) -> int | None:
        return self.inner.head(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)


def push(store: BlobStore, files: dict[str, bytes]) -> dict[str, str]:
    """Store each file content-addressed; return file name -> digest."""
    for data in files.values():
        store.put_bytes(blob_key_of(data), data)
    return {name: sha256_hex(data) for name, data in files.items()}


def adapter_files(tag: str, size: int = 100) -> dict[str, bytes]:
    """Two files whose contents differ per tag, ``size`` bytes in all."""
    config = f'{{"tag": "{tag}"}}'.encode()
    return {
        "adapter_config.json": config,
        "adapter_model.safetensors": tag.encode().ljust(size - len(config), b"w"),
    }


@pytest.fixture
def counting(blob_url: str) -> CountingBlobStore:
    return CountingBlobStore(open_blob_store(blob_url))


@pytest.fixture(scope="module")
def peft_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.factories import make_peft_adapter
    from tests.factories import tiny_llama

    return make_peft_adapter(tiny_llama(), tmp_path_factory.mktemp("adapter"), seed=3)


def test_ensure_downloads_a_real_peft_adapter_then_hits(
    counting: CountingBlobStore, tmp_path: Path, peft_adapter_dir: Path
) -> None:
    from safetensors.torch import load_file

    originals = {
        name: (peft_adapter_dir / name).read_bytes()
        for name in ("adapter_config.json", "adapter_model.safetensors")
    }
    files = push(counting, originals)
    cache = DiskCache(tmp_path / "cache", counting, max_bytes=10 << 20)
    progress: list[int] = []

    path = cache.ensure("acme/support-bot@3", files, progress.append)

    for name, data in originals.items():
        assert (path / name).read_bytes() == data
    assert (
        load_file(path / "adapter_model.safetensors").keys()
        == load_file(peft_adapter_dir / "adapter_model.safetensors").keys()
    )
    total = sum(len(d) for d in originals.values())
    assert sum(progress) == total
    assert cache.used_bytes == total
    assert cache.contains("acme/support-bot@3") and cache.keys() == ["acme/support-bot@3"]
    assert len(counting.downloads) == 2

    assert cache.ensure("acme/support-bot@3", files) == path
    assert len(counting.downloads) == 2
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.bytes_downloaded) == (1, 1, total)


def ensure_together(
    cache: DiskCache, counting: CountingBlobStore, key: str, files: dict[str, str], threads: int
) -> list[Future[Path]]:
    """``threads`` concurrent ensures of ``key``; the leader's first download is held
    until every other call waits on it, so the test exercises coalescing rather than
    cache hits after the fact."""

    def wait_for_followers() -> None:
        deadline = time.monotonic() + 10
        while cache.stats.coalesced < threads - 1 and time.monotonic() < deadline:
            time.sleep(0.005)

    counting.before_download = wait_for_followers
    barrier = threading.Barrier(threads)

    def ensure() -> Path:
        barrier.wait()
        return cache.ensure(key, files)

    with ThreadPoolExecutor(threads) as pool:
        return [pool.submit(ensure) for _ in range(threads)]


def test_concurrent_ensures_of_one_key_make_one_download(
    counting: CountingBlobStore, tmp_path: Path
) -> None:
    files = push(counting, adapter_files("hot"))
    cache = DiskCache(tmp_path / "cache", counting, max_bytes=1 << 20)

    paths = [f.result() for f in ensure_together(cache, counting, "acme/hot@1", files, 8)]

    assert len(set(paths)) == 1
    assert sorted(counting.downloads) == sorted(blob_key(d) for d in files.values())
    stats = cache.stats
    assert (stats.misses, stats.coalesced, stats.hits) == (1, 7, 0)


def test_followers_get_the_leaders_error(counting: CountingBlobStore, tmp_path: Path) -> None:
    counting.corrupt_first = 100
    files = push(counting, adapter_files("bad"))
    # How many downloads one failing ensure makes on its own.
    with pytest.raises(IntegrityError):
        DiskCache(tmp_path / "alone", counting, max_bytes=1 << 20).ensure("acme/bad@1", files)
    one_leader = len(counting.downloads)
    counting.downloads.clear()
    cache = DiskCache(tmp_path / "cache", counting, max_bytes=1 << 20)

    futures = ensure_together(cache, counting, "acme/bad@1", files, 4)

    for future in futures:
        assert isinstance(future.exception(), IntegrityError)
    assert cache.stats.coalesced == 3
    assert len(counting.downloads) == one_leader


def test_lru_budget_evicts_least_recently_ensured(
    counting: CountingBlobStore, tmp_path: Path
) -> None:
    cache = DiskCache(tmp_path / "cache", counting, max_bytes=250)
    files = {tag: push(counting, adapter_files(tag)) for tag in "abc"}
    path_b = cache.ensure("t/b@1", files["b"])
    cache.ensure("t/a@1", files["a"])
    cache.ensure("t/b@1", files["b"])  # b is now more recent than a
    assert cache.keys() == ["t/a@1", "t/b@1"]

    cache.ensure("t/c@1", files["c"])

    assert cache.keys() == ["t/b@1", "t/c@1"]
    assert cache.used_bytes == 200
    assert cache.stats.evictions == 1
    assert not cache.contains("t/a@1")
    assert not (tmp_path / "cache" / "entries" / "t" / "a@1").exists()
    for name, data in adapter_files("b").items():
        assert (path_b / name).read_bytes() == data


def test_entry_larger_than_budget_is_returned_then_evicted_first(
    counting: CountingBlobStore, tmp_path: Path
) -> None:
    cache = DiskCache(tmp_path / "cache", counting, max_bytes=150)
    big = push(counting, adapter_files("big", size=400))
    small = push(counting, adapter_files("small"))

    path = cache.ensure("t/big@1", big)
    assert (path / "adapter_model.safetensors").stat().st_size > 150
    assert cache.keys() == ["t/big@1"] and cache.used_bytes == 400

    cache.ensure("t/small@1", small)
    assert cache.keys() == ["t/small@1"]
    assert not path.exists()


def test_explicit_evict(counting: CountingBlobStore, tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", counting, max_bytes=1 << 20)
    path = cache.ensure("t/a@1", push(counting, adapter_files("a")))
    assert cache.evict("t/a@1") is True
    assert cache.evict("t/a@1") is False
    assert not path.exists() and cache.used_bytes == 0 and cache.keys() == []


def test_restart_rebuilds_lru_order_and_removes_leftovers(
    counting: CountingBlobStore, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    first = DiskCache(root, counting, max_bytes=1 << 20)
    files = {tag: push(counting, adapter_files(tag)) for tag in "abc"}
    for tag in "abca":
        first.ensure(f"t/{tag}@1", files[tag])
    assert first.keys() == ["t/b@1", "t/c@1", "t/a@1"]
    # What a crash leaves: a half-made download, trash, an entry without a manifest.
    (root / "tmp" / "abc-0123").mkdir()
    (root / "tmp" / "abc-0123" / "adapter_model.safetensors").write_bytes(b"partial")
    (root / "tmp" / "evicted-0123").mkdir()
    (root / "entries" / "t" / "broken@1").mkdir()
    downloads = len(counting.downloads)

    second = DiskCache(root, counting, max_bytes=1 << 20)

    assert second.keys() == ["t/b@1", "t/c@1", "t/a@1"]
    assert second.used_bytes == 300
    assert list((root / "tmp").iterdir()) == []
    assert not (root / "entries" / "t" / "broken@1").exists()
    second.ensure("t/b@1", files["b"])
    assert len(counting.downloads) == downloads
    assert second.keys() == ["t/c@1", "t/a@1", "t/b@1"]
    assert (second.stats.hits, second.stats.rehashed) == (1, 1)
    second.ensure("t/b@1", files["b"])  # verified now: a cheap hit
    assert (second.stats.hits, second.stats.rehashed) == (2, 1)


def test_after_restart_a_file_corrupted_in_place_is_caught_and_fetched_again(
    counting: CountingBlobStore, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    originals = adapter_files("r")
    files = push(counting, originals)
    path = DiskCache(root, counting, max_bytes=1 << 20).ensure("acme/r@1", files)
    # What a machine crash can leave: the right size, the wrong bytes.
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)

    restarted = DiskCache(root, counting, max_bytes=1 << 20)
    assert restarted.ensure("acme/r@1", files) == path

    assert weights.read_bytes() == originals["adapter_model.safetensors"]
    assert len(counting.downloads) == 4
    assert (restarted.stats.misses, restarted.stats.rehashed) == (1, 0)


def test_restart_applies_a_smaller_budget(counting: CountingBlobStore, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first = DiskCache(root, counting, max_bytes=1 << 20)
    for tag in "abc":
        first.ensure(f"t/{tag}@1", push(counting, adapter_files(tag)))
    second = DiskCache(root, counting, max_bytes=200)
    assert second.keys() == ["t/b@1", "t/c@1"]
    assert not (root / "entries" / "t" / "a@1").exists()


def test_corrupted_blob_is_fetched_once_more_then_integrity_error(
    blob_url: str, tmp_path: Path
) -> None:
    store = CountingBlobStore(open_blob_store(blob_url))
    files = push(store, adapter_files("x"))
    digest = files["adapter_model.safetensors"]
    # Overwrite the stored object with other bytes under the same content address.
    _overwrite(store.inner, blob_key(digest), b"rotten bytes")
    cache = DiskCache(tmp_path / "cache", store, max_bytes=1 << 20)

    with pytest.raises(IntegrityError) as info:
        cache.ensure("acme/x@2", files)

    message = str(info.value)
    assert "acme/x@2" in message and digest in message and "push the adapter again" in message
    assert store.downloads.count(blob_key(digest)) == 2
    assert cache.stats.corrupt_downloads == 2
    assert cache.keys() == [] and not (tmp_path / "cache" / "entries" / "acme" / "x@2").exists()
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def _overwrite(store: BlobStore, key: str, data: bytes) -> None:
    """Replace an object's bytes behind the store's back."""
    if isinstance(store, S3BlobStore):
        store._client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}", Body=data)
    else:
        assert isinstance(store, LocalBlobStore)
        (store.root / key).write_bytes(data)


def test_transient_corruption_is_healed_by_the_second_download(
    counting: CountingBlobStore, tmp_path: Path
) -> None:
    counting.corrupt_first = 1
    originals = adapter_files("y")
    files = push(counting, originals)
    cache = DiskCache(tmp_path / "cache", counting, max_bytes=1 << 20)

    path = cache.ensure("acme/y@1", files)

    for name, data in originals.items():
        assert (path / name).read_bytes() == data
    assert len(counting.downloads) == 3
    assert cache.stats.corrupt_downloads == 1


def test_blob_missing_from_the_store_is_an_integrity_error(
    counting: CountingBlobStore, tmp_path: Path
) -> None:
    files = push(counting, adapter_files("z"))
    counting.delete(blob_key(files["adapter_config.json"]))
    cache = DiskCache(tmp_path / "cache", counting, max_bytes=1 << 20)
    with pytest.raises(IntegrityError, match="missing from the blob store"):
        cache.ensure("acme/z@1", files)


def test_hit_on_a_truncated_file_downloads_again(
    counting: CountingBlobStore, tmp_path: Path
) -> None:
    originals = adapter_files("t")
    files = push(counting, originals)
    cache = DiskCache(tmp_path / "cache", counting, max_bytes=1 << 20)
    path = cache.ensure("acme/t@1", files)
    (path / "adapter_model.safetensors").write_bytes(b"cut")

    assert cache.ensure("acme/t@1", files) == path
    assert (path / "adapter_model.safetensors").read_bytes() == originals[
        "adapter_model.safetensors"
    ]
    assert len(counting.downloads) == 4
    assert cache.used_bytes == 100


def test_second_cache_on_the_same_root_adopts_entries_without_downloading(
    counting: CountingBlobStore, tmp_path: Path
) -> None:
    files = push(counting, adapter_files("shared"))
    replica_1 = DiskCache(tmp_path / "cache", counting, max_bytes=1 << 20)
    replica_2 = DiskCache(tmp_path / "cache", counting, max_bytes=1 << 20)
    path = replica_1.ensure("acme/shared@1", files)
    assert replica_2.ensure("acme/shared@1", files) == path
    assert len(counting.downloads) == 2
    assert replica_2.stats.hits == 1 and replica_2.keys() == ["acme/shared@1"]


def _ensure_in_child(
    cache_root: str, blob_root: str, files: dict[str, str], barrier: Any
) -> tuple[str, int]:
    """Run in a separate process: one replica's ensure; returns (path, downloads)."""
    cache = DiskCache(Path(cache_root), LocalBlobStore(Path(blob_root)), max_bytes=1 << 30)
    barrier.wait()
    path = cache.ensure("acme/shared@1", files)
    return str(path), cache.stats.misses


@pytest.mark.slow
def test_replica_processes_sharing_a_root_download_once(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    data = os.urandom(4 << 20)
    files = push(blobs, {"adapter_model.safetensors": data})
    context = multiprocessing.get_context("spawn")
    processes = 3
    with context.Manager() as manager, context.Pool(processes) as pool:
        barrier = manager.Barrier(processes)
        args = (str(tmp_path / "cache"), str(blobs.root), files, barrier)
        results = pool.starmap(_ensure_in_child, [args] * processes)

    assert len({path for path, _ in results}) == 1
    assert sum(downloads for _, downloads in results) == 1
    assert (Path(results[0][0]) / "adapter_model.safetensors").read_bytes() == data


def test_unreachable_s3_raises_backend_unavailable(tmp_path: Path) -> None:
    store = S3BlobStore(
        "bucket", endpoint_url=f"http://127.0.0.1:{free_port()}", sleep=lambda _: None
    )
    cache = DiskCache(tmp_path / "cache", store, max_bytes=1 << 20)
    with pytest.raises(BackendUnavailableError, match="4 attempts"):
        cache.ensure("acme/a@1", {"adapter_config.json": "0" * 64})
    assert cache.keys() == []


@pytest.mark.parametrize(
    ("key", "files", "error"),
    [
        ("../etc@1", {"a": "0" * 64}, InvalidNameError),
        ("acme/bot", {"a": "0" * 64}, InvalidReferenceError),
        ("acme/bot@1", {"../a": "0" * 64}, ValueError),
        ("acme/bot@1", {".hidden": "0" * 64}, ValueError),
        ("acme/bot@1", {"a": "XYZ"}, ValueError),
        ("acme/bot@1", {}, ValueError),
    ],
)
def test_bad_requests_are_rejected_before_any_download(
    tmp_path: Path, key: str, files: dict[str, str], error: type[Exception]
) -> None:
    store = CountingBlobStore(LocalBlobStore(tmp_path / "blobs"))
    cache = DiskCache(tmp_path / "cache", store, max_bytes=1 << 20)
    with pytest.raises(error):
        cache.ensure(key, files)
    assert store.downloads == []


def test_progress_reports_only_bytes_received(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    data = os.urandom(5 << 20)
    files = push(store, {"adapter_model.safetensors": data})
    cache = DiskCache(tmp_path / "cache", store, max_bytes=10 << 20)
    progress: list[int] = []
    cache.ensure("acme/big@1", files, progress.append)
    assert sum(progress) == len(data) and len(progress) > 1
