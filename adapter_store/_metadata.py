"""Adapter metadata in Redis: tenants, API keys, versions, aliases, quotas, usage.

Every multi-key change is one Lua script, so it is atomic and all-or-nothing: a script
checks everything first and only then writes (Redis does not roll back a script that
fails half-way). The key layout is documented in ``docs/redis-layout.md``.

Failure mode: each call is retried with :func:`call_with_retries` when Redis does not
answer (connection refused, reset, timeout) or cannot take writes for now (READONLY
after a failover, MASTERDOWN), then :class:`BackendUnavailableError`; any other error
reply (OOM, WRONGTYPE...) is a :class:`BackendUnavailableError` at once, naming the
operation. A retried publish is idempotent (a per-push token records the version it
made); other retried writes may report "not found" if the first try did reach Redis.

Blobs and gc: a push announces its blobs and learns each one's *generation* (how many
times gc has claimed it, ``P blobgen``); gc bumps the generation when it claims a blob
for deletion; publish refuses (:class:`BlobCollectedError`) when a generation moved, so
a version is never published on a blob gc deleted after the push announced it. A
per-digest counter, not the announcement itself, is checked because another push may
announce the same blob again in between.

This is the only module of the package that talks to Redis; ``redis`` is imported when a
store is built, so importing the package stays light.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from adapter_store._identity import LATEST, AdapterVersion, is_version_number
from adapter_store._records import AdapterInfo, Page, Tenant, TenantUsage, VersionInfo
from adapter_store._retry import call_with_retries
from adapter_store.exceptions import (
    AdapterNotFoundError,
    AuthenticationError,
    BackendUnavailableError,
    BlobCollectedError,
    ConflictError,
    QuotaExceededError,
    TenantNotFoundError,
)

if TYPE_CHECKING:
    import redis

__all__ = ["MetadataStore"]

T = TypeVar("T")

# How long a publish remembers its push token, so a retry after a lost reply returns the
# version the first try made instead of making a second one.
_PUSH_TOKEN_TTL_S = 600
# A gc claim older than this is treated as abandoned (the collector crashed mid-pass).
_GC_CLAIM_TTL_S = 300.0

# Checks the tenant and its quotas and, unless ARGV[10] == '1' (check only), checks that
# gc has not claimed either blob since the push announced it (generations ARGV[11], [12]
# against KEYS[7]), then allocates the next version and publishes it: version hash,
# live-version set, latest and user aliases (ARGV[13...]), tenant index, quota counters
# and blob reference counts, all at once.
_PUBLISH = """
local done = redis.call('GET', KEYS[6])
if done then return tonumber(done) end
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('LMX_NO_TENANT') end
local q = redis.call('HMGET', KEYS[1], 'ma', 'mb', 'na', 'nb')
local size = tonumber(ARGV[5])
local live = redis.call('ZCARD', KEYS[3])
local na = tonumber(q[3] or '0')
local nb = tonumber(q[4] or '0')
if live == 0 and q[1] and na + 1 > tonumber(q[1]) then
  return redis.error_reply('LMX_QUOTA_COUNT ' .. na .. ' ' .. q[1])
end
if q[2] and nb + size > tonumber(q[2]) then
  return redis.error_reply('LMX_QUOTA_BYTES ' .. nb .. ' ' .. size .. ' ' .. q[2])
end
if ARGV[10] == '1' then return 0 end
for i, digest in ipairs({ARGV[3], ARGV[4]}) do
  if tonumber(redis.call('HGET', KEYS[7], digest) or '0') ~= tonumber(ARGV[10 + i]) then
    return redis.error_reply('LMX_BLOB_COLLECTED ' .. digest)
  end
end
local ver = redis.call('HINCRBY', KEYS[2], 'n', 1)
redis.call('HSET', ARGV[1] .. ver, 'd', ARGV[3], 'c', ARGV[4], 's', ARGV[5], 'r', ARGV[6],
  'b', ARGV[7], 't', ARGV[8])
redis.call('ZADD', KEYS[3], ver, ver)
if live == 0 then
  redis.call('HSET', KEYS[2], 'c', ARGV[8])
  redis.call('HDEL', KEYS[2], 'x')
  redis.call('ZADD', KEYS[4], 0, ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'na', 1)
