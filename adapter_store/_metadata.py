"""Adapter metadata in Redis: tenants, API keys, versions, aliases, quotas, usage.

Every multi-key change is one Lua script, so it is atomic and all-or-nothing: a script
checks everything first and only then writes (Redis does not roll back a script that
fails half-way). Scripts name their keys and arguments (:class:`_Lua`). The key layout
is documented in ``docs/redis-layout.md``.

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

import json
import math
import time
import uuid
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

from adapter_store._identity import LATEST
from adapter_store._identity import AdapterVersion
from adapter_store._identity import Publication
from adapter_store._identity import is_version_number
from adapter_store._metadata_store import GC_CLAIM_TTL_S
from adapter_store._metadata_store import GcClaim
from adapter_store._metadata_store import Missing
from adapter_store._metadata_store import adapter_bytes_exceeded
from adapter_store._metadata_store import adapter_count_exceeded
from adapter_store._metadata_store import adapter_not_found
from adapter_store._metadata_store import blob_collected
from adapter_store._metadata_store import no_such_tenant
from adapter_store._metadata_store import tenant_exists
from adapter_store._metadata_store import tenant_not_found
from adapter_store._metadata_store import unknown_key
from adapter_store._rate_limits import IN_FLIGHT_RETRY_S
from adapter_store._rate_limits import Admission
from adapter_store._rate_limits import Lease
from adapter_store._rate_limits import TenantLimits
from adapter_store._records import AdapterInfo
from adapter_store._records import Page
from adapter_store._records import Tenant
from adapter_store._records import TenantUsage
from adapter_store._records import VersionInfo
from adapter_store._retry import call_with_retries
from adapter_store.exceptions import AdapterNotFoundError
from adapter_store.exceptions import BackendUnavailableError
from adapter_store.exceptions import QuotaExceededError
from adapter_store.exceptions import TenantNotFoundError

if TYPE_CHECKING:
    import redis

__all__ = ["RedisMetadataStore"]

T = TypeVar("T")

# How long a publish remembers its push token, so a retry after a lost reply returns the
# version the first try made instead of making a second one.
_PUSH_TOKEN_TTL_S = 600


@dataclass(frozen=True, slots=True)
class _Lua:
    """A Lua script that reads its keys and arguments by name, never by position.

    ``keys`` names the script's KEYS in order; a generated prelude binds each to a Lua
    local of that name (``local tenant_key = KEYS[1]``), so the body reads names and the
    order lives in this one tuple. Arguments travel as one JSON object in ARGV[1],
    decoded into the local table ``args`` (``args.size_bytes``): named on both sides,
    lists (aliases, digests) included. Callers pass both as mappings
    (:meth:`call_args`), so a misspelt or missing name fails before Redis is asked.
    Values are sent as the strings Redis stores (``repr`` of times), never as JSON
    numbers, which Lua would round to 14 digits.
    """

    keys: tuple[str, ...]
    body: str

    @property
    def source(self) -> str:
        prelude = [f"local {name} = KEYS[{i}]" for i, name in enumerate(self.keys, 1)]
        return "\n".join([*prelude, "local args = cjson.decode(ARGV[1])", self.body])

    def call_args(
        self, keys: Mapping[str, str], args: Mapping[str, Any]
    ) -> tuple[list[str], list[str]]:
        """KEYS and ARGV for one call; raises ValueError if ``keys`` names other keys."""
        if set(keys) != set(self.keys):
            raise ValueError(f"script keys {sorted(keys)} are not {sorted(self.keys)}")
        return [keys[name] for name in self.keys], [json.dumps(args)]


# Checks the tenant and its quotas and, unless check_only, checks that gc has not claimed
# either blob since the push announced it (their generations against blobgen), then
# allocates the next version and publishes it: version hash, live-version set, latest and
# user aliases, tenant index, quota counters and blob reference counts, all at once.
_PUBLISH = _Lua(
    keys=(
        "tenant_key",
        "adapter_key",
        "versions_key",
        "index_key",
        "refs_key",
        "token_key",
        "blobgen_key",
    ),
    body="""
