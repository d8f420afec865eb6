"""Local and remote faults during a cold load, on real blob stores (S3 over HTTP and
file://) and real kernel errors: the disk cache evicts before it writes, keeps its budget
under concurrent inserts, turns a failed write into LocalDiskError without leaving a
partial file, and an S3 endpoint that answers 5xx or hangs fails in bounded time.
"""

from __future__ import annotations

import errno
import http.server
import os
import resource
import signal
import socket
import socketserver
import threading
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from adapter_store import BackendUnavailableError
from adapter_store import DiskCache
from adapter_store import LocalDiskError
from adapter_store import S3BlobStore
from adapter_store import open_blob_store
from adapter_store._disk_cache import MANIFEST_NAME
from tests.integration.adapter_store.test_disk_cache import CountingBlobStore
from tests.integration.adapter_store.test_disk_cache import adapter_files
from tests.integration.adapter_store.test_disk_cache import push
from tests.unit.adapter_store.test_validate import within_bound


def bytes_on_disk(root: Path) -> int:
    """Every adapter file under the cache root, resident, staged or being deleted.

    Walked while other threads rename and delete: files are keyed by inode, so one
    renamed during the walk counts once, and ones deleted during it are skipped.
    """
    sizes: dict[tuple[int, int], int] = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if name == MANIFEST_NAME or Path(directory).name == "locks":
                continue
            try:
                st = os.stat(Path(directory) / name)
            except FileNotFoundError:
                continue
            sizes[st.st_dev, st.st_ino] = st.st_size
    return sum(sizes.values())


def leftovers(root: Path) -> list[Path]:
    """Files of downloads in progress or failed (staging and trash)."""
    return [p for p in (root / "tmp").rglob("*") if p.is_file()]


@pytest.fixture
def counting(blob_url: str) -> CountingBlobStore:
    return CountingBlobStore(open_blob_store(blob_url))


