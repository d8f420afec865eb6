"""Blob storage: immutable objects by key, in S3 (any endpoint) or a local directory.

Adapter files are stored content-addressed: the key of a file is derived from its
sha256 (:func:`blob_key`), so identical pushes store the bytes once and a stored object
never changes. Two backends implement :class:`BlobStore`:

* :class:`S3BlobStore`: boto3 with an optional ``endpoint_url``, the same code for AWS S3,
  MinIO, Ceph or moto. boto3's own retries are turned off so that our bounded retries
  (:func:`adapter_store._retry.call_with_retries`) govern: a store that does not answer
  raises :class:`BackendUnavailableError` after a few tries, not after minutes.
  Large objects download as parallel ranged GETs.
* :class:`LocalBlobStore`: files under a root directory, the embedded default. Writes are
  atomic (temp file, fsync, rename), so a reader never sees half an object.

:func:`open_blob_store` picks the backend from a URL scheme.

Failure modes, for every backend: asking for an object that does not exist
(``get_bytes``, ``download``) raises :class:`NotFoundError`; a backend that does not
answer raises :class:`BackendUnavailableError`; a malformed key raises ``ValueError``.
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import as_completed
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import BinaryIO
from typing import Protocol
from typing import runtime_checkable
from urllib.parse import parse_qs
from urllib.parse import quote
from urllib.parse import urlsplit

from adapter_store._retry import call_with_retries
from adapter_store._source import Payload
from adapter_store.exceptions import BackendUnavailableError
from adapter_store.exceptions import NotFoundError

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

__all__ = [
    "BlobStore",
    "LocalBlobStore",
    "S3BlobStore",
    "blob_key",
    "open_blob_store",
]

BLOB_PREFIX = "blobs/sha256/"
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
# A key is '/'-separated segments of safe characters; a segment may not start with '.'
# (no '..', no hidden names, which LocalBlobStore uses for its temp files).
_KEY_SEGMENT_RE = re.compile(r"[A-Za-z0-9_@=+-][A-Za-z0-9._@=+-]*")
_TEMP_PREFIX = ".tmp-"
_MiB = 1 << 20
_CHUNK = _MiB  # bytes per read from an HTTP body or a file

ProgressCallback = Callable[[int], None]


class Hasher(Protocol):
    """What ``download`` feeds the downloaded bytes to: ``hashlib.sha256()`` fits."""

    def update(self, data: bytes, /) -> None: ...


def blob_key(digest: str) -> str:
    """The content address of a blob: ``blobs/sha256/<first 2 hex>/<digest>``.

    Raises:
        ValueError: ``digest`` is not 64 lowercase hex characters.
    """
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"invalid sha256 digest {digest!r}: expected 64 lowercase hex characters")
    return f"{BLOB_PREFIX}{digest[:2]}/{digest}"


def _check_key(key: str) -> str:
    """Return ``key`` if every segment is safe, else raise ``ValueError``."""
    if (
        not isinstance(key, str)
        or not key
        or not all(_KEY_SEGMENT_RE.fullmatch(part) for part in key.split("/"))
    ):
        raise ValueError(
            f"invalid blob key {key!r}: use '/'-separated segments of A-Z a-z 0-9 . _ @ = + -, "
            "none empty or starting with '.'"
        )
    return key


@runtime_checkable
class BlobStore(Protocol):
    """Immutable objects by key. Implementations are thread-safe.

    ``on_progress`` callbacks receive the number of bytes just received (increments, as
    boto3's ``Callback``), always on the calling thread.
    """

    @property
    def url(self) -> str:
        """A URL that :func:`open_blob_store` turns back into an equivalent store."""
        ...

    def put_bytes(self, key: str, data: Payload) -> None:
        """Store ``data`` under ``key``. Idempotent; a content-addressed key already
        present with the same size is not written again."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The whole object. Raises NotFoundError if it does not exist."""
        ...

    def download(
        self,
        key: str,
        dest: Path,
        on_progress: ProgressCallback | None = None,
        *,
        hasher: Hasher | None = None,
    ) -> int:
        """Write the object to ``dest`` (created or truncated; not atomic: the caller
        writes to a temp path and renames) and return its size. ``hasher`` (e.g.
        ``hashlib.sha256()``) is fed the bytes written, in order, so the caller can verify
        them without reading the file again. Raises NotFoundError if it does not exist."""
        ...

    def head(self, key: str) -> int | None:
        """The object's size in bytes, or None if it does not exist."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix`` (a plain string prefix), in sorted order."""
        ...


class LocalBlobStore:
    """Blobs as files under ``root``: ``root/<key>``.

    Writes go to a hidden temp file in the target directory, are fsynced, then renamed
    over the target, so readers see the old object, the new one, or none, never part of
    one. Keys cannot escape ``root`` (validated segments, no ``..``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_bytes(self, key: str, data: Payload) -> None:
        path = self._path(key)
        if key.startswith(BLOB_PREFIX) and self.head(key) == len(data):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f"{_TEMP_PREFIX}{path.name}-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def _open(self, key: str) -> BinaryIO:
        """The blob's file, open for reading. Raises NotFoundError."""
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFoundError(f"blob {key!r} not found in {self.url}") from exc

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as src:
            return src.read()

    def download(
        self,
        key: str,
        dest: Path,
        on_progress: ProgressCallback | None = None,
        *,
        hasher: Hasher | None = None,
    ) -> int:
        src = self._open(key)
        total = 0
        with src, open(dest, "wb") as out:
            while chunk := src.read(4 * _CHUNK):
                out.write(chunk)
                total += len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                if on_progress is not None:
                    on_progress(len(chunk))
        return total

    def head(self, key: str) -> int | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)


