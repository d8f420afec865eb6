"""The AdapterStore facade: push, resolve, fetch, pull, list, alias, delete, gc, tenants.

Push order, and why: (1) read and validate everything (format, shapes against the base
model's manifest, size and rank caps) before touching any backend, so a bad upload
writes nothing; (2) check the tenant and its quotas, so a push that will be refused does
not upload; (3) announce the blobs (so gc spares them), write them content-addressed and
read back their sizes; (4) publish in one Lua script that re-checks the quotas, checks
that gc did not claim a blob since (3) and allocates the version; if gc did, (3) and (4)
run once more, then the push fails with nothing published. A failure before (4) leaves no visible trace (at most a blob no
version references, which :meth:`AdapterStore.gc` collects after the grace period); (4)
is all-or-nothing.

Quota policy: each live version is charged its full size (config + weights), also when
its blobs are shared with another version or tenant (identical pushes store the bytes
once, but who pays must not depend on who pushed first); the adapter-count quota counts
adapter names with at least one live version.

Deletion is soft: deleted versions stop resolving at once; their blobs are removed by
:meth:`AdapterStore.gc` once no live version references them, and their metadata after
the grace period. Version numbers of a name are never reused, even after the adapter is
deleted and pushed again, so a cache keyed by ``tenant/name@version`` is never stale.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from adapter_store._blobs import BLOB_PREFIX
from adapter_store._blobs import BlobStore
from adapter_store._blobs import blob_key
from adapter_store._blobs import open_blob_store
from adapter_store._disk_cache import DiskCache
from adapter_store._disk_cache import download_verified
from adapter_store._identity import AdapterRef
from adapter_store._identity import AdapterVersion
from adapter_store._identity import Origin
from adapter_store._identity import Publication
from adapter_store._identity import is_version_number
from adapter_store._identity import validate_alias
from adapter_store._identity import validate_base_model_id
from adapter_store._identity import validate_name
from adapter_store._manifest import BaseModelManifest
from adapter_store._metadata import RedisMetadataStore
from adapter_store._metadata_store import MetadataStore
from adapter_store._rate_limits import TenantLimits
from adapter_store._records import AdapterInfo
from adapter_store._records import GcReport
from adapter_store._records import Page
from adapter_store._records import Tenant
from adapter_store._records import TenantUsage
from adapter_store._records import VersionInfo
from adapter_store._source import CONFIG_NAME
from adapter_store._source import WEIGHTS_NAME
from adapter_store._source import AdapterFiles
from adapter_store._source import AdapterLimits
from adapter_store._source import Payload
from adapter_store._source import read_adapter_source
from adapter_store._validate import validate_adapter
from adapter_store.exceptions import AuthenticationError
from adapter_store.exceptions import BackendUnavailableError
from adapter_store.exceptions import BlobCollectedError
from adapter_store.exceptions import ConflictError
from adapter_store.exceptions import IntegrityError
from adapter_store.exceptions import InvalidReferenceError
from adapter_store.exceptions import ManifestNotFoundError

if TYPE_CHECKING:
    from adapter_store._settings import StoreSettings

__all__ = ["MAX_PAGE_SIZE", "AdapterStore"]

_log = logging.getLogger(__name__)

ProgressCallback = Callable[[int], None]
_API_KEY_PREFIX = "lmx_"
MAX_PAGE_SIZE = 1000
"""The largest ``limit`` a listing takes (one Redis round trip per page)."""
# How long a push waits for a gc pass that is deleting a blob the push needs.
_GC_WAIT_S = 30.0
# Uploads per push when gc keeps deleting its blobs before the publish (a push slower
# than gc's grace period): the second try usually wins; more would hide a grace period
# set far too short.
_UPLOAD_ATTEMPTS = 2


class AdapterStore:
    """Every tenant's adapters: blobs in a :class:`BlobStore`, metadata in a
    :class:`MetadataStore` (Redis in production).

    Thread-safe: it holds no mutable state of its own beyond its backends'.

    Args:
        metadata: the metadata store: :class:`RedisMetadataStore`, or any other
            :class:`MetadataStore` (the tests' functional tier passes an in-memory one).
        blobs: where adapter files are stored, content-addressed by sha256.
        disk_cache: the local cache :meth:`fetch` fills; required by :meth:`fetch` only.
        limits: size and rank caps enforced at push.
        clock: wall-clock seconds, for version times, usage and gc grace periods.
        sleep: used while waiting for a gc pass; injected in tests.
    """

    def __init__(
        self,
        metadata: MetadataStore,
        blobs: BlobStore,
        *,
        disk_cache: DiskCache | None = None,
        limits: AdapterLimits = AdapterLimits(),  # noqa: B008 (frozen, shared safely)
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.metadata = metadata
        self.blobs = blobs
        self.disk_cache = disk_cache
        self.limits = limits
        self._clock = clock
        self._sleep = sleep
        self._on_close: list[Callable[[], None]] = [metadata.close]

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> AdapterStore:
        """Build the store the settings describe; with no ``redis_url``, connect to (or
        start) the embedded redis-server under ``data_dir``. Call :meth:`close` when done.
        """
        from adapter_store._embedded import open_embedded_redis

        server = None
        if settings.redis_url:
            url = settings.redis_url
        else:
            url, server = open_embedded_redis(settings.embedded_redis_dir)
        metadata = RedisMetadataStore.from_url(url, key_prefix=settings.key_prefix)
        blobs = open_blob_store(settings.resolved_blob_url)
        store = cls(
            metadata,
            blobs,
            disk_cache=DiskCache(settings.resolved_cache_dir, blobs, settings.cache_max_bytes),
            limits=settings.adapter_limits,
        )
        if server is not None:
            store._on_close.append(server.stop)
        return store

    def close(self) -> None:
        """Close the Redis connection; stop the embedded redis-server if this store
        started it."""
        while self._on_close:
            self._on_close.pop()()

    def __enter__(self) -> AdapterStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- base model manifests -------------------------------------------------------------

    def register_manifest(self, manifest: BaseModelManifest) -> None:
        """Register (or replace) the module shapes pushes for this base model are checked
        against."""
        validate_base_model_id(manifest.base_model)
        self.metadata.put_manifest(manifest.base_model, manifest.to_json())

    def get_manifest(self, base_model: str) -> BaseModelManifest:
        """Raises ManifestNotFoundError, saying how to register one."""
        validate_base_model_id(base_model)
        text = self.metadata.get_manifest(base_model)
        if text is None:
            raise ManifestNotFoundError(
                f"no manifest is registered for base model {base_model!r}: register it "
                f"with `loramux base register MODEL_DIR --id {base_model}` (a local Hugging "
                "Face model directory) or AdapterStore.register_manifest("
                "manifest_from_model(...))"
            )
        return BaseModelManifest.from_json(text)

    # -- push -----------------------------------------------------------------------------

    def push(
        self,
        tenant: str,
        name: str,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | AdapterFiles,
        *,
        base_model: str,
        aliases: Sequence[str] = (),
        on_progress: ProgressCallback | None = None,
        origin: Origin = "pushed",
    ) -> AdapterVersion:
        """Validate an adapter and publish it as the next version of ``tenant/name``.

        ``source`` is a PEFT directory, an archive of one, the two file paths, or the
        files' bytes. ``latest`` and ``aliases`` move to the new version atomically.
        ``on_progress`` receives byte counts as the blobs are uploaded. ``origin`` records
        how the version came to be (``trained`` by the service's trainer, else ``pushed``).

        Raises:
            InvalidNameError: tenant, name or an alias breaks the naming rules.
            InvalidAdapterError (and subclasses): the files are not an acceptable adapter.
            ManifestNotFoundError: ``base_model`` has no registered manifest.
            TenantNotFoundError, QuotaExceededError: the tenant cannot take it.
            BackendUnavailableError: Redis or the blob store did not answer.
            IntegrityError: a blob did not read back with the size written.
            BackendUnavailableError: also when gc deleted the blobs during each of
                ``_UPLOAD_ATTEMPTS`` uploads (its grace period is shorter than the push).
        """
        validate_name(tenant, "tenant")
        validate_name(name)
        aliases = [validate_alias(alias) for alias in aliases]
        files = (
            source if isinstance(source, AdapterFiles) else read_adapter_source(source, self.limits)
        )
        adapter = validate_adapter(files, self.get_manifest(base_model), self.limits)
        self.metadata.check_publish(tenant, name, adapter.size_bytes)
        blobs = {adapter.config_digest: files.config_bytes, adapter.digest: files.weights_bytes}
        for attempt in range(1, _UPLOAD_ATTEMPTS + 1):
            try:
                generations = self._upload(blobs, on_progress)
                version = self.metadata.publish(
                    Publication(
                        tenant,
                        name,
                        digest=adapter.digest,
                        config_digest=adapter.config_digest,
                        size_bytes=adapter.size_bytes,
                        rank=adapter.max_rank,
                        base_model=base_model,
                        created_at=self._clock(),
                        generations=(
                            generations[adapter.digest],
                            generations[adapter.config_digest],
                        ),
                        aliases=tuple(aliases),
                        origin=origin,
                    )
                )
                break
            except BlobCollectedError as exc:
                if attempt == _UPLOAD_ATTEMPTS:
                    raise BackendUnavailableError(
                        f"push of {tenant}/{name}: garbage collection deleted its blobs "
                        f"during each of {attempt} uploads; nothing was published. Retry "
                        "the push, and run gc with a grace period longer than a push takes "
                        "(loramux gc --grace-s)"
                    ) from exc
                _log.warning("%s; uploading again", exc)
        _log.info("published %s (%d bytes, rank %d)", version.key, version.size_bytes, version.rank)
        return version

    def _upload(
        self, blobs: dict[str, Payload], on_progress: ProgressCallback | None
    ) -> dict[str, int]:
        """Write content-addressed blobs (skipped by the backend when present) and check
        that each reads back with its size; return their generations for the publish."""
        collecting, generations = self.metadata.announce_blobs(blobs, now=self._clock())
        self._wait_for_gc(collecting)
        for digest, data in blobs.items():
            key = blob_key(digest)
            self.blobs.put_bytes(key, data)
            stored = self.blobs.head(key)
            if stored is None:
                # Gone right after the write: a gc pass with a grace period shorter than
                # this push deleted it; the caller uploads again.
                raise BlobCollectedError(
                    f"blob {key} in {self.blobs.url} is missing right after it was written "
                    "(a gc pass deleted it); nothing was published"
                )
            if stored != len(data):
                raise IntegrityError(
                    f"blob {key} in {self.blobs.url} reads back as {stored} bytes after "
                    f"writing {len(data)}; the push was not published, retry it"
                )
            if on_progress is not None:
                on_progress(len(data))
        return generations

    def _wait_for_gc(self, digests: Sequence[str]) -> None:
        """Wait until no gc pass is deleting ``digests``, so they are uploaded afresh."""
        deadline = time.monotonic() + _GC_WAIT_S
        while digests:
            if time.monotonic() > deadline:
                raise BackendUnavailableError(
                    f"a garbage collection pass has held blobs {list(digests)} for over "
                    f"{_GC_WAIT_S:.0f}s; retry the push later"
                )
            self._sleep(0.1)
            digests = self.metadata.gc_claimed(digests, now=self._clock())

    # -- resolve and read -----------------------------------------------------------------

    def resolve(self, tenant: str, ref: str | AdapterRef) -> AdapterVersion:
        """The immutable version ``ref`` names now, in one Redis round trip.

        Raises:
            InvalidReferenceError, InvalidNameError: ``ref`` does not parse.
            AdapterNotFoundError: naming the missing adapter, alias or version.
            BackendUnavailableError: Redis did not answer.
        """
        validate_name(tenant, "tenant")
        ref = ref if isinstance(ref, AdapterRef) else AdapterRef.parse(ref)
        return self.metadata.resolve(tenant, ref.name, ref.selector)

    def fetch(self, version: AdapterVersion, on_progress: ProgressCallback | None = None) -> Path:
        """A local directory with the version's PEFT files, via the disk cache.

        Raises:
            ValueError: this store was built without a disk cache.
            IntegrityError, BackendUnavailableError, LocalDiskError: see
                :meth:`DiskCache.ensure`.
        """
        if self.disk_cache is None:
            raise ValueError(
                "this AdapterStore has no disk cache: pass disk_cache= or use from_settings"
            )
        return self.disk_cache.ensure(
            version.key, _files_of(version), on_progress, size_bytes=version.size_bytes
        )

    def pull(
        self,
        tenant: str,
        ref: str | AdapterRef,
        dest_dir: str | os.PathLike[str],
        on_progress: ProgressCallback | None = None,
    ) -> AdapterVersion:
        """Write the version's ``adapter_config.json`` and ``adapter_model.safetensors``,
        byte for byte as pushed, into ``dest_dir`` (created if missing); each file is
        checked against its sha256 and appears complete or not at all.

        Raises:
            AdapterNotFoundError: ``ref`` does not resolve.
            IntegrityError: a file failed its sha256 check twice.
            BackendUnavailableError: Redis or the blob store did not answer.
        """
        version = self.resolve(tenant, ref)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for filename, digest in _files_of(version).items():
            target = dest / filename
            partial = target.with_name(f".{filename}.part")
            try:
                download_verified(self.blobs, version.key, filename, digest, partial, on_progress)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
        return version

    def record_usage(self, version: AdapterVersion) -> None:
        """Count a request and set last-used: O(1), one round trip, nothing read back."""
        self.metadata.record_usage(version, now=self._clock())

    # -- listing --------------------------------------------------------------------------

    def list_adapters(
        self, tenant: str, *, cursor: str | None = None, limit: int = 50
    ) -> Page[AdapterInfo]:
        """The tenant's live adapters in name order, ``limit`` per page."""
        validate_name(tenant, "tenant")
        return self.metadata.list_adapters(tenant, cursor=cursor, limit=_page_size(limit))

    def iter_adapters(self, tenant: str) -> Iterator[AdapterInfo]:
        """Every live adapter of ``tenant`` in name order, fetched a page of
        :data:`MAX_PAGE_SIZE` at a time as the iteration reaches it.

        Not a snapshot: an adapter pushed or deleted while iterating may or may not be
        seen. Raises what :meth:`list_adapters` raises, when the page is fetched.
        """
        cursor: str | None = None
        while True:
            page = self.list_adapters(tenant, cursor=cursor, limit=MAX_PAGE_SIZE)
            yield from page.items
            if (cursor := page.next_cursor) is None:
                return

    def iter_versions(self, tenant: str, name: str) -> Iterator[VersionInfo]:
        """Every live version of one adapter, oldest first, a page of
        :data:`MAX_PAGE_SIZE` at a time (not a snapshot, as :meth:`iter_adapters`).
        Raises what :meth:`list_versions` raises."""
        cursor: str | None = None
        while True:
            page = self.list_versions(tenant, name, cursor=cursor, limit=MAX_PAGE_SIZE)
            yield from page.items
            if (cursor := page.next_cursor) is None:
                return

    def list_versions(
        self, tenant: str, name: str, *, cursor: str | None = None, limit: int = 50
    ) -> Page[VersionInfo]:
        """An adapter's live versions, oldest first. Raises AdapterNotFoundError."""
        validate_name(tenant, "tenant")
        validate_name(name)
        if cursor is not None and not is_version_number(cursor):
            raise InvalidReferenceError(
                f"invalid version cursor {cursor!r}: pass the previous page's next_cursor "
                "(or None for the first page)"
            )
        return self.metadata.list_versions(tenant, name, cursor=cursor, limit=_page_size(limit))

    def get_adapter(self, tenant: str, name: str) -> AdapterInfo:
        """Raises AdapterNotFoundError."""
        validate_name(tenant, "tenant")
        return self.metadata.get_adapter(tenant, validate_name(name))

    # -- aliases and deletion -------------------------------------------------------------

    def set_alias(self, tenant: str, ref: str | AdapterRef, alias: str) -> AdapterVersion:
        """Point ``alias`` at the version ``ref`` resolves to now; return that version.

        Raises:
            InvalidNameError: the alias is not allowed (``latest`` is the store's).
            AdapterNotFoundError: ``ref`` does not resolve, or its version was deleted
                meanwhile.
        """
        validate_alias(alias)
        version = self.resolve(tenant, ref)
        self.metadata.set_alias(version, alias)
        return version

    def remove_alias(self, tenant: str, name: str, alias: str) -> None:
        """Raises AdapterNotFoundError if the alias does not exist."""
        validate_name(tenant, "tenant")
        self.metadata.remove_alias(tenant, validate_name(name), validate_alias(alias))

    def delete(self, tenant: str, ref: str | AdapterRef) -> int:
        """Soft-delete the adapter ``name`` (every version) or the version ``name@N``
        (and the aliases pointing at it); return how many versions were deleted.

        Raises:
            InvalidReferenceError: ``ref`` names an alias (delete ``name@N``, or remove
                the alias with :meth:`remove_alias`).
            AdapterNotFoundError: no such live adapter or version.
        """
        validate_name(tenant, "tenant")
        ref = ref if isinstance(ref, AdapterRef) else AdapterRef.parse(ref)
        if ref.alias is not None:
            raise InvalidReferenceError(
                f"delete takes 'name' or 'name@VERSION', not an alias ({ref}): to delete "
                f"the version it points at, resolve it first; to drop the alias, remove it"
            )
        return self.metadata.delete(tenant, ref.name, ref.version, now=self._clock())

    def gc(self, *, grace_s: float = 3600.0) -> GcReport:
        """Remove blobs no live version references, and metadata of versions deleted
        more than ``grace_s`` ago.

        A blob a push announced less than ``grace_s`` ago is spared. A push slower than
        ``grace_s`` may lose its blobs to gc; its publish then notices and uploads them
        again (once), so no version is ever published on a deleted blob. A push that
        needs a blob while gc deletes it waits, then uploads it again.

        Raises:
            BackendUnavailableError: Redis or the blob store did not answer; a pass that
                stops half-way is safe to run again.
        """
        now = self._clock()
        cutoff = now - grace_s
        purged = self.metadata.purge_deleted_versions(before=cutoff)
        deleted = freed = kept = 0
        for key in self.blobs.list(BLOB_PREFIX):
            digest = key.rsplit("/", 1)[-1]
            outcome = self.metadata.claim_blob_for_gc(digest, announced_before=cutoff, now=now)
            if outcome == "recent":
                kept += 1
            elif outcome == "claimed":
                try:
                    freed += self.blobs.head(key) or 0
                    self.blobs.delete(key)
                    deleted += 1
                finally:
                    self.metadata.release_gc_claims([digest], announced_before=cutoff)
        self.metadata.release_gc_claims([], announced_before=cutoff)
        report = GcReport(deleted, freed, kept, purged)
        _log.info("gc: %s", report)
        return report

    # -- tenants, keys, quotas ------------------------------------------------------------

    def create_tenant(
        self, name: str, *, max_adapters: int | None = None, max_bytes: int | None = None
    ) -> tuple[Tenant, str]:
        """Create a tenant and its first API key (shown once; only its hash is stored).

        Raises:
            InvalidNameError: the name breaks the naming rules.
            ConflictError: the tenant exists.
        """
        validate_name(name, "tenant")
        _check_quota_values(max_adapters, max_bytes)
        tenant = self.metadata.create_tenant(
            name, now=self._clock(), max_adapters=max_adapters, max_bytes=max_bytes
        )
        return tenant, self.issue_key(name)

    def ensure_tenant(self, name: str) -> Tenant:
        """The tenant ``name``, created without quotas or keys if missing."""
        validate_name(name, "tenant")
        try:
            return self.metadata.create_tenant(
                name, now=self._clock(), max_adapters=None, max_bytes=None
            )
        except ConflictError:
            return self.metadata.get_tenant(name)

    def get_tenant(self, name: str) -> Tenant:
        """Raises TenantNotFoundError."""
        return self.metadata.get_tenant(validate_name(name, "tenant"))

    def list_tenants(self) -> list[str]:
        return self.metadata.list_tenants()

    def issue_key(self, tenant: str) -> str:
        """A new API key for ``tenant``. Raises TenantNotFoundError."""
        key = _API_KEY_PREFIX + secrets.token_urlsafe(32)
        self.metadata.add_key(validate_name(tenant, "tenant"), _hash_key(key))
        return key

    def add_key(self, tenant: str, api_key: str) -> None:
        """Accept an API key the operator chose (``loramux up --dev-key``) for ``tenant``.

        Idempotent; a key that belonged to another tenant now belongs to ``tenant``.

        Raises:
            AuthenticationError: the key does not start with ``lmx_``.
            TenantNotFoundError: no such tenant.
        """
        self.metadata.add_key(validate_name(tenant, "tenant"), _hash_key(api_key))

    def revoke_key(self, api_key: str) -> str:
        """Revoke an API key at once; return its tenant. Raises AuthenticationError."""
        return self.metadata.revoke_key(_hash_key(api_key))

    def tenant_for_key(self, api_key: str) -> str:
        """The tenant an API key belongs to, in one Redis round trip.

        Raises:
            AuthenticationError: the key is unknown or revoked.
        """
        tenant = self.metadata.tenant_for_key(_hash_key(api_key))
        if tenant is None:
            raise AuthenticationError(
                "unknown or revoked API key: ask the operator for a key (loramux tenant key TENANT)"
            )
        return tenant

    def set_quota(
        self, tenant: str, *, max_adapters: int | None = None, max_bytes: int | None = None
    ) -> None:
        """Set both quotas (``None``: unlimited). Lowering a quota below what the tenant
        holds refuses further pushes but deletes nothing.

        Raises:
            TenantNotFoundError; ValueError for a negative quota.
        """
        _check_quota_values(max_adapters, max_bytes)
        self.metadata.set_quota(
            validate_name(tenant, "tenant"), max_adapters=max_adapters, max_bytes=max_bytes
        )

    def get_usage(self, tenant: str) -> TenantUsage:
        """Raises TenantNotFoundError."""
        return self.metadata.get_usage(validate_name(tenant, "tenant"))

    def set_limits(self, tenant: str, limits: TenantLimits) -> None:
        """Replace the tenant's request limits (``None`` fields: the service default).
        Raises TenantNotFoundError."""
        self.metadata.set_limits(validate_name(tenant, "tenant"), limits)

    def get_limits(self, tenant: str) -> TenantLimits:
        """The tenant's own request limits. Raises TenantNotFoundError."""
        return self.metadata.get_limits(validate_name(tenant, "tenant"))


def _files_of(version: AdapterVersion) -> dict[str, str]:
    return {CONFIG_NAME: version.config_digest, WEIGHTS_NAME: version.digest}


def _hash_key(api_key: str) -> str:
    if not isinstance(api_key, str) or not api_key.startswith(_API_KEY_PREFIX):
        raise AuthenticationError(f"malformed API key: loramux keys start with {_API_KEY_PREFIX!r}")
    return hashlib.sha256(api_key.encode()).hexdigest()


def _page_size(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"page limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    return limit


def _check_quota_values(max_adapters: int | None, max_bytes: int | None) -> None:
    for label, value in (("max_adapters", max_adapters), ("max_bytes", max_bytes)):
        if value is not None and (isinstance(value, bool) or value < 0):
            raise ValueError(f"{label} must be None (unlimited) or >= 0, got {value!r}")
