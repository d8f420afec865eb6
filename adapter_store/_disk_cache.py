"""A replica's local disk cache of adapter versions, filled from the blob store.

Layout under ``root``::

    entries/<tenant>/<name>@<version>/   one directory per resident adapter version:
        adapter_config.json, ...          its files, named as the caller asked
        .loramux-entry.json               manifest: each file's sha256 and size
    tmp/<stripe>-<uuid>/                  a download in progress (or a crash's leftover)
    tmp/evicted-<uuid>/                   an evicted entry, being deleted
    locks/<stripe>.lock                   cross-process locks, 4096 stripes by key hash

Policies:

* **Verified writes.** Each file is downloaded into a staging directory, its sha256
  (computed from the bytes written, during the download) checked against the digest
  the caller gave, and the whole directory renamed into ``entries/`` in one step: an
  entry is complete and verified, or absent. A file whose sha256 does not match is
  downloaded once more; a second mismatch (or a blob missing from the store) raises
  :class:`IntegrityError`.
* **Cheap hits, full check after a restart.** A hit checks that the resident entry has
  the same digests as asked and that every file still has the size recorded when it was
  verified (one ``stat`` per file); it does not re-hash. A mismatch drops the entry and
  downloads it again. Entries found on disk at start are trusted only after their first
  hit re-hashes them in full: nothing is fsynced, so after a machine crash a file may
  keep its size but not its bytes. Writes thus cost no fsync, and bit rot is caught
  across restarts. Within one run, bit rot that keeps sizes is not detected; the
  safetensors loader still checks the header and shapes.
* **LRU byte budget, evicted before writing.** Before a download, its size (given by the
  caller, else read with one HEAD per file) is reserved: the least recently ensured
  entries are deleted until resident entries plus every download in progress fit in
  ``max_bytes``; when downloads in progress hold the rest of the budget, the download
  waits for one of them to finish. So concurrent inserts never take the cache over its
  budget, and a disk sized for the budget never fills because of it. An entry larger
  than the whole budget is still downloaded (once nothing else is in progress) and
  returned, with a warning, and goes first at the next insertion.
* **Local faults.** A write that fails (disk full, quota, read-only, file size limit)
  raises :class:`LocalDiskError` naming the cache, the adapter and the cause; the
  staging directory is removed, so no partial file remains and the index is unchanged.
* **Single flight.** Concurrent ``ensure`` calls for one key in one process make one
  download; the others wait for it and get its result or its error. Processes sharing
  ``root`` (two replicas on a node) serialize downloads of a key with a striped
  ``flock``, and a process finding an entry another one wrote adopts it.
* **Restart.** On construction the index is rebuilt from ``entries/`` (LRU order from
  each manifest's mtime, touched on every hit; entries marked unverified, see above);
  entries without a valid manifest and staging leftovers not locked by a live process
  are removed.

Failure modes: entries are deleted by renaming them away first, so a reader that has
opened a file keeps reading it; a path returned by :meth:`DiskCache.ensure` may however
vanish if another thread or process evicts it before it is opened (call ``ensure``
again). Each process enforces ``max_bytes`` over the entries it knows (those it ensured
or found at start), so processes sharing ``root`` may together exceed one budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from adapter_store._blobs import BlobStore
from adapter_store._blobs import ProgressCallback
from adapter_store._blobs import blob_key
from adapter_store._identity import AdapterVersion
from adapter_store._identity import validate_name
from adapter_store.exceptions import IntegrityError
from adapter_store.exceptions import LocalDiskError
from adapter_store.exceptions import NotFoundError

__all__ = ["DiskCache", "DiskCacheStats"]

_log = logging.getLogger(__name__)

MANIFEST_NAME = ".loramux-entry.json"
_EVICTED_PREFIX = "evicted-"


@dataclass(slots=True)
class DiskCacheStats:
    """Counters since construction; :attr:`DiskCache.stats` returns a copy.

    ``hits``: ensure calls served by a resident entry, without downloading.
    ``rehashed``: hits on an entry found at start, whose files were hashed in full.
    ``misses``: ensure calls that downloaded the entry.
    ``coalesced``: ensure calls that waited for another call's download of the same key.
    ``evictions``: entries removed, by the byte budget or by :meth:`DiskCache.evict`.
    ``bytes_downloaded``: bytes received from the blob store, re-downloads included.
    ``corrupt_downloads``: downloaded files whose sha256 did not match.
    ``download_seconds``: time spent in downloads, by the injected clock.
    """

    hits: int = 0
    rehashed: int = 0
    misses: int = 0
    coalesced: int = 0
    evictions: int = 0
    bytes_downloaded: int = 0
    corrupt_downloads: int = 0
    download_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class _Entry:
    """A resident entry: file name -> (sha256, size).

    ``verified``: its files' sha256 was checked in this process (downloaded here, or
    re-hashed); False for entries found at start.
    """

    files: Mapping[str, tuple[str, int]]
    verified: bool = True

    @property
    def size(self) -> int:
        return sum(size for _, size in self.files.values())

    def digests(self) -> dict[str, str]:
        return {name: digest for name, (digest, _) in self.files.items()}


class DiskCache:
    """Adapter versions on local disk, downloaded from a :class:`BlobStore` on demand.

    Thread-safe. See the module docstring for the verification, eviction, single-flight
    and restart policies.

    Args:
        root: the cache directory; created if missing.
        blobs: where blobs are downloaded from.
        max_bytes: the byte budget over all entries' files.
        clock: measures download time for :attr:`stats`; injected in tests.
    """

    def __init__(
        self,
        root: Path,
        blobs: BlobStore,
        max_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.root = Path(root).absolute()
        self.max_bytes = max_bytes
        self._blobs = blobs
        self._clock = clock
        self._entries_dir = self.root / "entries"
        self._tmp_dir = self.root / "tmp"
        self._locks_dir = self.root / "locks"
        for path in (self._entries_dir, self._tmp_dir, self._locks_dir):
            path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Notified whenever a reservation ends: a download waiting for budget retries.
        self._budget_freed = threading.Condition(self._lock)
        self._index: OrderedDict[str, _Entry] = OrderedDict()
        self._used = 0
        self._reserved = 0  # bytes of the downloads in progress
        self._inflight: dict[str, Future[Path]] = {}
        self._stats = DiskCacheStats()
        self._last_used_ns = 0
        self._remove_leftovers()
        self._rebuild_index()

    # -- public API -------------------------------------------------------------------

    def ensure(
        self,
        key: str,
        files: Mapping[str, str],
        on_progress: ProgressCallback | None = None,
        *,
        size_bytes: int | None = None,
    ) -> Path:
        """The directory holding ``files`` of adapter version ``key``, verified.

        Args:
            key: an adapter version key, ``tenant/name@version``.
            files: file name -> sha256 digest, e.g. ``{"adapter_config.json": ...,
                "adapter_model.safetensors": ...}``.
            on_progress: receives byte counts as the download proceeds; only the call
                that performs the download gets them.
            size_bytes: the files' total size, reserved in the budget before the
                download; None reads it from the blob store (one HEAD per file).

        Raises:
            IntegrityError: a file failed its sha256 check on two downloads, or its blob
                is missing from the blob store.
            BackendUnavailableError: the blob store did not answer.
            LocalDiskError: the cache directory could not be written (disk full...).
            InvalidReferenceError, InvalidNameError: ``key`` is not an adapter key.
            ValueError: a file name or digest is malformed.
        """
        wanted = _validate_request(key, files)
        with self._lock:
            if self._touch_if_resident(key, wanted):
                self._stats.hits += 1
                return self._entry_dir(key)
            known = self._index.get(key)
            rehash = known is not None and not known.verified
            flight = self._inflight.get(key)
            leader = flight is None
            if flight is None:
                flight = self._inflight[key] = Future()
            else:
                self._stats.coalesced += 1
        if not leader:
            return flight.result()
        try:
            path = self._load(key, wanted, on_progress, rehash=rehash, size_bytes=size_bytes)
            flight.set_result(path)
            return path
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._inflight[key]

    def contains(self, key: str) -> bool:
        """Whether ``key`` is resident (by this process's index; no disk access)."""
        with self._lock:
            return key in self._index

    def keys(self) -> list[str]:
        """Resident keys in LRU order, least recently ensured first."""
        with self._lock:
            return list(self._index)

    @property
    def used_bytes(self) -> int:
        """The summed size of the resident entries' files."""
        with self._lock:
            return self._used

    @property
    def stats(self) -> DiskCacheStats:
        """A snapshot of the counters."""
        with self._lock:
            return dataclasses.replace(self._stats)

    def evict(self, key: str) -> bool:
        """Remove ``key`` from the cache; False if it was not resident."""
        with self._lock:
            if key not in self._index:
                return False
            trash = self._drop(key)
        _remove_tree(trash)
        return True

    # -- loading ----------------------------------------------------------------------

    def _load(
        self,
        key: str,
        wanted: dict[str, str],
        on_progress: ProgressCallback | None,
        *,
        rehash: bool,
        size_bytes: int | None,
    ) -> Path:
        """Adopt the entry from disk or download it, then index it and apply the budget.

        An entry on disk is adopted as is when another live process wrote it; when it
        was found at start (``rehash``), only if its files hash to their digests.
        """
        final = self._entry_dir(key)
        reserved = 0  # bytes this download holds in the budget until it is indexed
        try:
            with _flock(self._lock_file(_stripe(key))):
                on_disk = _read_entry(final)
                download = on_disk is None or on_disk.digests() != wanted
                if not download and rehash and not _hashes_match(final, on_disk):
                    _log.warning("disk cache entry %s is corrupt on disk; fetching again", key)
                    download = True
                if download:
                    reserved = (
                        self._download_size(key, wanted) if size_bytes is None else size_bytes
                    )
                    self._reserve(key, reserved)
                    entry = self._download_entry(key, wanted, final, on_progress)
                else:
                    assert on_disk is not None
                    entry = on_disk
        except BaseException:
            self._end_reservation(reserved)
            raise
        with self._budget_freed:
            if download:
                self._stats.misses += 1
            else:
                self._stats.hits += 1
                if rehash:
                    self._stats.rehashed += 1
            # Indexing the entry and ending its reservation in one step keeps the bytes
            # counted throughout.
            self._insert(key, entry)
            self._end_reservation(reserved, locked=True)
            trash = self._evict_over_budget(keep=key)
        for path in trash:
            _remove_tree(path)
        return final

    def _download_size(self, key: str, wanted: dict[str, str]) -> int:
        total = 0
        for name, digest in wanted.items():
            size = self._blobs.head(blob_key(digest))
            if size is None:
                raise _missing_blob(self._blobs, key, name, digest)
            total += size
        return total

    def _reserve(self, key: str, size: int) -> None:
        """Make room for ``size`` more bytes before they are written: evict least
        recently used entries (deleting them before returning), and wait while other
        downloads in progress hold the rest of the budget."""
        with self._budget_freed:
            while True:
                for path in self._evict_over_budget(keep=key, incoming=self._reserved + size):
                    # Under the lock, so that no download writes while these bytes are
                    # still on disk; an entry is a few files, deleted in microseconds.
                    _remove_tree(path)
                if self._used + self._reserved + size <= self.max_bytes or not self._reserved:
                    self._reserved += size
                    return
                self._budget_freed.wait()

    def _end_reservation(self, size: int, *, locked: bool = False) -> None:
        if not size:
            return
        with contextlib.nullcontext() if locked else self._budget_freed:
            self._reserved -= size
            self._budget_freed.notify_all()

    def _download_entry(
        self,
        key: str,
        wanted: dict[str, str],
        final: Path,
        on_progress: ProgressCallback | None,
    ) -> _Entry:
        """Download and verify every file into a staging dir, then rename it to ``final``.

        The caller holds the key's process lock, so no other process writes ``final``.
        """
        stage = self._tmp_dir / f"{_stripe(key)}-{uuid.uuid4().hex}"
        try:
            stage.mkdir()
            files = {
                name: (digest, self._fetch_verified(key, name, digest, stage / name, on_progress))
                for name, digest in wanted.items()
            }
            entry = _Entry(files)
            _write_manifest(stage, key, entry)
            if final.exists():
                _remove_tree(self._move_to_trash(final))
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(stage, final)
            return entry
        except OSError as exc:
            raise self._disk_error(key, exc) from exc
        finally:
            if stage.exists():
                _remove_tree(stage)

    def _disk_error(self, key: str, exc: OSError) -> LocalDiskError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = (
                f"free space on that disk, or set the cache budget (cache_max_bytes, now "
                f"{self.max_bytes}) below the space the disk has for it"
            )
        else:
            fix = "check that the cache directory is on a writable, healthy disk"
        return LocalDiskError(
            f"disk cache {self.root}: writing adapter {key} failed: {exc.strerror or exc} "
            f"(errno {exc.errno}); nothing was kept. {fix[0].upper()}{fix[1:]}"
        )

    def _fetch_verified(
        self,
        key: str,
        name: str,
        digest: str,
        dest: Path,
        on_progress: ProgressCallback | None,
    ) -> int:
        """Download one blob to ``dest`` and check its sha256; one retry on mismatch."""

        def count(size: int, seconds: float, corrupt: bool) -> None:
            with self._lock:
                self._stats.bytes_downloaded += size
                self._stats.download_seconds += seconds
                self._stats.corrupt_downloads += int(corrupt)

        return download_verified(
            self._blobs, key, name, digest, dest, on_progress, clock=self._clock, on_attempt=count
        )

    # -- index (callers hold self._lock) ------------------------------------------------

    def _touch_if_resident(self, key: str, wanted: dict[str, str]) -> bool:
        """On a valid hit mark ``key`` most recently used; drop an entry gone bad."""
        entry = self._index.get(key)
        if entry is None or not entry.verified:
            return False
        path = self._entry_dir(key)
        if entry.digests() != wanted or not _sizes_match(path, entry):
            _log.warning("disk cache entry %s changed on disk or in content; fetching again", key)
            self._used -= self._index.pop(key).size
            return False
        self._index.move_to_end(key)
        self._mark_used(key)
        return True

    def _mark_used(self, key: str) -> None:
        """Stamp the manifest's mtime so that a restart rebuilds the same LRU order.

        Stamps strictly increase within a process; the filesystem clock alone can give
        two entries used within one tick the same mtime.
        """
        self._last_used_ns = max(time.time_ns(), self._last_used_ns + 1)
        with contextlib.suppress(OSError):
            os.utime(self._entry_dir(key) / MANIFEST_NAME, ns=(self._last_used_ns,) * 2)

    def _insert(self, key: str, entry: _Entry) -> None:
        old = self._index.pop(key, None)
        if old is not None:
            self._used -= old.size
        self._index[key] = entry
        self._used += entry.size
        self._mark_used(key)
        if entry.size > self.max_bytes:
            _log.warning(
                "adapter %s takes %d bytes, more than the disk cache budget of %d bytes; "
                "kept for now, evicted first on the next insertion. Raise max_bytes.",
                key,
                entry.size,
                self.max_bytes,
            )

    def _evict_over_budget(self, keep: str, incoming: int = 0) -> list[Path]:
        """Drop least recently used entries other than ``keep`` until they and
        ``incoming`` more bytes fit in the budget."""
        trash = []
        for key in list(self._index):
            if self._used + incoming <= self.max_bytes:
                break
            if key != keep:
                trash.append(self._drop(key))
        return trash

    def _drop(self, key: str) -> Path:
        """Remove ``key`` from the index and move its directory away; returns the trash."""
        self._used -= self._index.pop(key).size
        self._stats.evictions += 1
        return self._move_to_trash(self._entry_dir(key))

    # -- disk -------------------------------------------------------------------------

    def _entry_dir(self, key: str) -> Path:
        return self._entries_dir / key

    def _move_to_trash(self, path: Path) -> Path:
        """Rename ``path`` into tmp/ so that it vanishes atomically from entries/."""
        trash = self._tmp_dir / f"{_EVICTED_PREFIX}{uuid.uuid4().hex}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, trash)
        return trash

    def _lock_file(self, stripe: str) -> Path:
        """The lock file of a stripe: keys hash onto 4096 of them, created on first use."""
        return self._locks_dir / f"{stripe}.lock"

    def _remove_leftovers(self) -> None:
        """Delete staging dirs of crashed downloads, and trash; skip live downloads."""
        for path in self._tmp_dir.iterdir():
            stripe, _, _ = path.name.partition("-")
            if path.name.startswith(_EVICTED_PREFIX) or not re.fullmatch(r"[0-9a-f]{3}", stripe):
                _remove_tree(path)
                continue
            with _flock(self._lock_file(stripe), blocking=False) as held:
                if held:
                    _remove_tree(path)

    def _rebuild_index(self) -> None:
        """Index the valid entries on disk, oldest use first; remove invalid ones."""
        found: list[tuple[int, str, _Entry]] = []
        for tenant_dir in sorted(self._entries_dir.iterdir()):
            for entry_dir in sorted(tenant_dir.iterdir()) if tenant_dir.is_dir() else ():
                key = f"{tenant_dir.name}/{entry_dir.name}"
                entry = _read_entry(entry_dir)
                if entry is None or not _is_adapter_key(key):
                    _log.warning("removing invalid disk cache entry %s", entry_dir)
                    _remove_tree(self._move_to_trash(entry_dir))
                    continue
                with contextlib.suppress(OSError):  # evicted meanwhile by another process
                    found.append(((entry_dir / MANIFEST_NAME).stat().st_mtime_ns, key, entry))
        with self._lock:
            for stamp, key, entry in sorted(found):
                self._index[key] = dataclasses.replace(entry, verified=False)
                self._used += entry.size
                self._last_used_ns = max(self._last_used_ns, stamp)
            trash = self._evict_over_budget(keep="")
        for path in trash:
            _remove_tree(path)


def download_verified(
    blobs: BlobStore,
    key: str,
    name: str,
    digest: str,
    dest: Path,
    on_progress: ProgressCallback | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    on_attempt: Callable[[int, float, bool], None] | None = None,
) -> int:
    """Download the blob of ``digest`` to ``dest``, hashing as it streams; return its size.

    Policy: a sha256 mismatch is downloaded once more (a transfer may have been damaged),
    then reported; ``dest`` then holds the bad bytes and the caller discards it.
    ``on_attempt(size, seconds, corrupt)`` is told about every download.

    Raises:
        IntegrityError: the blob is missing, or failed its sha256 check on both downloads.
        BackendUnavailableError: the blob store did not answer.
    """
    blob = blob_key(digest)
    actual = ""
    for attempt in (1, 2):
        started = clock()
        hasher = hashlib.sha256()
        try:
            size = blobs.download(blob, dest, on_progress, hasher=hasher)
        except NotFoundError as exc:
            raise _missing_blob(blobs, key, name, digest) from exc
        actual = hasher.hexdigest()
        if on_attempt is not None:
            on_attempt(size, clock() - started, actual != digest)
        if actual == digest:
            return size
        _log.warning(
            "adapter %s: %s from %s has sha256 %s, expected %s (download %d of 2)",
            key,
            name,
            blob,
            actual,
            digest,
            attempt,
        )
    raise IntegrityError(
        f"adapter {key}: file {name} downloaded twice from {blobs.url} as {blob} "
        f"has sha256 {actual}, expected {digest}: the stored blob is corrupt. Delete "
        "the blob and push the adapter again, or restore the blob from a backup."
    )


def _missing_blob(blobs: BlobStore, key: str, name: str, digest: str) -> IntegrityError:
    return IntegrityError(
        f"adapter {key}: file {name} (sha256 {digest}) is missing from the blob "
        f"store {blobs.url} as {blob_key(digest)}; the metadata names a blob that is "
        "gone: restore it from a backup or push the adapter again."
    )


def _validate_request(key: str, files: Mapping[str, str]) -> dict[str, str]:
    AdapterVersion.parse_key(key)
    if not files:
        raise ValueError(f"adapter {key}: no files to fetch")
    for name, digest in files.items():
        # The adapter name rules keep a file name inside the entry's directory.
        validate_name(name, f"adapter {key}: file")
        blob_key(digest)
    return dict(files)


def _is_adapter_key(key: str) -> bool:
    try:
        AdapterVersion.parse_key(key)
    except ValueError:
        return False
    return True


def _stripe(key: str) -> str:
    """The lock stripe of a key: 3 hex digits of its sha256, so 4096 stripes."""
    return hashlib.sha256(key.encode()).hexdigest()[:3]


@contextlib.contextmanager
def _flock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path``; yields False if non-blocking and taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _read_entry(path: Path) -> _Entry | None:
    """The entry in ``path`` if its manifest parses and its files have their sizes."""
    try:
        manifest = json.loads((path / MANIFEST_NAME).read_text())
        entry = _Entry(
            {
                str(name): (str(meta["sha256"]), int(meta["size"]))
                for name, meta in manifest["files"].items()
            }
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return entry if _sizes_match(path, entry) else None


def _write_manifest(directory: Path, key: str, entry: _Entry) -> None:
    manifest = {
        "key": key,
        "files": {
            name: {"sha256": digest, "size": size} for name, (digest, size) in entry.files.items()
        },
    }
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _hashes_match(path: Path, entry: _Entry) -> bool:
    """Whether every file of ``entry`` in ``path`` has its recorded sha256."""
    for name, (digest, _) in entry.files.items():
        try:
            with open(path / name, "rb") as f:
                if hashlib.file_digest(f, "sha256").hexdigest() != digest:
                    return False
        except OSError:
            return False
    return True


def _sizes_match(path: Path, entry: _Entry) -> bool:
    try:
        return all((path / name).stat().st_size == size for name, (_, size) in entry.files.items())
    except OSError:
        return False


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