local done = redis.call('GET', token_key)
if done then return tonumber(done) end
if redis.call('EXISTS', tenant_key) == 0 then return redis.error_reply('LMX_NO_TENANT') end
local q = redis.call('HMGET', tenant_key, 'ma', 'mb', 'na', 'nb')
local size = tonumber(args.size_bytes)
local live = redis.call('ZCARD', versions_key)
local na = tonumber(q[3] or '0')
local nb = tonumber(q[4] or '0')
if live == 0 and q[1] and na + 1 > tonumber(q[1]) then
  return redis.error_reply('LMX_QUOTA_COUNT ' .. na .. ' ' .. q[1])
end
if q[2] and nb + size > tonumber(q[2]) then
  return redis.error_reply('LMX_QUOTA_BYTES ' .. nb .. ' ' .. size .. ' ' .. q[2])
end
if args.check_only then return 0 end
local announced = {
  {args.digest, args.digest_generation},
  {args.config_digest, args.config_digest_generation},
}
for _, blob in ipairs(announced) do
  if tonumber(redis.call('HGET', blobgen_key, blob[1]) or '0') ~= tonumber(blob[2]) then
    return redis.error_reply('LMX_BLOB_COLLECTED ' .. blob[1])
  end
end
local ver = redis.call('HINCRBY', adapter_key, 'n', 1)
redis.call('HSET', args.version_prefix .. ver, 'd', args.digest, 'c', args.config_digest,
  's', args.size_bytes, 'r', args.rank, 'b', args.base_model, 't', args.created_at,
  'o', args.origin)
redis.call('ZADD', versions_key, ver, ver)
if live == 0 then
  redis.call('HSET', adapter_key, 'c', args.created_at)
  redis.call('HDEL', adapter_key, 'x')
  redis.call('ZADD', index_key, 0, args.name)
  redis.call('HINCRBY', tenant_key, 'na', 1)
end
redis.call('HINCRBY', tenant_key, 'nb', size)
redis.call('HSET', adapter_key, '@latest', ver)
for _, alias in ipairs(args.aliases) do redis.call('HSET', adapter_key, '@' .. alias, ver) end
redis.call('HINCRBY', refs_key, args.digest, 1)
redis.call('HINCRBY', refs_key, args.config_digest, 1)
redis.call('SET', token_key, ver, 'EX', args.token_ttl_s)
return ver
""",
)

# Resolves an alias or a version (args.by) to the version's fields in one call.
# Returns {'A'} (no such adapter), {'L'} (no such alias), {'V'} (no such live version)
# or {version, digest, config digest, size, rank, base model, created, origin}.
_RESOLVE = _Lua(
    keys=("adapter_key", "versions_key"),
    body="""
local ver = args.selector
if args.by == 'alias' then
  ver = redis.call('HGET', adapter_key, '@' .. args.selector)
end
local f = false
if ver then
  f = redis.call('HMGET', args.version_prefix .. ver, 'd', 'c', 's', 'r', 'b', 't', 'o', 'x')
end
if f and f[1] and not f[8] then return {ver, f[1], f[2], f[3], f[4], f[5], f[6], f[7] or ''} end
if redis.call('ZCARD', versions_key) == 0 then return {'A'} end
if args.by == 'alias' then return {'L'} end
return {'V'}
""",
)

# Soft-deletes one version (args.version) or every live version ('*'): marks the version
# hash deleted and queues it for purging, drops its aliases, moves 'latest' to the newest
# remaining version, and releases its quota charge and blob references.
_DELETE = _Lua(
    keys=("tenant_key", "adapter_key", "versions_key", "index_key", "refs_key", "dead_key"),
    body="""
local function delete_one(ver)
  local vkey = args.version_prefix .. ver
  local f = redis.call('HMGET', vkey, 'd', 'c', 's')
  redis.call('HSET', vkey, 'x', args.now)
  redis.call('ZREM', versions_key, ver)
  redis.call('ZADD', dead_key, args.now, vkey)
  for _, digest in ipairs({f[1], f[2]}) do
    if redis.call('HINCRBY', refs_key, digest, -1) <= 0 then
      redis.call('HDEL', refs_key, digest)
    end
  end
  redis.call('HINCRBY', tenant_key, 'nb', -tonumber(f[3]))
  local h = redis.call('HGETALL', adapter_key)
  for i = 1, #h, 2 do
    if string.sub(h[i], 1, 1) == '@' and h[i + 1] == ver then
      redis.call('HDEL', adapter_key, h[i])
    end
  end