end
redis.call('HINCRBY', KEYS[1], 'nb', size)
redis.call('HSET', KEYS[2], '@latest', ver)
for i = 13, #ARGV do redis.call('HSET', KEYS[2], '@' .. ARGV[i], ver) end
redis.call('HINCRBY', KEYS[5], ARGV[3], 1)
redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
redis.call('SET', KEYS[6], ver, 'EX', ARGV[9])
return ver
"""

# Resolves an alias ('a') or a version ('v') to the version's fields in one call.
# Returns {'A'} (no such adapter), {'L'} (no such alias), {'V'} (no such live version)
# or {version, digest, config digest, size, rank, base model, created}.
_RESOLVE = """
local ver = ARGV[3]
if ARGV[2] == 'a' then
  ver = redis.call('HGET', KEYS[1], '@' .. ARGV[3])
end
local f = false
if ver then f = redis.call('HMGET', ARGV[1] .. ver, 'd', 'c', 's', 'r', 'b', 't', 'x') end
if f and f[1] and not f[7] then return {ver, f[1], f[2], f[3], f[4], f[5], f[6]} end
if redis.call('ZCARD', KEYS[2]) == 0 then return {'A'} end
if ARGV[2] == 'a' then return {'L'} end
return {'V'}
"""

# Soft-deletes one version (ARGV[3]) or every live version ('*'): marks the version hash
# deleted and queues it for purging, drops its aliases, moves 'latest' to the newest
# remaining version, and releases its quota charge and blob references.
_DELETE = """
local function delete_one(ver)
  local vkey = ARGV[1] .. ver
  local f = redis.call('HMGET', vkey, 'd', 'c', 's')
  redis.call('HSET', vkey, 'x', ARGV[4])
  redis.call('ZREM', KEYS[3], ver)
  redis.call('ZADD', KEYS[6], ARGV[4], vkey)
  for _, digest in ipairs({f[1], f[2]}) do
    if redis.call('HINCRBY', KEYS[5], digest, -1) <= 0 then redis.call('HDEL', KEYS[5], digest) end
  end
  redis.call('HINCRBY', KEYS[1], 'nb', -tonumber(f[3]))
  local h = redis.call('HGETALL', KEYS[2])
  for i = 1, #h, 2 do
    if string.sub(h[i], 1, 1) == '@' and h[i + 1] == ver then redis.call('HDEL', KEYS[2], h[i]) end
  end
end
local victims
if ARGV[3] == '*' then
  victims = redis.call('ZRANGE', KEYS[3], 0, -1)
  if #victims == 0 then return redis.error_reply('LMX_NO_ADAPTER') end
else
  if not redis.call('ZSCORE', KEYS[3], ARGV[3]) then return redis.error_reply('LMX_NO_VERSION') end
  victims = {ARGV[3]}
end
for _, ver in ipairs(victims) do delete_one(ver) end
local top = redis.call('ZREVRANGE', KEYS[3], 0, 0)
if #top == 0 then
  redis.call('HSET', KEYS[2], 'x', ARGV[4])
  redis.call('ZREM', KEYS[4], ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'na', -1)
elseif redis.call('HEXISTS', KEYS[2], '@latest') == 0 then
  redis.call('HSET', KEYS[2], '@latest', top[1])
end
return #victims
"""

# Points alias ARGV[2] at version ARGV[1] if that version is still live.
_SET_ALIAS = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return redis.error_reply('LMX_NO_VERSION') end
redis.call('HSET', KEYS[1], '@' .. ARGV[2], ARGV[1])
return 1
"""

# O(1) usage update; a no-op for a version hash that was purged, so it is never recreated.
_RECORD_USAGE = """
if redis.call('HEXISTS', KEYS[1], 'd') == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'u', 1)
redis.call('HSET', KEYS[1], 'l', ARGV[1])
return 1
"""

_CREATE_TENANT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('LMX_TENANT_EXISTS') end
redis.call('HSET', KEYS[2], 'c', ARGV[2], 'na', 0, 'nb', 0)
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], 'ma', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], 'mb', ARGV[4]) end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