def _fsync_dir(path: Path) -> None:
    """Persist a rename: fsync the directory that holds the renamed entry."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3BlobStore:
    """Blobs in an S3 bucket under ``prefix``, over boto3 (AWS, MinIO, Ceph, moto).

    Every S3 call goes through :func:`call_with_retries`: connection errors, timeouts,
    5xx and throttling answers are retried ``attempts`` times with backoff, then raise
    :class:`BackendUnavailableError`. Other error answers (access denied, no such bucket)
    raise :class:`BackendUnavailableError` at once, as retrying cannot fix them; a missing
    object raises :class:`NotFoundError`.

    ``download`` fetches an object as ranged GETs of ``part_size`` bytes on
    ``max_concurrency`` threads (one GET when it is no larger than ``part_size``), each
    written in place with ``os.pwrite``; a failed part is retried on its own. Parts are
    not tied to one ETag: stored blobs are immutable, and the caller verifies the sha256
    of the whole file.

    Args:
        bucket: the bucket name; it must exist.
        prefix: a key prefix inside the bucket (no leading or trailing '/').
        client: an injected boto3 S3 client; by default one is made from
            ``endpoint_url`` and ``region`` with short timeouts and no boto3 retries.
        sleep: the backoff sleep, injected so tests need not wait.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = 8 * _MiB,
        max_concurrency: int = 8,
        attempts: int = 4,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        import botocore.exceptions

        if not bucket:
            raise ValueError("S3 bucket name is empty: use s3://BUCKET[/PREFIX]")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            _check_key(self.prefix)
        self.endpoint_url = endpoint_url
        self.region = region
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self._retry_kwargs: dict[str, Any] = {"attempts": attempts}
        if sleep is not None:
            self._retry_kwargs["sleep"] = sleep
        self._client = client or self._make_client(connect_timeout_s, read_timeout_s)
        self._client_error = botocore.exceptions.ClientError
        self._retry_on = (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            _TransientS3Error,
        )

    def _make_client(self, connect_timeout_s: float, read_timeout_s: float) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"total_max_attempts": 1},
            max_pool_connections=max(10, self.max_concurrency + 2),
            # Path-style works with every S3-compatible server; virtual hosts need DNS.
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        session = boto3.session.Session()
        return session.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
        )

    @property
    def url(self) -> str:
        query = "&".join(
            f"{name}={quote(value, safe=':/')}"
            for name, value in (("endpoint_url", self.endpoint_url), ("region", self.region))
            if value
        )
        path = f"/{self.prefix}" if self.prefix else ""
        return f"s3://{self.bucket}{path}" + (f"?{query}" if query else "")

    def __repr__(self) -> str:
        return f"S3BlobStore({self.url!r})"

    def _full_key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, op: str, key: str, fn: Callable[[], Any]) -> Any:
        """Run one S3 request with bounded retries; map error answers to our errors."""

        def attempt() -> Any:
            try:
                return fn()
            except self._client_error as exc:
                if _is_transient(exc):
                    raise _TransientS3Error(_describe(exc)) from exc
                raise

        try:
            return call_with_retries(
                attempt,
                what=f"S3 {self.url}: {op} {key!r}",
                retry_on=self._retry_on,
                **self._retry_kwargs,
            )
        except self._client_error as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise NotFoundError(f"blob {key!r} not found in {self.url}") from exc
            raise BackendUnavailableError(
                f"S3 {self.url}: {op} {key!r} was refused: {_describe(exc)}. Check that the "
                "bucket exists and the credentials may read and write it."
            ) from exc

    def put_bytes(self, key: str, data: Payload) -> None:
        if key.startswith(BLOB_PREFIX) and self.head(key) == len(data):
            return
        full = self._full_key(key)
        self._call(
            "PUT", key, lambda: self._client.put_object(Bucket=self.bucket, Key=full, Body=data)
        )

    def get_bytes(self, key: str) -> bytes:
        full = self._full_key(key)

        def get() -> bytes:
            return self._client.get_object(Bucket=self.bucket, Key=full)["Body"].read()

        return self._call("GET", key, get)

    def head(self, key: str) -> int | None:
        full = self._full_key(key)
        try:
            meta = self._call(
                "HEAD", key, lambda: self._client.head_object(Bucket=self.bucket, Key=full)
            )
        except NotFoundError:
            return None
        return int(meta["ContentLength"])

    def delete(self, key: str) -> None:
        full = self._full_key(key)
        self._call("DELETE", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=full))

    def list(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base + prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("LIST", prefix, lambda kw=kwargs: self._client.list_objects_v2(**kw))
            for obj in page.get("Contents", []):
                yield obj["Key"][len(base) :]
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def download(
        self,
        key: str,
        dest: Path,
        on_progress: ProgressCallback | None = None,
        *,
        hasher: Hasher | None = None,
    ) -> int:
        size = self.head(key)
        if size is None:
            raise NotFoundError(f"blob {key!r} not found in {self.url}")
        full = self._full_key(key)
        # An empty object is one GET without a Range (a range of nothing is invalid).
        ranges = [
            (start, min(start + self.part_size, size)) for start in range(0, size, self.part_size)
        ] or [(0, 0)]
        fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)
            workers = min(self.max_concurrency, len(ranges))
            keep = hasher is not None
            with ThreadPoolExecutor(workers, thread_name_prefix="s3-part") as pool:
                futures = {
                    pool.submit(self._download_part, key, full, fd, start, end, keep): index
                    for index, (start, end) in enumerate(ranges)
                }
                try:
                    self._collect_parts(futures, ranges, fd, on_progress, hasher)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
            return size
        finally:
            os.close(fd)

    def _collect_parts(
        self,
        futures: dict[Future[list[bytes]], int],
        ranges: list[tuple[int, int]],
        fd: int,
        on_progress: ProgressCallback | None,
        hasher: Hasher | None,
    ) -> None:
        """Wait for the parts; hash the object's completed prefix while later parts run.

        Hashing in part order as parts arrive overlaps verification with the download
        instead of adding a pass over the file after it. A part that arrives early is
        kept in memory until its turn, up to ``max_concurrency * part_size`` bytes;
        beyond that it is read back from the file when its turn comes.
        """
        budget = self.max_concurrency * self.part_size
        waiting: dict[int, list[bytes] | None] = {}
        buffered = 0
        next_to_hash = 0
        for future in as_completed(futures):
            # The future holds on to the same list: chunks are freed by clearing it.
            chunks: list[bytes] | None = future.result()
            index = futures[future]
            start, end = ranges[index]
            if on_progress is not None:
                on_progress(end - start)
            if hasher is None:
                continue
            if index != next_to_hash and buffered + (end - start) > budget:
                chunks.clear()
                chunks = None
            else:
                buffered += end - start
            waiting[index] = chunks
            while next_to_hash in waiting:
                chunks = waiting.pop(next_to_hash)
                start, end = ranges[next_to_hash]
                if chunks is None:
                    hasher.update(os.pread(fd, end - start, start))
                else:
                    for chunk in chunks:
                        hasher.update(chunk)
                    chunks.clear()
                    buffered -= end - start
                next_to_hash += 1

    def _download_part(
        self, key: str, full: str, fd: int, start: int, end: int, keep: bool
    ) -> list[bytes]:
        """GET bytes [start, end) and write them at ``start``; a retry starts the part over.

        Returns the chunks written if ``keep``, for hashing without reading them back.
        """

        def get() -> list[bytes]:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
            if end > start:
                kwargs["Range"] = f"bytes={start}-{end - 1}"
            body = self._client.get_object(**kwargs)["Body"]
            chunks = []
            offset = start
            while chunk := body.read(_CHUNK):
                os.pwrite(fd, chunk, offset)
                offset += len(chunk)
                if keep:
                    chunks.append(chunk)
            if offset != end:
                raise _TransientS3Error(f"got {offset - start} bytes for range {start}-{end}")
            return chunks

        return self._call("GET", key, get)


