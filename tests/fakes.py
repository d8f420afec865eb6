"""Test doubles: an in-memory MetadataStore for the functional tier, and a blob store
that acts in the middle of a push.

The in-memory MetadataStore is for the functional tier: the AdapterStore facade, the API
and the CLI run over it without a redis-server.

It lives with the tests, not in the package: nothing in production should run on it,
and both the functional tier (tests/functional) and the contract test that keeps it
honest (tests/integration/adapter_store/test_metadata_contract.py, which runs the same
checks on it and on Redis) import it from here. Inject it like any metadata store::

    AdapterStore(InMemoryMetadataStore(), LocalBlobStore(tmp_path / "blobs"))

Semantics follow :class:`RedisMetadataStore` (docs/redis-layout.md): version numbers are
never reused, deletes are soft until purged, quotas charge every live version its full
size, API keys are stored by hash only, listings page by name and by version number,
and it raises the same errors (the builders in ``adapter_store._metadata_store``). One
lock makes each call atomic. It has no push tokens: it never retries, so a publish
cannot run twice.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from functools import wraps
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar
from typing import cast

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from scheduler import AdapterDemand
    from scheduler import EvictionPolicy
    from scheduler import ReplicaView
    from services.client import ReplicaStats
    from services.engine import GenerationChunk
    from services.engine import GenerationRequest

from adapter_store import LATEST
from adapter_store import AdapterVersion
from adapter_store import Payload
from adapter_store import Publication
from adapter_store import is_version_number
from adapter_store._blobs import BlobStore
from adapter_store._metadata_store import GC_CLAIM_TTL_S
from adapter_store._metadata_store import GcClaim
from adapter_store._metadata_store import adapter_bytes_exceeded
from adapter_store._metadata_store import adapter_count_exceeded
from adapter_store._metadata_store import adapter_not_found
from adapter_store._metadata_store import blob_collected
from adapter_store._metadata_store import no_such_tenant
from adapter_store._metadata_store import tenant_exists
from adapter_store._metadata_store import tenant_not_found
from adapter_store._metadata_store import unknown_key
from adapter_store._rate_limits import Admission
from adapter_store._rate_limits import Buckets
from adapter_store._rate_limits import Lease
from adapter_store._rate_limits import TenantLimits
from adapter_store._rate_limits import admit
from adapter_store._records import AdapterInfo
from adapter_store._records import Page
from adapter_store._records import Tenant
from adapter_store._records import TenantUsage
from adapter_store._records import VersionInfo

F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """Run ``method`` under the store's lock, so each call is atomic as a Lua script is."""

    @wraps(method)
    def run(self: InMemoryMetadataStore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return cast(F, run)


@dataclass
class _TenantRow:
    tenant: Tenant
    adapters: int = 0
    bytes: int = 0
    key_hashes: set[str] = field(default_factory=set)
    limits: TenantLimits = field(default_factory=TenantLimits)


@dataclass
class _VersionRow:
    version: AdapterVersion
    request_count: int = 0
    last_used_at: float | None = None
    deleted_at: float | None = None


@dataclass
class _AdapterRow:
    last_number: int = 0
    created_at: float = 0.0
    live: set[int] = field(default_factory=set)
    aliases: dict[str, int] = field(default_factory=dict)


_VersionId = tuple[str, str, int]


class HookedBlobs:
    """A blob store that runs ``after_put`` after every write, to act in the middle of
    a push (fail it, kill Redis, run gc)."""

    def __init__(self, inner: BlobStore, after_put: Callable[[], None]) -> None:
        self._inner = inner
        self._after_put = after_put

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put_bytes(self, key: str, data: Payload) -> None:
        self._inner.put_bytes(key, data)
        self._after_put()


class InMemoryMetadataStore:
    """A :class:`~adapter_store.MetadataStore` in process memory; see the module doc."""

    url = "memory://"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._manifests: dict[str, str] = {}
        self._tenants: dict[str, _TenantRow] = {}
        self._keys: dict[str, str] = {}
        self._adapters: dict[tuple[str, str], _AdapterRow] = {}
        self._versions: dict[_VersionId, _VersionRow] = {}
        self._dead: dict[_VersionId, float] = {}
        self._refs: dict[str, int] = {}
        self._intents: dict[str, float] = {}
        self._gc_claims: dict[str, float] = {}
        self._generations: dict[str, int] = {}
        self._buckets: dict[str, Buckets] = {}
        self._leases: dict[str, dict[str, float]] = {}

    def close(self) -> None:
        """Nothing to release; the data stays readable."""

    @_locked
    def state(self) -> dict[str, Any]:
        """A deep copy of everything held, for "a refused call changed nothing" checks."""
        return {k: copy.deepcopy(v) for k, v in vars(self).items() if k != "_lock"}

    # -- manifests -----------------------------------------------------------------------

    @_locked
    def put_manifest(self, base_model: str, manifest_json: str) -> None:
        self._manifests[base_model] = manifest_json

    @_locked
    def get_manifest(self, base_model: str) -> str | None:
        return self._manifests.get(base_model)

    # -- tenants and keys ----------------------------------------------------------------

    @_locked
    def create_tenant(
        self, name: str, *, now: float, max_adapters: int | None, max_bytes: int | None
    ) -> Tenant:
        if name in self._tenants:
            raise tenant_exists(f"create tenant {name!r}")
        tenant = Tenant(name, now, max_adapters, max_bytes)
        self._tenants[name] = _TenantRow(tenant)
        return tenant

    @_locked
    def get_tenant(self, name: str) -> Tenant:
        return self._tenant(name).tenant

    @_locked
    def list_tenants(self) -> list[str]:
        return sorted(self._tenants)

    @_locked
    def set_quota(self, name: str, *, max_adapters: int | None, max_bytes: int | None) -> None:
        if name not in self._tenants:
            raise no_such_tenant(f"set quota of tenant {name!r}")
        row = self._tenants[name]
        row.tenant = replace(row.tenant, max_adapters=max_adapters, max_bytes=max_bytes)

    @_locked
    def get_usage(self, name: str) -> TenantUsage:
        row = self._tenant(name)
        quota = row.tenant
        return TenantUsage(name, row.adapters, row.bytes, quota.max_adapters, quota.max_bytes)

    @_locked
    def add_key(self, tenant: str, key_hash: str) -> None:
        if tenant not in self._tenants:
            raise no_such_tenant(f"add API key to tenant {tenant!r}")
        old = self._keys.get(key_hash)
        if old is not None:
            self._tenants[old].key_hashes.discard(key_hash)
        self._keys[key_hash] = tenant
        self._tenants[tenant].key_hashes.add(key_hash)

    @_locked
    def revoke_key(self, key_hash: str) -> str:
        tenant = self._keys.pop(key_hash, None)
        if tenant is None:
            raise unknown_key("revoke API key")
        self._tenants[tenant].key_hashes.discard(key_hash)
        return tenant

    @_locked
    def tenant_for_key(self, key_hash: str) -> str | None:
        return self._keys.get(key_hash)

    # -- request limits ------------------------------------------------------------------

    @_locked
    def get_limits(self, name: str) -> TenantLimits:
        return self._tenant(name).limits

    @_locked
    def set_limits(self, name: str, limits: TenantLimits) -> None:
        if name not in self._tenants:
            raise no_such_tenant(f"set limits of tenant {name!r}")
        self._tenants[name].limits = limits

    @_locked
    def admit(self, lease: Lease, limits: TenantLimits, *, tokens: int, now: float) -> Admission:
        leases = {k: t for k, t in self._leases.get(lease.tenant, {}).items() if t >= now}
        self._leases[lease.tenant] = leases
        admission, buckets = admit(
            limits, self._buckets.get(lease.tenant), in_flight=len(leases), tokens=tokens, now=now
        )
        if admission.admitted:
            assert buckets is not None
            self._buckets[lease.tenant] = buckets
            leases[lease.id] = lease.expires_at
        return admission

    @_locked
    def release(self, tenant: str, lease: str) -> None:
        self._leases.get(tenant, {}).pop(lease, None)

    @_locked
    def renew_leases(
        self, leases: Mapping[str, Collection[str]], *, now: float, lease_ttl_s: float
    ) -> None:
        for tenant, ids in leases.items():
            held = self._leases.get(tenant, {})
            for lease in set(ids) & held.keys():
                held[lease] = now + lease_ttl_s

    # -- push ----------------------------------------------------------------------------

    @_locked
    def announce_blobs(
        self, digests: Iterable[str], *, now: float
    ) -> tuple[list[str], dict[str, int]]:
        digests = list(digests)
        for digest in digests:
            self._intents[digest] = now
        collecting = self.gc_claimed(digests, now=now)
        return collecting, {d: self._generations.get(d, 0) for d in digests}

    @_locked
    def check_publish(self, tenant: str, name: str, size_bytes: int) -> None:
        self._check_quotas(tenant, name, size_bytes)

    @_locked
    def publish(self, publication: Publication) -> AdapterVersion:
        p = publication
        row = self._check_quotas(p.tenant, p.name, p.size_bytes)
        blobs = (p.digest, p.config_digest)
        for blob, generation in zip(blobs, p.generations, strict=True):
            if self._generations.get(blob, 0) != generation:
                raise blob_collected(f"publish {p.tenant}/{p.name}", blob)
        adapter = self._adapters.setdefault((p.tenant, p.name), _AdapterRow())
        adapter.last_number += 1
        version = p.version(adapter.last_number)
        self._versions[(p.tenant, p.name, version.version)] = _VersionRow(version)
        if not adapter.live:
            adapter.created_at = p.created_at
            row.adapters += 1
        adapter.live.add(version.version)
        row.bytes += p.size_bytes
        for alias in (LATEST, *p.aliases):
            adapter.aliases[alias] = version.version
        for blob in blobs:
            self._refs[blob] = self._refs.get(blob, 0) + 1
        return version

    # -- resolve, aliases, delete, usage -------------------------------------------------

    @_locked
    def resolve(self, tenant: str, name: str, selector: str) -> AdapterVersion:
        adapter = self._adapters.get((tenant, name), _AdapterRow())
        by_number = is_version_number(selector)
        number = int(selector) if by_number else adapter.aliases.get(selector)
        if number in adapter.live:
            return self._versions[(tenant, name, number)].version
        if not adapter.live:
            raise adapter_not_found("adapter", tenant, name, selector)
        raise adapter_not_found("version" if by_number else "alias", tenant, name, selector)

    @_locked
    def set_alias(self, version: AdapterVersion, alias: str) -> None:
        adapter = self._adapters.get((version.tenant, version.name), _AdapterRow())
        if version.version not in adapter.live:
            raise adapter_not_found("version", version.tenant, version.name, str(version.version))
        adapter.aliases[alias] = version.version

    @_locked
    def remove_alias(self, tenant: str, name: str, alias: str) -> None:
        adapter = self._adapters.get((tenant, name), _AdapterRow())
        if adapter.aliases.pop(alias, None) is None:
            raise adapter_not_found("alias", tenant, name, alias)

    @_locked
    def delete(self, tenant: str, name: str, version: int | None, *, now: float) -> int:
        adapter = self._adapters.get((tenant, name), _AdapterRow())
        if version is None:
            if not adapter.live:
                raise adapter_not_found("adapter", tenant, name, "*")
            victims = sorted(adapter.live)
        else:
            if version not in adapter.live:
                raise adapter_not_found("version", tenant, name, str(version))
            victims = [version]
        row = self._tenants[tenant]
        for number in victims:
            self._delete_one(adapter, row, (tenant, name, number), now)
        if not adapter.live:
            row.adapters -= 1
        elif LATEST not in adapter.aliases:
            adapter.aliases[LATEST] = max(adapter.live)
        return len(victims)

    def _delete_one(
        self, adapter: _AdapterRow, row: _TenantRow, vid: _VersionId, now: float
    ) -> None:
        version = self._versions[vid]
        version.deleted_at = now
        adapter.live.discard(vid[2])
        self._dead[vid] = now
        for blob in (version.version.digest, version.version.config_digest):
            self._refs[blob] = self._refs.get(blob, 0) - 1
            if self._refs[blob] <= 0:
                del self._refs[blob]
        row.bytes -= version.version.size_bytes
        adapter.aliases = {a: n for a, n in adapter.aliases.items() if n != vid[2]}

    @_locked
    def record_usage(self, version: AdapterVersion, *, now: float) -> None:
        row = self._versions.get((version.tenant, version.name, version.version))
        if row is not None:  # purged: never recreated
            row.request_count += 1
            row.last_used_at = now

    # -- listing -------------------------------------------------------------------------

    @_locked
    def list_adapters(self, tenant: str, *, cursor: str | None, limit: int) -> Page[AdapterInfo]:
        names = sorted(
            name
            for (owner, name), adapter in self._adapters.items()
            if owner == tenant and adapter.live and (cursor is None or name > cursor)
        )
        page = names[:limit]
        return Page(
            tuple(self._info(tenant, name) for name in page),
            page[-1] if len(names) > limit else None,
        )

    @_locked
    def get_adapter(self, tenant: str, name: str) -> AdapterInfo:
        if not self._adapters.get((tenant, name), _AdapterRow()).live:
            raise adapter_not_found("adapter", tenant, name, LATEST)
        return self._info(tenant, name)

    @_locked
    def list_versions(
        self, tenant: str, name: str, *, cursor: str | None, limit: int
    ) -> Page[VersionInfo]:
        adapter = self._adapters.get((tenant, name), _AdapterRow())
        if not adapter.live:
            raise adapter_not_found("adapter", tenant, name, LATEST)
        numbers = sorted(n for n in adapter.live if cursor is None or n > int(cursor))
        page = numbers[:limit]
        items = []
        for number in page:
            row = self._versions[(tenant, name, number)]
            aliases = tuple(sorted(a for a, n in adapter.aliases.items() if n == number))
            items.append(VersionInfo(row.version, aliases, row.request_count, row.last_used_at))
        return Page(tuple(items), str(page[-1]) if len(numbers) > limit else None)

    def _info(self, tenant: str, name: str) -> AdapterInfo:
        adapter = self._adapters[(tenant, name)]
        rows = [self._versions[(tenant, name, n)] for n in sorted(adapter.live)]
        used = [row.last_used_at for row in rows if row.last_used_at is not None]
        return AdapterInfo(
            tenant=tenant,
            name=name,
            created_at=adapter.created_at,
            latest=self._versions[(tenant, name, adapter.aliases[LATEST])].version,
            versions=tuple(sorted(adapter.live)),
            aliases=dict(sorted(adapter.aliases.items())),
            request_count=sum(row.request_count for row in rows),
            last_used_at=max(used, default=None),
        )

    # -- garbage collection --------------------------------------------------------------

    @_locked
    def purge_deleted_versions(self, *, before: float) -> int:
        purged = [vid for vid, deleted_at in self._dead.items() if deleted_at <= before]
        for vid in purged:
            del self._dead[vid]
            del self._versions[vid]
        return len(purged)

    @_locked
    def claim_blob_for_gc(self, digest: str, *, announced_before: float, now: float) -> GcClaim:
        if self._refs.get(digest, 0) > 0:
            return "referenced"
        announced = self._intents.get(digest)
        if announced is not None and announced >= announced_before:
            return "recent"
        self._gc_claims[digest] = now
        self._intents.pop(digest, None)
        self._generations[digest] = self._generations.get(digest, 0) + 1
        return "claimed"

    @_locked
    def release_gc_claims(self, digests: Sequence[str], *, announced_before: float) -> None:
        for digest in digests:
            self._gc_claims.pop(digest, None)
        self._intents = {d: t for d, t in self._intents.items() if t >= announced_before}

    @_locked
    def gc_claimed(self, digests: Sequence[str], *, now: float) -> list[str]:
        cutoff = now - GC_CLAIM_TTL_S
        return [d for d in digests if self._gc_claims.get(d, cutoff - 1) >= cutoff]

    # -- plumbing ------------------------------------------------------------------------

    def _tenant(self, name: str) -> _TenantRow:
        row = self._tenants.get(name)
        if row is None:
            raise tenant_not_found(name)
        return row

    def _check_quotas(self, tenant: str, name: str, size_bytes: int) -> _TenantRow:
        """The publish checks, in the publish script's order; the tenant's row."""
        row = self._tenant(tenant)
        quota = row.tenant
        new_name = not self._adapters.get((tenant, name), _AdapterRow()).live
        if new_name and quota.max_adapters is not None and row.adapters + 1 > quota.max_adapters:
            raise adapter_count_exceeded(tenant, name, row.adapters, quota.max_adapters)
        if quota.max_bytes is not None and row.bytes + size_bytes > quota.max_bytes:
            raise adapter_bytes_exceeded(tenant, name, row.bytes, size_bytes, quota.max_bytes)
        return row


class ScriptedGateway:
    """Answers every request with ``script``: chunks, then possibly an exception; or,
    while ``attempts`` holds scripts, each call with the next of them (a replica that
    dies, then one that answers)."""

    def __init__(self) -> None:
        self.script: list[GenerationChunk | Exception] = []
        self.attempts: list[list[GenerationChunk | Exception]] = []
        self.requests: list[GenerationRequest] = []
        self.replicas: list[dict[str, Any]] = []
        self.stats_calls = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        script = self.attempts.pop(0) if self.attempts else self.script
        for item in script:
            if isinstance(item, Exception):
                raise item
            yield item

    async def replica_stats(self) -> list[ReplicaStats]:
        self.stats_calls += 1
        return self.replicas


class RecordingPolicy:
    """A placement policy that records every placement (``placed``: the demand and the
    replica); subclasses say how replicas rank. Evicts LRU."""

    name = "recording"

    def __init__(self) -> None:

        self.placed: list[tuple[AdapterDemand, ReplicaView]] = []

    def on_placed(self, adapter: AdapterDemand, replica: ReplicaView, now: float) -> None:
        self.placed.append((adapter, replica))

    def new_eviction_policy(self) -> EvictionPolicy:
        from scheduler import LRUEviction

        return LRUEviction()