def test_eviction_happens_before_the_download_writes(
    counting: CountingBlobStore, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    cache = DiskCache(root, counting, max_bytes=250)
    files = {tag: push(counting, adapter_files(tag)) for tag in "abc"}
    cache.ensure("t/a@1", files["a"])
    cache.ensure("t/b@1", files["b"])
    seen_at_download: list[tuple[bool, int]] = []
    counting.before_download = lambda: seen_at_download.append(
        ((root / "entries" / "t" / "a@1").exists(), bytes_on_disk(root))
    )

    cache.ensure("t/c@1", files["c"], size_bytes=100)

    # When c's first byte is written, a is already gone and the disk holds only b.
    assert seen_at_download[0] == (False, 100)
    assert cache.keys() == ["t/b@1", "t/c@1"] and cache.used_bytes == 200


def test_without_a_size_the_cache_asks_the_blob_store_before_writing(
    counting: CountingBlobStore, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    cache = DiskCache(root, counting, max_bytes=150)
    first, second = push(counting, adapter_files("x")), push(counting, adapter_files("y"))
    cache.ensure("t/x@1", first)
    resident_at_download: list[bool] = []
    counting.before_download = lambda: resident_at_download.append(
        (root / "entries" / "t" / "x@1").exists()
    )

    cache.ensure("t/y@1", second)

    assert resident_at_download == [False, False]
    assert cache.keys() == ["t/y@1"]


def test_concurrent_inserts_never_take_the_disk_over_the_budget(
    counting: CountingBlobStore, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    budget, entries = 250, 12
    cache = DiskCache(root, counting, max_bytes=budget)
    files = {f"t/k{i}@1": push(counting, adapter_files(f"k{i}")) for i in range(entries)}
    observed: list[int] = []
    lock = threading.Lock()

    def measure() -> None:
        with lock:
            observed.append(bytes_on_disk(root))

    counting.before_download = measure
    original_download = counting.download

    def download_and_measure(*args, **kwargs) -> int:
        size = original_download(*args, **kwargs)
        measure()
        return size

    counting.download = download_and_measure  # type: ignore[method-assign]

    with ThreadPoolExecutor(6) as pool:
        paths = list(pool.map(lambda key: cache.ensure(key, files[key]), files))

    assert len(paths) == entries
    assert len(observed) == 4 * entries  # two files, measured before and after each
    assert max(observed) <= budget, observed
    assert cache.used_bytes <= budget and bytes_on_disk(root) <= budget


class FullDisk(CountingBlobStore):
    """Writes part of the object, then fails as a full disk does."""

    def download(self, key, dest, on_progress=None, *, hasher=None) -> int:
        dest.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))


def test_a_full_disk_is_a_typed_error_and_leaves_no_partial_file(
    blob_url: str, tmp_path: Path
) -> None:
    healthy = CountingBlobStore(open_blob_store(blob_url))
    root = tmp_path / "cache"
    resident = push(healthy, adapter_files("old"))
    DiskCache(root, healthy, max_bytes=1 << 20).ensure("t/old@1", resident)
    cache = DiskCache(root, FullDisk(healthy.inner), max_bytes=1 << 20)
    cache.ensure("t/old@1", resident)  # adopted after the restart
    before = (cache.keys(), cache.used_bytes)

    with pytest.raises(LocalDiskError) as excinfo:
        cache.ensure("t/new@1", push(healthy, adapter_files("new")))

    message = str(excinfo.value)
    assert f"disk cache {root.absolute()}: writing adapter t/new@1 failed" in message
    assert "No space left on device (errno 28); nothing was kept" in message
    assert "cache_max_bytes, now 1048576" in message
    assert leftovers(root) == [] and not (root / "entries" / "t" / "new@1").exists()
    assert (cache.keys(), cache.used_bytes) == before
    assert isinstance(excinfo.value, BackendUnavailableError)  # a 503: try elsewhere


@pytest.fixture
def file_size_limit() -> Iterator[Callable[[int], None]]:
    """Set the kernel's per-file size limit (RLIMIT_FSIZE) for this test; writes past it
    fail with EFBIG, a real filesystem error, without needing root or a mount."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_real_write_failure_from_the_kernel_is_a_typed_error(
    counting: CountingBlobStore, tmp_path: Path, file_size_limit
) -> None:
    root = tmp_path / "cache"
    cache = DiskCache(root, counting, max_bytes=1 << 30)
    files = push(counting, adapter_files("big", size=256 << 10))

    file_size_limit(64 << 10)
    with pytest.raises(LocalDiskError, match=r"File too large \(errno 27\)"):
        cache.ensure("t/big@1", files)
    file_size_limit(resource.RLIM_INFINITY)

    assert leftovers(root) == [] and cache.keys() == [] and cache.used_bytes == 0
    assert (cache.ensure("t/big@1", files) / "adapter_model.safetensors").stat().st_size > 0


# ---- S3 answering 5xx or hanging during a cold load ------------------------------------


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class _Answers500(http.server.BaseHTTPRequestHandler):
    """Says every object exists (HEAD), then fails every read of it (GET) with a 500."""

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "64")
        self.end_headers()

    def do_GET(self) -> None:
        body = b"<Error><Code>InternalError</Code><Message>boom</Message></Error>"
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_s3() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Answers500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def hanging_s3() -> Iterator[str]:
    """Accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


FILES = {"adapter_config.json": "0" * 64, "adapter_model.safetensors": "1" * 64}


def test_s3_answering_5xx_during_a_cold_load_fails_after_bounded_retries(
    failing_s3: str, tmp_path: Path
) -> None:
    store = S3BlobStore("bucket", endpoint_url=failing_s3, attempts=3, sleep=lambda _: None)
    cache = DiskCache(tmp_path / "cache", store, max_bytes=1 << 20)

    with pytest.raises(BackendUnavailableError) as excinfo:
        within_bound(lambda: cache.ensure("acme/a@1", FILES, size_bytes=128), bound_s=10)

    assert "GET 'blobs/sha256/00/" in str(excinfo.value)
    assert "failed after 3 attempts" in str(excinfo.value)
    assert "HTTP 500 InternalError: boom" in str(excinfo.value)
    assert leftovers(tmp_path / "cache") == [] and cache.keys() == []


def test_s3_hanging_during_a_cold_load_fails_after_its_timeouts(
    hanging_s3: str, tmp_path: Path
) -> None:
    store = S3BlobStore(
        "bucket",
        endpoint_url=hanging_s3,
        attempts=2,
        connect_timeout_s=0.5,
        read_timeout_s=0.5,
        sleep=lambda _: None,
    )
    cache = DiskCache(tmp_path / "cache", store, max_bytes=1 << 20)

    with pytest.raises(BackendUnavailableError) as excinfo:
        within_bound(lambda: cache.ensure("acme/a@1", FILES, size_bytes=128), bound_s=10)

    assert "failed after 2 attempts" in str(excinfo.value)
    assert "timeout" in str(excinfo.value).lower()
    assert leftovers(tmp_path / "cache") == [] and cache.keys() == []