end
local victims
if args.version == '*' then
  victims = redis.call('ZRANGE', versions_key, 0, -1)
  if #victims == 0 then return redis.error_reply('LMX_NO_ADAPTER') end
else
  if not redis.call('ZSCORE', versions_key, args.version) then
    return redis.error_reply('LMX_NO_VERSION')
  end
  victims = {args.version}
end
for _, ver in ipairs(victims) do delete_one(ver) end
local top = redis.call('ZREVRANGE', versions_key, 0, 0)
if #top == 0 then
  redis.call('HSET', adapter_key, 'x', args.now)
  redis.call('ZREM', index_key, args.name)
  redis.call('HINCRBY', tenant_key, 'na', -1)
elseif redis.call('HEXISTS', adapter_key, '@latest') == 0 then
  redis.call('HSET', adapter_key, '@latest', top[1])
end
return #victims
""",
)

# Points the alias at the version if that version is still live.
_SET_ALIAS = _Lua(
    keys=("adapter_key", "versions_key"),
    body="""
if not redis.call('ZSCORE', versions_key, args.version) then
  return redis.error_reply('LMX_NO_VERSION')
end
redis.call('HSET', adapter_key, '@' .. args.alias, args.version)
return 1
""",
)

# O(1) usage update; a no-op for a version hash that was purged, so it is never recreated.
_RECORD_USAGE = _Lua(
    keys=("version_key",),
    body="""
if redis.call('HEXISTS', version_key, 'd') == 0 then return 0 end
redis.call('HINCRBY', version_key, 'u', 1)
redis.call('HSET', version_key, 'l', args.now)
return 1
""",
)

# Quotas travel as '' for "unlimited" (the field is then absent).
_CREATE_TENANT = _Lua(
    keys=("tenants_key", "tenant_key"),
    body="""
if redis.call('EXISTS', tenant_key) == 1 then return redis.error_reply('LMX_TENANT_EXISTS') end
redis.call('HSET', tenant_key, 'c', args.created_at, 'na', 0, 'nb', 0)
if args.max_adapters ~= '' then redis.call('HSET', tenant_key, 'ma', args.max_adapters) end
if args.max_bytes ~= '' then redis.call('HSET', tenant_key, 'mb', args.max_bytes) end
redis.call('SADD', tenants_key, args.tenant)
return 1
""",
)

# Sets or clears (value '') fields of an existing tenant's hash: quotas, request limits.
_SET_TENANT_FIELDS = _Lua(
    keys=("tenant_key",),
    body="""
if redis.call('EXISTS', tenant_key) == 0 then return redis.error_reply('LMX_NO_TENANT') end
for field, value in pairs(args.fields) do
  if value == '' then
    redis.call('HDEL', tenant_key, field)
  else
    redis.call('HSET', tenant_key, field, value)
  end
end
return 1
""",
)

# The admission policy of adapter_store._rate_limits.admit, step for step, on the
# tenant's buckets hash (r: requests left, k: tokens left, u: updated at) and leases
# zset (lease id -> expiry). Expired leases (an ingress died) are dropped first. Numbers
# are stored with 17 digits, so they read back exactly as Python computed them.
# Returns {admitted, limit name or '', retry after, in flight}.
_ADMIT = _Lua(
    keys=("buckets_key", "leases_key"),
    body="""
local function fmt(x) return string.format('%.17g', x) end
local now = tonumber(args.now)
redis.call('ZREMRANGEBYSCORE', leases_key, '-inf', '(' .. args.now)
local in_flight = redis.call('ZCARD', leases_key)
if args.max_in_flight ~= '' and in_flight >= tonumber(args.max_in_flight) then
  return {0, 'max_in_flight', fmt(tonumber(args.in_flight_retry_s)), in_flight}
end
local burst = tonumber(args.request_burst)
local tpm = tonumber(args.tokens_per_min)
local b = redis.call('HMGET', buckets_key, 'r', 'k', 'u')
local requests, left, updated = burst, tpm or 0, now
if b[3] then requests, left, updated = tonumber(b[1]), tonumber(b[2]), tonumber(b[3]) end
local elapsed = math.max(0, now - updated)
if args.requests_per_s ~= '' then
  local rps = tonumber(args.requests_per_s)
  requests = math.min(burst, requests + elapsed * rps)
  if requests < 1 then return {0, 'requests_per_s', fmt((1 - requests) / rps), in_flight} end