_SET_QUOTA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('LMX_NO_TENANT') end
if ARGV[1] == '' then redis.call('HDEL', KEYS[1], 'ma') else redis.call('HSET', KEYS[1], 'ma', ARGV[1]) end
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], 'mb') else redis.call('HSET', KEYS[1], 'mb', ARGV[2]) end
return 1
"""

# Maps a key hash to a tenant; a key that belonged to another tenant leaves its key set.
_ADD_KEY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('LMX_NO_TENANT') end
local old = redis.call('GET', KEYS[2])
if old then redis.call('SREM', ARGV[3] .. old, ARGV[2]) end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

_REVOKE_KEY = """
local tenant = redis.call('GET', KEYS[1])
if not tenant then return redis.error_reply('LMX_NO_KEY') end
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[1] .. tenant, ARGV[2])
return tenant
"""

# A push announces the blobs it is about to use (so gc spares them) and learns which of
# them a gc pass is deleting right now (so it waits, then uploads them again) and each
# one's generation (which publish checks).
_ANNOUNCE_BLOBS = """
local collecting, generations = {}, {}
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
  local claimed = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if claimed and tonumber(claimed) >= tonumber(ARGV[2]) then
    table.insert(collecting, ARGV[i])
  end
  table.insert(generations, redis.call('HGET', KEYS[3], ARGV[i]) or '0')
