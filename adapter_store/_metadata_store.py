"""The metadata seam: what the AdapterStore facade (and services) need from a metadata store.

:class:`RedisMetadataStore` is the implementation; the test suite's in-memory store
(``tests/fakes.py``) is the other, and one contract test runs the same checks against
both. The error builders below are part of the contract: every implementation raises
these exact errors, so a caller (and a test) sees the same message from either.
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Literal
from typing import Protocol
from typing import runtime_checkable

from adapter_store._identity import AdapterVersion
from adapter_store._identity import Publication
from adapter_store._rate_limits import Admission
from adapter_store._rate_limits import Lease
from adapter_store._rate_limits import TenantLimits
from adapter_store._records import AdapterInfo
from adapter_store._records import Page
from adapter_store._records import Tenant
from adapter_store._records import TenantUsage
from adapter_store._records import VersionInfo
from adapter_store.exceptions import AdapterNotFoundError
from adapter_store.exceptions import AuthenticationError
from adapter_store.exceptions import BlobCollectedError
from adapter_store.exceptions import ConflictError
from adapter_store.exceptions import QuotaExceededError
from adapter_store.exceptions import TenantNotFoundError

__all__ = ["MetadataStore"]

GcClaim = Literal["claimed", "referenced", "recent"]
# A gc claim older than this is treated as abandoned (the collector crashed mid-pass).
GC_CLAIM_TTL_S = 300.0
Missing = Literal["adapter", "alias", "version"]


@runtime_checkable
class MetadataStore(Protocol):
    """Tenants, hashed API keys, adapters, versions, aliases, quotas, request limits and
    their admission state, usage, manifests.

    Every method is atomic: a refused call (unknown tenant, quota, missing version)
    changes nothing. Names arrive validated (the facade checks them); times are Unix
    seconds passed in by the caller, so the store never reads a clock. Implementations
    raise :class:`BackendUnavailableError` when their backend does not answer.
    """

    url: str
    """Where other processes reach this metadata: a ``redis://`` URL (``memory://`` for
    a store no other process can reach)."""

    def close(self) -> None: ...

    # -- manifests --------------------------------------------------------------------
    def put_manifest(self, base_model: str, manifest_json: str) -> None: ...

    def get_manifest(self, base_model: str) -> str | None: ...

    # -- tenants and keys -------------------------------------------------------------
    def create_tenant(
        self, name: str, *, now: float, max_adapters: int | None, max_bytes: int | None
    ) -> Tenant:
        """Raises ConflictError if the tenant exists."""
        ...

    def get_tenant(self, name: str) -> Tenant:
        """Raises TenantNotFoundError."""
        ...

    def list_tenants(self) -> list[str]:
        """Every tenant name, sorted."""
        ...

    def set_quota(self, name: str, *, max_adapters: int | None, max_bytes: int | None) -> None:
        """Set both quotas (``None``: unlimited). Raises TenantNotFoundError."""
        ...

    def get_usage(self, name: str) -> TenantUsage:
        """Raises TenantNotFoundError."""
        ...

    def add_key(self, tenant: str, key_hash: str) -> None:
        """Map a hashed API key to ``tenant`` (taking it from another tenant if it had
        it). Raises TenantNotFoundError."""
        ...

    def revoke_key(self, key_hash: str) -> str:
        """Forget a hashed API key; return its tenant. Raises AuthenticationError."""
        ...

    def tenant_for_key(self, key_hash: str) -> str | None:
        """The tenant of a hashed API key, ``None`` if unknown."""
        ...

    # -- request limits ---------------------------------------------------------------
    def get_limits(self, name: str) -> TenantLimits:
        """The tenant's own limits (``None`` fields: the default applies).
        Raises TenantNotFoundError."""
        ...

    def set_limits(self, name: str, limits: TenantLimits) -> None:
        """Replace the tenant's own limits. Raises TenantNotFoundError."""
        ...

    def admit(self, lease: Lease, limits: TenantLimits, *, tokens: int, now: float) -> Admission:
        """Admit one request of ``lease.tenant`` costing ``tokens`` under ``limits`` (the
        policy of ``adapter_store._rate_limits.admit``, shared by every caller of this
        store) and hold ``lease`` until :meth:`release` or its expiry; or refuse it,
        charging nothing."""
        ...

    def release(self, tenant: str, lease: str) -> None:
        """End a lease; one that expired or was released already is a no-op."""
        ...

    def renew_leases(
        self, leases: Mapping[str, Collection[str]], *, now: float, lease_ttl_s: float
    ) -> None:
        """Extend live leases (tenant -> lease ids) to ``now + lease_ttl_s``; released or
        expired ones stay gone."""
        ...

    # -- push -------------------------------------------------------------------------
    def announce_blobs(
        self, digests: Iterable[str], *, now: float
    ) -> tuple[list[str], dict[str, int]]:
        """Record that a push is about to use these blobs; return those a live gc claim
        holds, and every blob's generation (times gc claimed it), for :meth:`publish`."""
        ...

    def check_publish(self, tenant: str, name: str, size_bytes: int) -> None:
        """The publish checks without publishing. Raises TenantNotFoundError,
        QuotaExceededError."""
        ...

    def publish(self, publication: Publication) -> AdapterVersion:
        """Allocate the next version number (never reused) and make it visible, with
        ``latest`` and the publication's ``aliases`` on it.

        Raises:
            TenantNotFoundError, QuotaExceededError: nothing was written.
            BlobCollectedError: gc claimed a blob since it was announced.
        """
        ...

    # -- resolve, aliases, delete, usage ----------------------------------------------
    def resolve(self, tenant: str, name: str, selector: str) -> AdapterVersion:
        """``selector`` is a version number or an alias. Raises AdapterNotFoundError."""
        ...

    def set_alias(self, version: AdapterVersion, alias: str) -> None:
        """Raises AdapterNotFoundError if the version is not live."""
        ...

    def remove_alias(self, tenant: str, name: str, alias: str) -> None:
        """Raises AdapterNotFoundError if the alias does not exist."""
        ...

    def delete(self, tenant: str, name: str, version: int | None, *, now: float) -> int:
        """Soft-delete one version, or every live one (``None``); return how many.
        Raises AdapterNotFoundError."""
        ...

    def record_usage(self, version: AdapterVersion, *, now: float) -> None:
        """Count one request; a no-op for a purged version."""
        ...

    # -- listing ----------------------------------------------------------------------
    def list_adapters(self, tenant: str, *, cursor: str | None, limit: int) -> Page[AdapterInfo]:
        """Live adapters by name; the cursor is the last name seen."""
        ...

    def get_adapter(self, tenant: str, name: str) -> AdapterInfo:
        """Raises AdapterNotFoundError."""
        ...

    def list_versions(
        self, tenant: str, name: str, *, cursor: str | None, limit: int
    ) -> Page[VersionInfo]:
        """Live versions, oldest first; the cursor is the last version seen.
        Raises AdapterNotFoundError."""
        ...

    # -- garbage collection -----------------------------------------------------------
    def purge_deleted_versions(self, *, before: float) -> int:
        """Forget versions soft-deleted before ``before``; return how many."""
        ...

    def claim_blob_for_gc(self, digest: str, *, announced_before: float, now: float) -> GcClaim:
        """Claim an unreferenced blob not announced at or after ``announced_before``."""
        ...

    def release_gc_claims(self, digests: Sequence[str], *, announced_before: float) -> None:
        """Drop these claims, and announcements older than ``announced_before``."""
        ...

    def gc_claimed(self, digests: Sequence[str], *, now: float) -> list[str]:
        """Those of ``digests`` a live (not abandoned) gc claim holds."""
        ...