end
if tpm then
  local rate = tpm / 60
  left = math.min(tpm, left + elapsed * rate)
  local cost = tonumber(args.tokens)
  if left < cost then return {0, 'tokens_per_min', fmt((cost - left) / rate), in_flight} end
  left = left - cost
end
if args.requests_per_s ~= '' then requests = requests - 1 end
redis.call('HSET', buckets_key, 'r', fmt(requests), 'k', fmt(left), 'u', fmt(math.max(now, updated)))
redis.call('EXPIRE', buckets_key, args.buckets_ttl_s)
redis.call('ZADD', leases_key, args.lease_expires_at, args.lease)
redis.call('EXPIRE', leases_key, args.leases_ttl_s)
return {1, '', '0', in_flight + 1}
""",
)

# Maps a key hash to a tenant; a key that belonged to another tenant leaves its key set.
_ADD_KEY = _Lua(
    keys=("tenant_key", "key_key", "tenant_keys_key"),
    body="""
if redis.call('EXISTS', tenant_key) == 0 then return redis.error_reply('LMX_NO_TENANT') end
local old = redis.call('GET', key_key)
if old then redis.call('SREM', args.tenant_keys_prefix .. old, args.key_hash) end
redis.call('SET', key_key, args.tenant)
redis.call('SADD', tenant_keys_key, args.key_hash)
return 1
""",
)

_REVOKE_KEY = _Lua(
    keys=("key_key",),
    body="""
local tenant = redis.call('GET', key_key)
if not tenant then return redis.error_reply('LMX_NO_KEY') end
redis.call('DEL', key_key)
redis.call('SREM', args.tenant_keys_prefix .. tenant, args.key_hash)
return tenant
""",
)

# A push announces the blobs it is about to use (so gc spares them) and learns which of
# them a gc pass is deleting right now (so it waits, then uploads them again) and each
# one's generation (which publish checks).
_ANNOUNCE_BLOBS = _Lua(
    keys=("intents_key", "gc_key", "blobgen_key"),
    body="""
local collecting, generations = {}, {}
for _, digest in ipairs(args.digests) do
  redis.call('ZADD', intents_key, args.now, digest)
  local claimed = redis.call('ZSCORE', gc_key, digest)
  if claimed and tonumber(claimed) >= tonumber(args.claims_live_since) then
    table.insert(collecting, digest)
  end
  table.insert(generations, redis.call('HGET', blobgen_key, digest) or '0')
end
return {collecting, generations}
""",
)

# gc claims an unreferenced blob for deletion unless a push announced it at or after
# args.announced_before; claiming bumps its generation, so a push that announced it
# earlier cannot publish it.
_CLAIM_BLOB = _Lua(
    keys=("refs_key", "intents_key", "gc_key", "blobgen_key"),
    body="""
local refs = tonumber(redis.call('HGET', refs_key, args.digest) or '0')
if refs > 0 then return 'referenced' end
local announced = redis.call('ZSCORE', intents_key, args.digest)
if announced and tonumber(announced) >= tonumber(args.announced_before) then
  return 'recent'
