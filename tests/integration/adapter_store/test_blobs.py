"""Blob stores against real backends: S3 over HTTP (moto server) and file://.

Tests taking ``blob_url`` run once per backend.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from adapter_store import BackendUnavailableError
from adapter_store import BlobStore
from adapter_store import LocalBlobStore
from adapter_store import NotFoundError
from adapter_store import S3BlobStore
from adapter_store import open_blob_store
from adapter_store._redis_server import free_port
from tests.factories import blob_key_of
from tests.factories import sha256_hex


def test_put_head_get_delete_round_trip(blob_url: str) -> None:
    store = open_blob_store(blob_url)
    assert isinstance(store, BlobStore)
    data = os.urandom(1000)
    key = blob_key_of(data)
    assert store.head(key) is None
    store.put_bytes(key, data)
    assert store.head(key) == 1000
    assert store.get_bytes(key) == data
    store.delete(key)
    assert store.head(key) is None
    store.delete(key)  # deleting a missing object is not an error


def test_missing_object_raises_not_found_naming_the_key(blob_url: str, tmp_path: Path) -> None:
    store = open_blob_store(blob_url)
    key = blob_key_of(b"never stored")
    with pytest.raises(NotFoundError, match=key):
        store.get_bytes(key)
    with pytest.raises(NotFoundError, match=key):
        store.download(key, tmp_path / "out")


def test_identical_push_is_stored_once(blob_url: str) -> None:
    store = open_blob_store(blob_url)
    data = b"adapter weights"
    key = blob_key_of(data)
    store.put_bytes(key, data)
    # A second put of a content-addressed key already present with the same size is
    # skipped; different bytes of the same size make that observable.
    store.put_bytes(key, b"X" * len(data))
    assert store.get_bytes(key) == data
    assert list(store.list()) == [key]


def test_plain_keys_are_overwritten(blob_url: str) -> None:
    store = open_blob_store(blob_url)
    store.put_bytes("manifests/m.json", b"one")
    store.put_bytes("manifests/m.json", b"two")
    assert store.get_bytes("manifests/m.json") == b"two"


def test_list_filters_by_prefix_in_sorted_order(blob_url: str) -> None:
    store = open_blob_store(blob_url)
    for key in ["b/2", "a/1", "b/1", "c"]:
        store.put_bytes(key, key.encode())
    assert list(store.list()) == ["a/1", "b/1", "b/2", "c"]
    assert list(store.list("b/")) == ["b/1", "b/2"]
    assert list(store.list("zzz")) == []


def test_download_writes_the_object_and_reports_progress(blob_url: str, tmp_path: Path) -> None:
    store = open_blob_store(blob_url)
    data = os.urandom(3 * (1 << 20) + 17)
    key = blob_key_of(data)
    store.put_bytes(key, data)
    received: list[int] = []
    assert store.download(key, tmp_path / "out", received.append) == len(data)
    assert (tmp_path / "out").read_bytes() == data
    assert sum(received) == len(data)


def test_download_feeds_the_hasher_the_bytes_in_order(blob_url: str, tmp_path: Path) -> None:
    store = open_blob_store(blob_url)
    data = os.urandom(9 * (1 << 20) + 3)
    key = blob_key_of(data)
    store.put_bytes(key, data)
    hasher = hashlib.sha256()
    store.download(key, tmp_path / "out", hasher=hasher)
    assert hasher.hexdigest() == key.rsplit("/", 1)[1]


def test_url_reopens_the_same_store(blob_url: str) -> None:
    store = open_blob_store(blob_url)
    store.put_bytes("k", b"v")
    assert open_blob_store(store.url).get_bytes("k") == b"v"


@pytest.mark.parametrize("bad", ["", "/abs", "../up", "a/../../up", "a//b", "a/.tmp-x", "a\\b"])
def test_keys_that_could_escape_or_collide_are_rejected(blob_url: str, bad: str) -> None:
    store = open_blob_store(blob_url)
    with pytest.raises(ValueError, match="invalid blob key"):
        store.put_bytes(bad, b"x")
    with pytest.raises(ValueError, match="invalid blob key"):
        store.head(bad)


def test_local_writes_leave_no_temp_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    for i in range(3):
        store.put_bytes(f"k/{i}", b"x" * i)
    on_disk = sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*"))
    assert on_disk == ["k", "k/0", "k/1", "k/2"]


class _CountingClient:
    """Delegates to a boto3 client, recording the Range of every GetObject.

    With ``hold_first_part_until`` set, the GET of the first part waits until that many
    other GETs have returned, so parts complete out of order.
    """

    def __init__(self, client: Any, hold_first_part_until: int = 0) -> None:
        self._client = client
        self.ranges: list[str | None] = []
        self._others_done = threading.Semaphore(0)
        self._hold = hold_first_part_until

    def get_object(self, **kwargs: Any) -> Any:
        self.ranges.append(kwargs.get("Range"))
        if self._hold and kwargs.get("Range", "").startswith("bytes=0-"):
            for _ in range(self._hold):
                assert self._others_done.acquire(timeout=30)
            return self._client.get_object(**kwargs)
        response = self._client.get_object(**kwargs)
        self._others_done.release()
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_s3_large_object_downloads_as_ranged_parts(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    import boto3

    client = _CountingClient(boto3.client("s3", endpoint_url=s3_endpoint))
    part = 64 * 1024
    store = S3BlobStore(s3_bucket, "p", client=client, part_size=part, max_concurrency=4)
    data = os.urandom(10 * part + 5)
    key = blob_key_of(data)
    store.put_bytes(key, data)
    received: list[int] = []
    assert store.download(key, tmp_path / "out", received.append) == len(data)
    assert (tmp_path / "out").read_bytes() == data
    assert sorted(received) == sorted([part] * 10 + [5])
    expected = [f"bytes={i * part}-{min((i + 1) * part, len(data)) - 1}" for i in range(11)]
    assert sorted(client.ranges, key=lambda r: int(r.split("=")[1].split("-")[0])) == expected


def test_s3_parts_arriving_out_of_order_are_hashed_in_order(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    import boto3

    # Part 0 arrives last: parts 1-4 wait in memory (the budget is 4 parts), 5-10 are
    # read back from the file when their turn comes.
    client = _CountingClient(boto3.client("s3", endpoint_url=s3_endpoint), 10)
    part = 64 * 1024
    store = S3BlobStore(s3_bucket, client=client, part_size=part, max_concurrency=4)
    data = os.urandom(10 * part + 5)
    key = blob_key_of(data)
    store.put_bytes(key, data)
    hasher = hashlib.sha256()
    store.download(key, tmp_path / "out", hasher=hasher)
    assert hasher.hexdigest() == sha256_hex(data)
    assert (tmp_path / "out").read_bytes() == data


def test_s3_unreachable_endpoint_raises_backend_unavailable_after_bounded_retries(
    tmp_path: Path,
) -> None:
    sleeps: list[float] = []
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = S3BlobStore("bucket", endpoint_url=endpoint, attempts=3, sleep=sleeps.append)
    with pytest.raises(BackendUnavailableError) as info:
        store.get_bytes("k")
    message = str(info.value)
    assert endpoint in message and "GET 'k'" in message and "3 attempts" in message
    assert len(sleeps) == 2
    with pytest.raises(BackendUnavailableError):
        store.head("k")
    with pytest.raises(BackendUnavailableError):
        store.download("k", tmp_path / "out")


class _FlakyClient:
    """Delegates to a boto3 client; the first GetObject calls get an error answer."""

    def __init__(self, client: Any, code: str, status: int, failures: int) -> None:
        self._client = client
        self._error = {"Error": {"Code": code, "Message": "injected"}}
        self._error["ResponseMetadata"] = {"HTTPStatusCode": status}
        self.failures = failures

    def get_object(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError

        if self.failures:
            self.failures -= 1
            raise ClientError(self._error, "GetObject")  # type: ignore[arg-type]
        return self._client.get_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_s3_throttling_and_5xx_answers_are_retried(s3_endpoint: str, s3_bucket: str) -> None:
    import boto3

    sleeps: list[float] = []
    client = _FlakyClient(boto3.client("s3", endpoint_url=s3_endpoint), "SlowDown", 503, 2)
    store = S3BlobStore(s3_bucket, client=client, sleep=sleeps.append)
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    assert len(sleeps) == 2


def test_s3_access_denied_is_reported_at_once(s3_endpoint: str, s3_bucket: str) -> None:
    import boto3

    sleeps: list[float] = []
    client = _FlakyClient(boto3.client("s3", endpoint_url=s3_endpoint), "AccessDenied", 403, 1)
    store = S3BlobStore(s3_bucket, client=client, sleep=sleeps.append)
    with pytest.raises(BackendUnavailableError, match=r"HTTP 403 AccessDenied.*credentials"):
        store.get_bytes("k")
    assert sleeps == []


def test_s3_missing_bucket_is_reported_not_retried(s3_endpoint: str) -> None:
    sleeps: list[float] = []
    store = S3BlobStore("no-such-bucket-here", endpoint_url=s3_endpoint, sleep=sleeps.append)
    with pytest.raises(BackendUnavailableError, match=r"NoSuchBucket.*bucket exists"):
        store.get_bytes("k")
    assert sleeps == []