# -- the errors every implementation raises ------------------------------------------------


def tenant_not_found(name: str) -> TenantNotFoundError:
    return TenantNotFoundError(
        f"no tenant {name!r}: create it first (loramux tenant create {name})"
    )


def no_such_tenant(what: str) -> TenantNotFoundError:
    """``what`` (an operation on a tenant) found no tenant."""
    return TenantNotFoundError(f"{what}: no such tenant")


def adapter_not_found(
    missing: Missing, tenant: str, name: str, selector: str
) -> AdapterNotFoundError:
    if missing == "adapter":
        return AdapterNotFoundError(
            f"tenant {tenant!r} has no adapter {name!r} (list adapters with: loramux ls)"
        )
    if missing == "alias":
        return AdapterNotFoundError(
            f"adapter {tenant}/{name} has no alias {selector!r} "
            f"(see its aliases with: loramux show {name})"
        )
    return AdapterNotFoundError(
        f"adapter {tenant}/{name} has no live version {selector} "
        f"(see its versions with: loramux show {name})"
    )


def adapter_count_exceeded(tenant: str, name: str, held: int, limit: int) -> QuotaExceededError:
    return QuotaExceededError(
        f"tenant {tenant!r} holds {held} adapters, its quota is {limit}: pushing the "
        f"new adapter {name!r} would exceed it; delete an adapter or raise the quota "
        "(loramux tenant quota)"
    )


def adapter_bytes_exceeded(
    tenant: str, name: str, held: int, size: int, limit: int
) -> QuotaExceededError:
    return QuotaExceededError(
        f"tenant {tenant!r} holds {held} bytes, its quota is {limit}: pushing "
        f"{size} more bytes for {name!r} would exceed it; delete versions or raise the "
        "quota (loramux tenant quota)"
    )


def tenant_exists(what: str) -> ConflictError:
    return ConflictError(
        f"{what}: the tenant exists already; pick another name, or use the existing "
        "tenant (loramux tenant key TENANT issues it a key)"
    )


def unknown_key(what: str) -> AuthenticationError:
    return AuthenticationError(
        f"{what}: unknown or already revoked API key; nothing to revoke (check that "
        "the key was copied whole)"
    )


def blob_collected(what: str, digest: str) -> BlobCollectedError:
    return BlobCollectedError(
        f"{what}: gc deleted blob {digest} while this push was uploading it; nothing was "
        "published; upload the blob again and retry"
    )
