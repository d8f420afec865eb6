"""Content addresses and blob store URLs: parsing and validation, no I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter_store import LocalBlobStore
from adapter_store import S3BlobStore
from adapter_store import blob_key
from adapter_store import open_blob_store

DIGEST = "ab" + "0123456789abcdef" * 3 + "0123456789abcd"


def test_blob_key_is_sharded_by_first_two_hex_digits() -> None:
    assert len(DIGEST) == 64
    assert blob_key(DIGEST) == f"blobs/sha256/ab/{DIGEST}"


@pytest.mark.parametrize("bad", ["", "ab", DIGEST.upper(), DIGEST[:-1] + "g", DIGEST + "0", None])
def test_blob_key_rejects_anything_but_64_lowercase_hex(bad: object) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        blob_key(bad)  # type: ignore[arg-type]


def test_s3_url_round_trips_bucket_prefix_endpoint_and_region() -> None:
    url = "s3://my-bucket/a/b?endpoint_url=http://127.0.0.1:9000&region=eu-west-1"
    store = open_blob_store(url)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == ("my-bucket", "a/b")
    assert (store.endpoint_url, store.region) == ("http://127.0.0.1:9000", "eu-west-1")
    assert store.url == url
    assert open_blob_store(store.url).url == url


def test_file_url_opens_a_local_store(tmp_path: Path) -> None:
    store = open_blob_store(f"file://{tmp_path}/blobs")
    assert isinstance(store, LocalBlobStore)
    assert store.root == tmp_path / "blobs"
    assert store.url == f"file://{tmp_path}/blobs"


def test_unknown_scheme_error_lists_the_known_schemes() -> None:
    with pytest.raises(ValueError, match=r"unknown blob store scheme 'gs'.*file://, s3://"):
        open_blob_store("gs://bucket/prefix")


def test_unknown_s3_parameter_is_named() -> None:
    with pytest.raises(ValueError, match=r"\['endpoint'\].*known are endpoint_url, region"):
        open_blob_store("s3://bucket?endpoint=http://x")


def test_file_url_needs_an_absolute_path() -> None:
    with pytest.raises(ValueError, match="absolute path"):
        open_blob_store("file://relative/path")


def test_s3_url_needs_a_bucket() -> None:
    with pytest.raises(ValueError, match="bucket name is empty"):
        open_blob_store("s3:///prefix")


def test_a_digest_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError):
        blob_key("a" * 64 + "\n")