end
redis.call('ZADD', gc_key, args.now, args.digest)
redis.call('ZREM', intents_key, args.digest)
redis.call('HINCRBY', blobgen_key, args.digest, 1)
return 'claimed'
""",
)

_VERSION_FIELDS = ("d", "c", "s", "r", "b", "t", "o")


class RedisMetadataStore:
    """Redis-backed metadata of every tenant's adapters; a :class:`MetadataStore`.

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
            raise ValueError("RedisMetadataStore needs a redis client with decode_responses=True")
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
        # One registered script per _Lua, by its source (the benchmark pipelines publish).
        self._scripts = {
            lua.source: client.register_script(lua.source)
            for lua in (
                _PUBLISH,
                _RESOLVE,
                _DELETE,
                _SET_ALIAS,
                _RECORD_USAGE,
                _CREATE_TENANT,
                _SET_TENANT_FIELDS,
                _ADMIT,
                _ADD_KEY,
                _REVOKE_KEY,
                _ANNOUNCE_BLOBS,
                _CLAIM_BLOB,
            )
        }
        self._publish = self._scripts[_PUBLISH.source]

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "loramux:",
        attempts: int = 4,
        timeout_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> RedisMetadataStore:
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

    def _script(
        self, what: str, lua: _Lua, keys: Mapping[str, str], args: Mapping[str, Any]
    ) -> Any:
        """Run a Lua script, turning its ``LMX_*`` error replies into typed errors."""
        script = self._scripts[lua.source]
        key_list, arg_list = lua.call_args(keys, args)
        try:
            return self._call(what, lambda: script(keys=key_list, args=arg_list))
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
            _CREATE_TENANT,
            {"tenants_key": f"{self._p}tenants", "tenant_key": f"{self._p}t:{name}"},
            {
                "tenant": name,
                "created_at": repr(now),
                "max_adapters": _opt(max_adapters),
                "max_bytes": _opt(max_bytes),
            },
        )
        return Tenant(name, now, max_adapters, max_bytes)

    def get_tenant(self, name: str) -> Tenant:
        """Raises TenantNotFoundError."""
        key = f"{self._p}t:{name}"
        c, ma, mb = self._call(f"HMGET {key}", lambda: self._redis.hmget(key, "c", "ma", "mb"))
        if c is None:
            raise tenant_not_found(name)
        return Tenant(name, float(c), _int_or_none(ma), _int_or_none(mb))

    def list_tenants(self) -> list[str]:
        key = f"{self._p}tenants"
        return sorted(self._call(f"SMEMBERS {key}", lambda: self._redis.smembers(key)))

    def set_quota(self, name: str, *, max_adapters: int | None, max_bytes: int | None) -> None:
        """Set both quotas (``None``: unlimited). Raises TenantNotFoundError."""
        self._set_tenant_fields(
            f"set quota of tenant {name!r}",
            name,
            {"ma": _opt(max_adapters), "mb": _opt(max_bytes)},
        )

    def _set_tenant_fields(self, what: str, name: str, fields: Mapping[str, str]) -> None:
        self._script(
            what, _SET_TENANT_FIELDS, {"tenant_key": f"{self._p}t:{name}"}, {"fields": fields}
        )

    def get_usage(self, name: str) -> TenantUsage:
        """Raises TenantNotFoundError."""
        key = f"{self._p}t:{name}"
        c, ma, mb, na, nb = self._call(
            f"HMGET {key}", lambda: self._redis.hmget(key, "c", "ma", "mb", "na", "nb")
        )
        if c is None:
            raise tenant_not_found(name)
        return TenantUsage(name, int(na), int(nb), _int_or_none(ma), _int_or_none(mb))

    # -- request limits ------------------------------------------------------------------

    def get_limits(self, name: str) -> TenantLimits:
        """The tenant's own limits (``None`` fields: the default applies).
        Raises TenantNotFoundError."""
        key = f"{self._p}t:{name}"
        c, rps, tpm, mif = self._call(
            f"HMGET {key}", lambda: self._redis.hmget(key, "c", "rps", "tpm", "mif")
        )
        if c is None:
            raise tenant_not_found(name)
        return TenantLimits(_float_or_none(rps), _int_or_none(tpm), _int_or_none(mif))

    def set_limits(self, name: str, limits: TenantLimits) -> None:
        """Replace the tenant's own limits. Raises TenantNotFoundError."""
        fields = {
            "rps": _opt_float(limits.requests_per_s),
            "tpm": _opt(limits.tokens_per_min),
            "mif": _opt(limits.max_in_flight),
        }
        self._set_tenant_fields(f"set limits of tenant {name!r}", name, fields)

    def admit(self, lease: Lease, limits: TenantLimits, *, tokens: int, now: float) -> Admission:
        """Admit one request under ``limits`` (one round trip), holding ``lease`` until
        :meth:`release` or its expiry; or refuse it, charging nothing."""
        tenant, lease_ttl_s = lease.tenant, max(0.0, lease.expires_at - now)
        buckets_ttl = math.ceil(max(60.0, limits.request_burst / (limits.requests_per_s or 1.0)))
        admitted, limit, retry_after, in_flight = self._script(
            f"admit a request of tenant {tenant!r}",
            _ADMIT,
            {"buckets_key": f"{self._p}rl:{tenant}", "leases_key": f"{self._p}lf:{tenant}"},
            {
                "now": repr(now),
                "tokens": str(tokens),
                "requests_per_s": _opt_float(limits.requests_per_s),
                "request_burst": repr(limits.request_burst),
                "tokens_per_min": _opt(limits.tokens_per_min),
                "max_in_flight": _opt(limits.max_in_flight),
                "in_flight_retry_s": repr(IN_FLIGHT_RETRY_S),
                "lease": lease.id,
                "lease_expires_at": repr(lease.expires_at),
                "buckets_ttl_s": str(buckets_ttl + 1),
                "leases_ttl_s": str(math.ceil(lease_ttl_s) + 1),
            },
        )
        return Admission(bool(admitted), limit or None, float(retry_after), int(in_flight))

    def release(self, tenant: str, lease: str) -> None:
        """End a lease :meth:`admit` gave; a lease that expired already is a no-op."""
        key = f"{self._p}lf:{tenant}"
        self._call(f"ZREM {key}", lambda: self._redis.zrem(key, lease))

    def renew_leases(
        self, leases: Mapping[str, Collection[str]], *, now: float, lease_ttl_s: float
    ) -> None:
        """Push the expiry of live leases (tenant -> lease ids) to ``now + lease_ttl_s``,
        in one round trip; a lease released or expired meanwhile stays gone."""
        expires_at = now + lease_ttl_s

        def build(pipe: Any) -> None:
            for tenant, ids in leases.items():
                if ids:
                    key = f"{self._p}lf:{tenant}"
                    pipe.zadd(key, dict.fromkeys(ids, expires_at), xx=True)
                    pipe.expire(key, math.ceil(lease_ttl_s) + 1)

        self._pipeline("renew request leases", build)

    def add_key(self, tenant: str, key_hash: str) -> None:
        """Map a hashed API key to ``tenant``. Raises TenantNotFoundError."""
        self._script(
            f"add API key to tenant {tenant!r}",
            _ADD_KEY,
            {
                "tenant_key": f"{self._p}t:{tenant}",
                "key_key": f"{self._p}key:{key_hash}",
                "tenant_keys_key": f"{self._p}tk:{tenant}",
            },
            {"tenant": tenant, "key_hash": key_hash, "tenant_keys_prefix": f"{self._p}tk:"},
        )

    def revoke_key(self, key_hash: str) -> str:
        """Forget a hashed API key; return its tenant. Raises AuthenticationError."""
        return self._script(
            "revoke API key",
            _REVOKE_KEY,
            {"key_key": f"{self._p}key:{key_hash}"},
            {"tenant_keys_prefix": f"{self._p}tk:", "key_hash": key_hash},
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
            _ANNOUNCE_BLOBS,
            {
                "intents_key": f"{self._p}intents",
                "gc_key": f"{self._p}gc",
                "blobgen_key": f"{self._p}blobgen",
            },
            {
                "now": repr(now),
                "claims_live_since": repr(now - GC_CLAIM_TTL_S),
                "digests": digests,
            },
        )
        return collecting, {d: int(g) for d, g in zip(digests, generations, strict=True)}

    def check_publish(self, tenant: str, name: str, size_bytes: int) -> None:
        """Run the publish checks without publishing: tenant exists, quotas allow it.

        Raises:
            TenantNotFoundError, QuotaExceededError.
        """
        # Only the tenant, the name and the size matter to the checks.
        check = Publication(tenant, name, "", "", size_bytes, 0, "", 0.0)
        self._run_publish(check, check_only=True)

    def publish(self, publication: Publication) -> AdapterVersion:
        """Atomically allocate the next version and make it visible; move ``latest`` and
        the publication's ``aliases`` to it.

        Raises:
            TenantNotFoundError, QuotaExceededError: nothing was written.
            BlobCollectedError: gc claimed a blob since it was announced; nothing was
                written; announce and upload it again.
        """
        return publication.version(self._run_publish(publication, token=uuid.uuid4().hex))

    def _run_publish(
        self, publication: Publication, *, token: str = "", check_only: bool = False
    ) -> int:
        """Run the publish script. ``token`` makes a retried publish return the version
        the first try made; ``check_only`` runs the tenant and quota checks and writes
        nothing."""
        tenant, name = publication.tenant, publication.name
        keys, args = self._publish_call(publication, token=token, check_only=check_only)
        try:
            return int(self._script(f"publish {tenant}/{name}", _PUBLISH, keys, args))
        except _QuotaError as exc:
            raise exc.for_tenant(tenant, name) from None
        except TenantNotFoundError:
            raise tenant_not_found(tenant) from None

    def _publish_call(
        self, publication: Publication, *, token: str, check_only: bool = False
    ) -> tuple[dict[str, str], dict[str, Any]]:
        """Named KEYS and ARGV of the publish script (the benchmark pipelines them,
        through :meth:`_Lua.call_args` of ``_PUBLISH``)."""
        p = publication
        a_key, vs_key, v_base = self._adapter_keys(p.tenant, p.name)
        keys = {
            "tenant_key": f"{self._p}t:{p.tenant}",
            "adapter_key": a_key,
            "versions_key": vs_key,
            "index_key": f"{self._p}ix:{p.tenant}",
            "refs_key": f"{self._p}refs",
            "token_key": f"{self._p}push:{token}",
            "blobgen_key": f"{self._p}blobgen",
        }
        digest_generation, config_digest_generation = p.generations
        args = {
            "version_prefix": v_base,
            "name": p.name,
            "digest": p.digest,
            "config_digest": p.config_digest,
            "size_bytes": str(p.size_bytes),
            "rank": str(p.rank),
            "base_model": p.base_model,
            "created_at": repr(p.created_at),
            "origin": p.origin,
            "token_ttl_s": str(_PUSH_TOKEN_TTL_S),
            "check_only": check_only,
            "digest_generation": str(digest_generation),
            "config_digest_generation": str(config_digest_generation),
            "aliases": list(p.aliases),
        }
        return keys, args

    # -- resolve, aliases, delete, usage -------------------------------------------------

    def resolve(self, tenant: str, name: str, selector: str) -> AdapterVersion:
        """Resolve ``selector`` (a version number or an alias) in one round trip.

        Raises:
            AdapterNotFoundError: naming what is missing: the adapter, alias or version.
        """
        a_key, vs_key, v_base = self._adapter_keys(tenant, name)
        by = "version" if is_version_number(selector) else "alias"
        reply = self._script(
            f"resolve {tenant}/{name}",
            _RESOLVE,
            {"adapter_key": a_key, "versions_key": vs_key},
            {"version_prefix": v_base, "by": by, "selector": selector},
        )
        if len(reply) == 1:
            raise adapter_not_found(_MISSING[reply[0]], tenant, name, selector)
        return _version(tenant, name, reply[0], reply[1:])

    def set_alias(self, version: AdapterVersion, alias: str) -> None:
        """Point ``alias`` at ``version``. Raises AdapterNotFoundError if it was deleted."""
        a_key, vs_key, _ = self._adapter_keys(version.tenant, version.name)
        try:
            self._script(
                f"set alias {alias!r} of {version.key}",
                _SET_ALIAS,
                {"adapter_key": a_key, "versions_key": vs_key},
                {"version": str(version.version), "alias": alias},
            )
        except AdapterNotFoundError:
            raise adapter_not_found(
                "version", version.tenant, version.name, str(version.version)
            ) from None

    def remove_alias(self, tenant: str, name: str, alias: str) -> None:
        """Raises AdapterNotFoundError if the alias does not exist."""
        a_key, _, _ = self._adapter_keys(tenant, name)
        if not self._call(f"HDEL {a_key}", lambda: self._redis.hdel(a_key, f"@{alias}")):
            raise adapter_not_found("alias", tenant, name, alias)

    def delete(self, tenant: str, name: str, version: int | None, *, now: float) -> int:
        """Soft-delete one version, or every live version when ``version`` is None.

        Returns the number of versions deleted.

        Raises:
            AdapterNotFoundError: no such live adapter or version.
        """
        a_key, vs_key, v_base = self._adapter_keys(tenant, name)
        keys = {
            "tenant_key": f"{self._p}t:{tenant}",
            "adapter_key": a_key,
            "versions_key": vs_key,
            "index_key": f"{self._p}ix:{tenant}",
            "refs_key": f"{self._p}refs",
            "dead_key": f"{self._p}dead",
        }
        selector = "*" if version is None else str(version)
        args = {"version_prefix": v_base, "name": name, "version": selector, "now": repr(now)}
        try:
            return int(self._script(f"delete {tenant}/{name}", _DELETE, keys, args))
        except AdapterNotFoundError as exc:
            missing: Missing = "adapter" if version is None else "version"
            raise adapter_not_found(missing, tenant, name, selector) from exc

    def record_usage(self, version: AdapterVersion, *, now: float) -> None:
        """Count one request and set last-used: O(1), one round trip, no read back."""
        self._script(
            f"record usage of {version.key}",
            _RECORD_USAGE,
            {"version_key": self._version_key(version)},
            {"now": repr(now)},
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
            raise adapter_not_found("adapter", tenant, name, LATEST)
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
            raise adapter_not_found("adapter", tenant, name, LATEST)
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
                version=_version(tenant, name, number, row[:7]),
                aliases=tuple(sorted(by_version.get(int(number), ()))),
                request_count=int(row[7] or 0),
                last_used_at=_float_or_none(row[8]),
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

    def claim_blob_for_gc(self, digest: str, *, announced_before: float, now: float) -> GcClaim:
        """Claim a blob for deletion if no live version references it and no push
        announced it at or after ``announced_before``; say which case it was."""
        return self._script(
            f"claim blob {digest} for gc",
            _CLAIM_BLOB,
            {
                "refs_key": f"{self._p}refs",
                "intents_key": f"{self._p}intents",
                "gc_key": f"{self._p}gc",
                "blobgen_key": f"{self._p}blobgen",
            },
            {"digest": digest, "announced_before": repr(announced_before), "now": repr(now)},
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
        cutoff = now - GC_CLAIM_TTL_S
        return [d for d, s in zip(digests, scores, strict=True) if s is not None and s >= cutoff]


# -- the publish call, reply decoding and error mapping ---------------------------------


# What the resolve script's one-letter replies say is missing.
_MISSING: dict[str, Missing] = {"A": "adapter", "L": "alias", "V": "version"}


class _QuotaError(Exception):
    """A quota reply from the publish script, before the tenant name is attached."""

    def __init__(self, kind: str, numbers: list[int]) -> None:
        super().__init__(kind)
        self.kind = kind
        self.numbers = numbers

    def for_tenant(self, tenant: str, name: str) -> QuotaExceededError:
        if self.kind == "LMX_QUOTA_COUNT":
            held, limit = self.numbers
            return adapter_count_exceeded(tenant, name, held, limit)
        held, size, limit = self.numbers
        return adapter_bytes_exceeded(tenant, name, held, size, limit)


def _script_error(message: str, what: str) -> Exception:
    code, _, rest = message.partition(" ")
    if code in ("LMX_QUOTA_COUNT", "LMX_QUOTA_BYTES"):
        return _QuotaError(code, [int(n) for n in rest.split()])
    if code == "LMX_NO_TENANT":
        return no_such_tenant(what)
    if code == "LMX_TENANT_EXISTS":
        return tenant_exists(what)
    if code == "LMX_NO_KEY":
        return unknown_key(what)
    if code in ("LMX_NO_VERSION", "LMX_NO_ADAPTER"):
        return AdapterNotFoundError(
            f"{what}: no such live adapter or version (see them with: loramux ls)"
        )
    if code == "LMX_BLOB_COLLECTED":
        return blob_collected(what, rest)
    return BackendUnavailableError(
        f"{what}: the Redis script answered an unknown error {message!r}; check that "
        "every loramux process runs the same version"
    )


def _version(
    tenant: str, name: str, number: str | int, fields: Sequence[str | None]
) -> AdapterVersion:
    digest, config_digest, size, rank, base_model, created, origin = fields
    assert digest and config_digest and size and rank and base_model and created
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
        # Versions published before origins were recorded were all pushed.
        origin="trained" if origin == "trained" else "pushed",
    )


def _aliases(adapter_fields: dict[str, str]) -> dict[str, int]:
    return {k[1:]: int(v) for k, v in sorted(adapter_fields.items()) if k.startswith("@")}


def _opt(value: int | None) -> str:
    return "" if value is None else str(int(value))


def _opt_float(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _int_or_none(value: str | None) -> int | None:
    return None if value is None else int(value)


def _float_or_none(value: str | None) -> float | None:
    return None if value is None else float(value)