end
return {collecting, generations}
"""

# gc claims an unreferenced blob for deletion unless a push announced it after ARGV[2];
# claiming bumps its generation, so a push that announced it earlier cannot publish it.
_CLAIM_BLOB = """
local refs = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if refs > 0 then return 'referenced' end
local announced = redis.call('ZSCORE', KEYS[2], ARGV[1])
if announced and tonumber(announced) >= tonumber(ARGV[2]) then return 'recent' end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
return 'claimed'
"""

_VERSION_FIELDS = ("d", "c", "s", "r", "b", "t")


class MetadataStore:
    """Redis-backed metadata of every tenant's adapters.

    Args:
        client: a ``redis.Redis`` built with ``decode_responses=True`` and no retries of
            its own (:meth:`from_url` builds one); retries happen here.
        key_prefix: prepended to every key, so several stores can share one Redis.
        attempts: tries per call before :class:`BackendUnavailableError`.
        sleep: the backoff sleep, injected so tests do not wait.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = "loramux:",
        attempts: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import redis as redis_lib

        if not client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("MetadataStore needs a redis client with decode_responses=True")
        self._redis = client
        self._p = key_prefix
        self._attempts = attempts
        self._sleep = sleep
        # Not answering, or not taking writes until a failover settles: worth retrying.
        self._retry_on: tuple[type[BaseException], ...] = (
            redis_lib.ConnectionError,
            redis_lib.TimeoutError,
            redis_lib.exceptions.ReadOnlyError,
            redis_lib.exceptions.MasterDownError,
        )
        self._response_error = redis_lib.ResponseError
        kwargs = client.get_connection_kwargs()
        self._where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        # Where workers in other processes find the embedded server; credentials are left
        # out, so a protected Redis must be configured with its own redis_url.
        self.url = f"redis://{self._where}/{kwargs.get('db', 0)}"
        script = client.register_script
        self._publish = script(_PUBLISH)
        self._resolve = script(_RESOLVE)
        self._delete = script(_DELETE)
        self._set_alias = script(_SET_ALIAS)
        self._record_usage = script(_RECORD_USAGE)
        self._create_tenant = script(_CREATE_TENANT)
        self._set_quota = script(_SET_QUOTA)
        self._add_key = script(_ADD_KEY)
        self._revoke_key = script(_REVOKE_KEY)
        self._announce_blobs = script(_ANNOUNCE_BLOBS)
        self._claim_blob = script(_CLAIM_BLOB)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "loramux:",
        attempts: int = 4,
        timeout_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> MetadataStore:
        """Connect to ``url`` (``redis://host:port/db``); nothing is sent until first use."""
        import redis as redis_lib
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis_lib.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, key_prefix=key_prefix, attempts=attempts, sleep=sleep)

    def close(self) -> None:
        self._redis.close()

    # -- plumbing ------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with retries; an error reply that is neither retried nor one of the
        scripts' ``LMX_*`` codes becomes :class:`BackendUnavailableError` at once."""
        where = f"Redis {self._where}: {what}"

        def attempt() -> T:
            try:
                return fn()
            except self._response_error as exc:
                if isinstance(exc, self._retry_on) or str(exc).startswith("LMX_"):
                    raise
                raise BackendUnavailableError(
                    f"{where}: {type(exc).__name__}: {exc}; check the Redis server (memory, "
                    "replication, keys written by something other than loramux)"
                ) from exc

        return call_with_retries(
            attempt,
            what=where,
            retry_on=self._retry_on,
            attempts=self._attempts,
            sleep=self._sleep,
        )

    def _pipeline(self, what: str, build: Callable[[Any], None]) -> list[Any]:
        """Run the commands ``build`` queues on a fresh pipeline, in one round trip."""

        def run() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            build(pipe)
            return pipe.execute()

        return self._call(what, run)

    def _script(self, what: str, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a Lua script, turning its ``LMX_*`` error replies into typed errors."""
        try:
            return self._call(what, lambda: script(keys=list(keys), args=list(args)))
        except self._response_error as exc:
            raise _script_error(str(exc), what) from exc

    def _adapter_keys(self, tenant: str, name: str) -> tuple[str, str, str]:
        """(adapter hash, live-version zset, version hash key without the version)."""
        path = f"{tenant}/{name}"
        return f"{self._p}a:{path}", f"{self._p}vs:{path}", f"{self._p}v:{path}@"

    def _version_key(self, version: AdapterVersion) -> str:
        return f"{self._p}v:{version.tenant}/{version.name}@{version.version}"

    # -- manifests -----------------------------------------------------------------------

    def put_manifest(self, base_model: str, manifest_json: str) -> None:
        key = f"{self._p}m:{base_model}"
        self._call(f"SET {key}", lambda: self._redis.set(key, manifest_json))

    def get_manifest(self, base_model: str) -> str | None:
        key = f"{self._p}m:{base_model}"
        return self._call(f"GET {key}", lambda: self._redis.get(key))

    # -- tenants and keys ----------------------------------------------------------------

    def create_tenant(
        self, name: str, *, now: float, max_adapters: int | None, max_bytes: int | None
    ) -> Tenant:
        """Raises ConflictError if the tenant exists."""
        self._script(
            f"create tenant {name!r}",
            self._create_tenant,
            [f"{self._p}tenants", f"{self._p}t:{name}"],
            [name, repr(now), _opt(max_adapters), _opt(max_bytes)],
        )
        return Tenant(name, now, max_adapters, max_bytes)

    def get_tenant(self, name: str) -> Tenant:
        """Raises TenantNotFoundError."""
        key = f"{self._p}t:{name}"
        c, ma, mb = self._call(f"HMGET {key}", lambda: self._redis.hmget(key, "c", "ma", "mb"))
        if c is None:
            raise _no_tenant(name)
        return Tenant(name, float(c), _int_or_none(ma), _int_or_none(mb))

    def list_tenants(self) -> list[str]:
        key = f"{self._p}tenants"
        return sorted(self._call(f"SMEMBERS {key}", lambda: self._redis.smembers(key)))

    def set_quota(self, name: str, *, max_adapters: int | None, max_bytes: int | None) -> None:
        """Set both quotas (``None``: unlimited). Raises TenantNotFoundError."""
        self._script(
            f"set quota of tenant {name!r}",
            self._set_quota,
            [f"{self._p}t:{name}"],
            [_opt(max_adapters), _opt(max_bytes)],
        )

    def get_usage(self, name: str) -> TenantUsage:
        """Raises TenantNotFoundError."""
        key = f"{self._p}t:{name}"
        c, ma, mb, na, nb = self._call(
            f"HMGET {key}", lambda: self._redis.hmget(key, "c", "ma", "mb", "na", "nb")
        )
        if c is None:
            raise _no_tenant(name)
        return TenantUsage(name, int(na), int(nb), _int_or_none(ma), _int_or_none(mb))

    def add_key(self, tenant: str, key_hash: str) -> None:
        """Map a hashed API key to ``tenant``. Raises TenantNotFoundError."""
        self._script(
            f"add API key to tenant {tenant!r}",
            self._add_key,
            [f"{self._p}t:{tenant}", f"{self._p}key:{key_hash}", f"{self._p}tk:{tenant}"],
            [tenant, key_hash, f"{self._p}tk:"],
        )

    def revoke_key(self, key_hash: str) -> str:
        """Forget a hashed API key; return its tenant. Raises AuthenticationError."""
        return self._script(
            "revoke API key",
            self._revoke_key,
            [f"{self._p}key:{key_hash}"],
            [f"{self._p}tk:", key_hash],
        )

    def tenant_for_key(self, key_hash: str) -> str | None:
        """The tenant of a hashed API key, ``None`` if unknown; one GET."""
        key = f"{self._p}key:{key_hash}"
        return self._call("GET API key", lambda: self._redis.get(key))

    # -- push ----------------------------------------------------------------------------

    def announce_blobs(
        self, digests: Iterable[str], *, now: float
    ) -> tuple[list[str], dict[str, int]]:
        """Record that a push is about to use these blobs; return those gc is deleting,
        and every blob's generation, to pass to :meth:`publish`."""
        digests = list(digests)
        collecting, generations = self._script(
            "announce blobs",
            self._announce_blobs,
            [f"{self._p}intents", f"{self._p}gc", f"{self._p}blobgen"],
            [repr(now), repr(now - _GC_CLAIM_TTL_S), *digests],
        )
        return collecting, {d: int(g) for d, g in zip(digests, generations, strict=True)}

    def check_publish(self, tenant: str, name: str, size_bytes: int) -> None:
        """Run the publish checks without publishing: tenant exists, quotas allow it.

        Raises:
            TenantNotFoundError, QuotaExceededError.
        """
        self._run_publish(tenant, name, size_bytes, ("", "", 0, "", 0.0), (), "", check_only=True)

    def publish(
        self,
        tenant: str,
        name: str,
        *,
        digest: str,
        config_digest: str,
        size_bytes: int,
        rank: int,
        base_model: str,
        now: float,
        generations: tuple[int, int],
        aliases: Sequence[str] = (),
    ) -> AdapterVersion:
        """Atomically allocate the next version and make it visible; move ``latest`` and
        ``aliases`` to it. ``generations`` are those :meth:`announce_blobs` returned for
        ``digest`` and ``config_digest``.

        Raises:
            TenantNotFoundError, QuotaExceededError: nothing was written.
            BlobCollectedError: gc claimed a blob since it was announced; nothing was
                written; announce and upload it again.
        """
        token = uuid.uuid4().hex
        number = self._run_publish(
            tenant,
            name,
            size_bytes,
            (digest, config_digest, rank, base_model, now),
            aliases,
            token,
            check_only=False,
            generations=generations,
        )
        return AdapterVersion(
            tenant, name, number, digest, config_digest, size_bytes, rank, base_model, now
        )

    def _run_publish(
        self,
        tenant: str,
        name: str,
        size_bytes: int,
        fields: tuple[str, str, int, str, float],
        aliases: Sequence[str],
        token: str,
        *,
        check_only: bool,
        generations: tuple[int, int] = (0, 0),
    ) -> int:
        keys, args = self._publish_call(
            tenant,
            name,
            size_bytes,
            fields,
            aliases,
            token,
            check_only=check_only,
            generations=generations,
        )
        try:
            return int(self._script(f"publish {tenant}/{name}", self._publish, keys, args))
        except _QuotaError as exc:
            raise exc.for_tenant(tenant, name) from None
        except TenantNotFoundError:
            raise _no_tenant(tenant) from None

    def _publish_call(
        self,
        tenant: str,
        name: str,
        size_bytes: int,
        fields: tuple[str, str, int, str, float],
        aliases: Sequence[str],
        token: str,
        *,
        check_only: bool,
        generations: tuple[int, int] = (0, 0),
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the publish script (the benchmark pipelines them).

        ``generations`` of (0, 0) say the blobs were never collected (check-only calls
        and the benchmark, which publishes without uploading)."""
        a_key, vs_key, v_base = self._adapter_keys(tenant, name)
        digest, config_digest, rank, base_model, now = fields
        keys = [
            f"{self._p}t:{tenant}",
            a_key,
            vs_key,
            f"{self._p}ix:{tenant}",
            f"{self._p}refs",
            f"{self._p}push:{token}",
            f"{self._p}blobgen",
        ]
        args = [
            v_base,
            name,
            digest,
            config_digest,
            size_bytes,
            rank,
            base_model,
            repr(now),
            _PUSH_TOKEN_TTL_S,
            "1" if check_only else "0",
            *generations,
            *aliases,
        ]
        return keys, args

    # -- resolve, aliases, delete, usage -------------------------------------------------

    def resolve(self, tenant: str, name: str, selector: str) -> AdapterVersion:
        """Resolve ``selector`` (a version number or an alias) in one round trip.

        Raises:
            AdapterNotFoundError: naming what is missing: the adapter, alias or version.
        """
        a_key, vs_key, v_base = self._adapter_keys(tenant, name)
        kind = "v" if is_version_number(selector) else "a"
        reply = self._script(
            f"resolve {tenant}/{name}", self._resolve, [a_key, vs_key], [v_base, kind, selector]
        )
        if len(reply) == 1:
            raise _not_found(reply[0], tenant, name, selector)
        return _version(tenant, name, reply[0], reply[1:])

    def set_alias(self, version: AdapterVersion, alias: str) -> None:
        """Point ``alias`` at ``version``. Raises AdapterNotFoundError if it was deleted."""
        a_key, vs_key, _ = self._adapter_keys(version.tenant, version.name)
        try:
            self._script(
                f"set alias {alias!r} of {version.key}",
                self._set_alias,
                [a_key, vs_key],
                [version.version, alias],
            )
        except AdapterNotFoundError:
            raise _not_found("V", version.tenant, version.name, str(version.version)) from None

    def remove_alias(self, tenant: str, name: str, alias: str) -> None:
        """Raises AdapterNotFoundError if the alias does not exist."""
        a_key, _, _ = self._adapter_keys(tenant, name)
        if not self._call(f"HDEL {a_key}", lambda: self._redis.hdel(a_key, f"@{alias}")):
            raise _not_found("L", tenant, name, alias)

    def delete(self, tenant: str, name: str, version: int | None, *, now: float) -> int:
        """Soft-delete one version, or every live version when ``version`` is None.

        Returns the number of versions deleted.

        Raises:
            AdapterNotFoundError: no such live adapter or version.
        """
        a_key, vs_key, v_base = self._adapter_keys(tenant, name)
        keys = [
            f"{self._p}t:{tenant}",
            a_key,
            vs_key,
            f"{self._p}ix:{tenant}",
            f"{self._p}refs",
            f"{self._p}dead",
        ]
        selector = "*" if version is None else str(version)
        try:
            return int(
                self._script(
                    f"delete {tenant}/{name}",
                    self._delete,
                    keys,
                    [v_base, name, selector, repr(now)],
                )
            )
        except AdapterNotFoundError as exc:
            code = "A" if version is None else "V"
            raise _not_found(code, tenant, name, selector) from exc

    def record_usage(self, version: AdapterVersion, *, now: float) -> None:
        """Count one request and set last-used: O(1), one round trip, no read back."""
        self._script(
            f"record usage of {version.key}",
            self._record_usage,
            [self._version_key(version)],
            [repr(now)],
        )

    # -- listing -------------------------------------------------------------------------

    def list_adapters(self, tenant: str, *, cursor: str | None, limit: int) -> Page[AdapterInfo]:
        """Live adapters of ``tenant`` ordered by name; the cursor is the last name seen."""
        ix = f"{self._p}ix:{tenant}"
        start = f"({cursor}" if cursor else "-"
        names = self._call(
            f"ZRANGEBYLEX {ix}", lambda: self._redis.zrangebylex(ix, start, "+", 0, limit + 1)
        )
        more = len(names) > limit
        names = names[:limit]
        infos = self._load_adapters(tenant, names)
        return Page(tuple(infos), names[-1] if more else None)

    def get_adapter(self, tenant: str, name: str) -> AdapterInfo:
        """Raises AdapterNotFoundError."""
        infos = self._load_adapters(tenant, [name])
        if not infos:
            raise _not_found("A", tenant, name, LATEST)
        return infos[0]

    def _load_adapters(self, tenant: str, names: Sequence[str]) -> list[AdapterInfo]:
        """Adapter records for ``names`` in two round trips; names not live are skipped."""

        def heads(pipe: Any) -> None:
            for name in names:
                a_key, vs_key, _ = self._adapter_keys(tenant, name)
                pipe.hgetall(a_key)
                pipe.zrange(vs_key, 0, -1)

        replies = self._pipeline(f"load adapters of {tenant}", heads)
        found = [
            (name, head, [int(v) for v in versions])
            for name, head, versions in zip(names, replies[::2], replies[1::2], strict=True)
            if versions and "@latest" in head
        ]

        def bodies(pipe: Any) -> None:
            for name, head, versions in found:
                _, _, v_base = self._adapter_keys(tenant, name)
                pipe.hmget(f"{v_base}{head['@latest']}", *_VERSION_FIELDS)
                for number in versions:
                    pipe.hmget(f"{v_base}{number}", "u", "l")

        replies = iter(self._pipeline(f"load adapter versions of {tenant}", bodies))
        infos = []
        for name, head, versions in found:
            latest = _version(tenant, name, head["@latest"], next(replies))
            usage = [next(replies) for _ in versions]
            used = [float(last) for _, last in usage if last is not None]
            infos.append(
                AdapterInfo(
                    tenant=tenant,
                    name=name,
                    created_at=float(head["c"]),
                    latest=latest,
                    versions=tuple(versions),
                    aliases=_aliases(head),
                    request_count=sum(int(count or 0) for count, _ in usage),
                    last_used_at=max(used, default=None),
                )
            )
        return infos

    def list_versions(
        self, tenant: str, name: str, *, cursor: str | None, limit: int
    ) -> Page[VersionInfo]:
        """Live versions of one adapter, oldest first; the cursor is the last version seen.

        Raises:
            AdapterNotFoundError: the adapter has no live version.
        """
        a_key, vs_key, v_base = self._adapter_keys(tenant, name)
        start = f"({int(cursor)}" if cursor else "-inf"

        def head(pipe: Any) -> None:
            pipe.hgetall(a_key)
            pipe.zrangebyscore(vs_key, start, "+inf", start=0, num=limit + 1)
            pipe.zcard(vs_key)

        fields, numbers, live = self._pipeline(f"list versions of {tenant}/{name}", head)
        if not live:
            raise _not_found("A", tenant, name, LATEST)
        more = len(numbers) > limit
        numbers = numbers[:limit]

        def bodies(pipe: Any) -> None:
            for number in numbers:
                pipe.hmget(f"{v_base}{number}", *_VERSION_FIELDS, "u", "l")

        rows = self._pipeline(f"load versions of {tenant}/{name}", bodies)
        by_version: dict[int, list[str]] = {}
        for alias, number in _aliases(fields).items():
            by_version.setdefault(number, []).append(alias)
        items = tuple(
            VersionInfo(
                version=_version(tenant, name, number, row[:6]),
                aliases=tuple(sorted(by_version.get(int(number), ()))),
                request_count=int(row[6] or 0),
                last_used_at=_float_or_none(row[7]),
            )
            for number, row in zip(numbers, rows, strict=True)
        )
        return Page(items, numbers[-1] if more else None)

    # -- garbage collection --------------------------------------------------------------

    def purge_deleted_versions(self, *, before: float) -> int:
        """Drop the hashes of versions soft-deleted before ``before``; return how many."""
        dead = f"{self._p}dead"
        keys = self._call(
            f"ZRANGEBYSCORE {dead}", lambda: self._redis.zrangebyscore(dead, "-inf", repr(before))
        )
        if keys:

            def purge(pipe: Any) -> None:
                pipe.delete(*keys)
                pipe.zrem(dead, *keys)

            self._pipeline("purge deleted versions", purge)
        return len(keys)

    def claim_blob_for_gc(
        self, digest: str, *, announced_before: float, now: float
    ) -> Literal["claimed", "referenced", "recent"]:
        """Claim a blob for deletion if no live version references it and no push
        announced it at or after ``announced_before``; say which case it was."""
        return self._script(
            f"claim blob {digest} for gc",
            self._claim_blob,
            [f"{self._p}refs", f"{self._p}intents", f"{self._p}gc", f"{self._p}blobgen"],
            [digest, repr(announced_before), repr(now)],
        )

    def release_gc_claims(self, digests: Sequence[str], *, announced_before: float) -> None:
        """Drop gc claims once their blobs are deleted, and push announcements gone stale."""
        gc, intents = f"{self._p}gc", f"{self._p}intents"

        def build(pipe: Any) -> None:
            if digests:
                pipe.zrem(gc, *digests)
            pipe.zremrangebyscore(intents, "-inf", f"({announced_before!r}")

        self._pipeline("release gc claims", build)

    def gc_claimed(self, digests: Sequence[str], *, now: float) -> list[str]:
        """Those of ``digests`` that a live (not abandoned) gc claim holds."""
        gc = f"{self._p}gc"
        scores = self._call(f"ZMSCORE {gc}", lambda: self._redis.zmscore(gc, list(digests)))
        cutoff = now - _GC_CLAIM_TTL_S
        return [d for d, s in zip(digests, scores, strict=True) if s is not None and s >= cutoff]


# -- reply decoding and error mapping ---------------------------------------------------


class _QuotaError(Exception):
    """A quota reply from the publish script, before the tenant name is attached."""

    def __init__(self, kind: str, numbers: list[int]) -> None:
        super().__init__(kind)
        self.kind = kind
        self.numbers = numbers

    def for_tenant(self, tenant: str, name: str) -> QuotaExceededError:
        if self.kind == "LMX_QUOTA_COUNT":
            held, limit = self.numbers
            return QuotaExceededError(
                f"tenant {tenant!r} holds {held} adapters, its quota is {limit}: pushing the "
                f"new adapter {name!r} would exceed it; delete an adapter or raise the quota "
                "(loramux tenant quota)"
            )
        held, size, limit = self.numbers
        return QuotaExceededError(
            f"tenant {tenant!r} holds {held} bytes, its quota is {limit}: pushing "
            f"{size} more bytes for {name!r} would exceed it; delete versions or raise the "
            "quota (loramux tenant quota)"
        )


def _script_error(message: str, what: str) -> Exception:
    code, _, rest = message.partition(" ")
    if code in ("LMX_QUOTA_COUNT", "LMX_QUOTA_BYTES"):
        return _QuotaError(code, [int(n) for n in rest.split()])
    if code == "LMX_NO_TENANT":
        return TenantNotFoundError(f"{what}: no such tenant")
    if code == "LMX_TENANT_EXISTS":
        return ConflictError(
            f"{what}: the tenant exists already; pick another name, or use the existing "
            "tenant (loramux tenant key TENANT issues it a key)"
        )
    if code == "LMX_NO_KEY":
        return AuthenticationError(
            f"{what}: unknown or already revoked API key; nothing to revoke (check that "
            "the key was copied whole)"
        )
    if code in ("LMX_NO_VERSION", "LMX_NO_ADAPTER"):
        return AdapterNotFoundError(
            f"{what}: no such live adapter or version (see them with: loramux ls)"
        )
    if code == "LMX_BLOB_COLLECTED":
        return BlobCollectedError(
            f"{what}: gc deleted blob {rest} while this push was uploading it; nothing was "
            "published; upload the blob again and retry"
        )
    return BackendUnavailableError(
        f"{what}: the Redis script answered an unknown error {message!r}; check that "
        "every loramux process runs the same version"
    )


def _no_tenant(name: str) -> TenantNotFoundError:
    return TenantNotFoundError(
        f"no tenant {name!r}: create it first (loramux tenant create {name})"
    )


def _not_found(code: str, tenant: str, name: str, selector: str) -> AdapterNotFoundError:
    if code == "A":
        return AdapterNotFoundError(
            f"tenant {tenant!r} has no adapter {name!r} (list adapters with: loramux ls)"
        )
    if code == "L":
        return AdapterNotFoundError(
            f"adapter {tenant}/{name} has no alias {selector!r} "
            f"(see its aliases with: loramux show {name})"
        )
    return AdapterNotFoundError(
        f"adapter {tenant}/{name} has no live version {selector} "
        f"(see its versions with: loramux show {name})"
    )


def _version(tenant: str, name: str, number: str | int, fields: Sequence[str]) -> AdapterVersion:
    digest, config_digest, size, rank, base_model, created = fields
    return AdapterVersion(
        tenant=tenant,
        name=name,
        version=int(number),
        digest=digest,
        config_digest=config_digest,
        size_bytes=int(size),
        rank=int(rank),
        base_model=base_model,
        created_at=float(created),
    )


def _aliases(adapter_fields: dict[str, str]) -> dict[str, int]:
    return {k[1:]: int(v) for k, v in sorted(adapter_fields.items()) if k.startswith("@")}


def _opt(value: int | None) -> str:
    return "" if value is None else str(int(value))


def _int_or_none(value: str | None) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: str | None) -> float | None:
    return None if value is None else float(value)