class _TransientS3Error(Exception):
    """An S3 answer worth retrying: 5xx, throttling, or a short body."""


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
    return f"HTTP {status} {error.get('Code', '')}: {error.get('Message', '')}".strip()


def _is_transient(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return int(status) >= 500 or _error_code(exc) in ("SlowDown", "Throttling", "RequestTimeout")


def _open_s3(url: str) -> BlobStore:
    parts = urlsplit(url)
    params = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = sorted(set(params) - {"endpoint_url", "region"})
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} in blob store URL {url!r}: "
            "known are endpoint_url, region"
        )
    return S3BlobStore(
        parts.netloc,
        parts.path.strip("/"),
        endpoint_url=params.get("endpoint_url"),
        region=params.get("region"),
    )


def _open_file(url: str) -> BlobStore:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError(f"blob store URL {url!r} must name an absolute path: file:///abs/path")
    return LocalBlobStore(Path(parts.path))


_BACKENDS: dict[str, Callable[[str], BlobStore]] = {"s3": _open_s3, "file": _open_file}


def open_blob_store(url: str) -> BlobStore:
    """The blob store a URL names.

    ``s3://bucket/prefix?endpoint_url=http://host:port&region=us-east-1`` (both parameters
    optional; credentials come from the usual AWS environment) or ``file:///abs/path``.

    Raises:
        ValueError: unknown scheme (the message lists the known ones) or a malformed URL.
    """
    scheme = urlsplit(url).scheme
    opener = _BACKENDS.get(scheme)
    if opener is None:
        raise ValueError(
            f"unknown blob store scheme {scheme!r} in {url!r}: known schemes are "
            + ", ".join(f"{name}://" for name in sorted(_BACKENDS))
        )
    return opener(url)
