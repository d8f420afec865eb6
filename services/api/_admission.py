"""The ingress side of per-tenant limits: admit a request, hold its lease, release it.

:class:`TenantAdmission` asks the metadata store (one round trip, shared by every ingress
replica) whether a tenant's request may start, under the tenant's own limits over the
service defaults, and holds the request's in-flight lease while it runs. Leases this
ingress holds are renewed every third of their ttl (one pipelined round trip for all),
so a request outliving the ttl keeps its slot while an ingress that dies frees its
tenants' slots within one ttl.

Failure mode: a refusal is :class:`RateLimitError` (429) naming the limit, with
``retry_after_s`` for the ``Retry-After`` header; a request larger than a minute of the
tenant's tokens is refused for good with a 400 naming ``tokens_per_min``; a store that
does not answer raises ``BackendUnavailableError`` (503). Store calls block: callers run
them off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager

from adapter_store import Lease
from adapter_store import MetadataStore
from adapter_store import TenantLimits
from services._settings import LimitSettings
from services.exceptions import BadRequestError
from services.exceptions import RateLimitError

__all__ = ["TenantAdmission", "TenantRateLimitedError"]

_log = logging.getLogger(__name__)


class TenantRateLimitedError(RateLimitError):
    """A tenant's request refused by one of its limits (429); ``limit`` names it and
    ``retry_after_s`` says when to try again."""

    def __init__(self, message: str, *, limit: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1, as ``Retry-After`` takes them."""
        return str(max(1, math.ceil(self.retry_after_s)))


class TenantAdmission:
    """Admission of tenants' requests under their limits (see the module docstring)."""

    def __init__(
        self,
        metadata: MetadataStore,
        settings: LimitSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metadata = metadata
        self._settings = settings
        self._clock = clock
        self.defaults = settings.tenant_defaults()
        self._held: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def limits_of(self, tenant: str) -> TenantLimits:
        """The limits that apply to ``tenant``: its own over the defaults."""
        return self._metadata.get_limits(tenant).over(self.defaults)

    @contextmanager
    def admitted(self, tenant: str, tokens: int) -> Iterator[None]:
        """Hold one admission of ``tenant`` for a request costing ``tokens`` while the
        block runs; the lease is released on the way out, also on error.

        Raises:
            TenantRateLimitedError: a limit refused it (nothing charged).
            BadRequestError: ``tokens`` exceed a minute of the tenant's tokens.
        """
        limits = self.limits_of(tenant)
        if limits.tokens_per_min is not None and tokens > limits.tokens_per_min:
            raise BadRequestError(
                f"this request may use {tokens} tokens (prompt estimate plus max_tokens), "
                f"above tenant {tenant!r}'s tokens_per_min of {limits.tokens_per_min}; ask "
                "for fewer max_tokens or a shorter prompt (loramux tenant limits raises it)"
            )
        now = self._clock()
        lease = Lease(tenant, uuid.uuid4().hex, now + self._settings.lease_ttl_s)
        answer = self._metadata.admit(lease, limits, tokens=tokens, now=now)
        if not answer.admitted:
            assert answer.limit is not None
            value = getattr(limits, answer.limit)
            raise TenantRateLimitedError(
                f"tenant {tenant!r} is at its {answer.limit} limit ({value}); retry after "
                f"{answer.retry_after_s:.2f} s (loramux tenant limits raises it)",
                limit=answer.limit,
                retry_after_s=answer.retry_after_s,
            )
        with self._lock:
            self._held.setdefault(tenant, set()).add(lease.id)
        try:
            yield
        finally:
            with self._lock:
                self._held[tenant].discard(lease.id)
            self._metadata.release(tenant, lease.id)

    @property
    def renew_every_s(self) -> float:
        return self._settings.lease_ttl_s / 3

    def renew(self) -> int:
        """Extend every lease this ingress holds (one round trip); return how many."""
        with self._lock:
            held = {tenant: list(leases) for tenant, leases in self._held.items() if leases}
        if held:
            self._metadata.renew_leases(
                held, now=self._clock(), lease_ttl_s=self._settings.lease_ttl_s
            )
        return sum(len(leases) for leases in held.values())

    async def renew_forever(self) -> None:
        """:meth:`renew` every :attr:`renew_every_s` until cancelled. A round that fails
        (Redis away) is logged, at most one line a round, and the next round tries again:
        a lease lives three rounds, so one lost round costs no slot."""
        while True:
            await asyncio.sleep(self.renew_every_s)
            try:
                await asyncio.to_thread(self.renew)
            except Exception:
                _log.warning("renewing the in-flight leases failed; retrying", exc_info=True)
