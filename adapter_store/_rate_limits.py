"""Per-tenant request limits: the values, and the admission policy as a pure function.

Three limits, each ``None`` for "no limit": ``requests_per_s`` and ``tokens_per_min``
are token buckets (capacity one second of requests, at least one, and one minute of
tokens), ``max_in_flight`` counts the tenant's requests under way. A request is charged
one request and its token estimate (prompt tokens plus ``max_tokens``, as OpenAI's
limiter counts them) when it is admitted; a refused request is charged nothing and
changes nothing.

:func:`admit` is the policy. :class:`~adapter_store.RedisMetadataStore` runs the same
arithmetic in one Lua script, so every ingress replica shares one budget per tenant;
the contract test checks both give the same answers. Times are the callers' Unix
seconds: an ingress whose clock is behind refills nothing (elapsed time is never
negative) rather than taking budget from the future.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace
from typing import Literal

__all__ = ["Admission", "Lease", "TenantLimits"]

LimitName = Literal["requests_per_s", "tokens_per_min", "max_in_flight"]
# A tenant at its in-flight limit learns no finish time (requests end when they end):
# the Retry-After it gets is this hint.
IN_FLIGHT_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's request limits; a field ``None`` is no limit (in a stored override:
    the service default applies, see :meth:`over`).

    Raises:
        ValueError: a limit that is not positive.
    """

    requests_per_s: float | None = None
    tokens_per_min: int | None = None
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_s", "tokens_per_min", "max_in_flight"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise ValueError(f"{name} must be None or > 0, got {value!r}")

    def over(self, defaults: TenantLimits) -> TenantLimits:
        """These limits, with ``defaults`` where this leaves a field ``None``."""
        return TenantLimits(
            requests_per_s=(
                defaults.requests_per_s if self.requests_per_s is None else self.requests_per_s
            ),
            tokens_per_min=(
                defaults.tokens_per_min if self.tokens_per_min is None else self.tokens_per_min
            ),
            max_in_flight=(
                defaults.max_in_flight if self.max_in_flight is None else self.max_in_flight
            ),
        )

    @property
    def request_burst(self) -> float:
        """The request bucket's capacity: one second of requests, at least one."""
        return max(1.0, self.requests_per_s or 0.0)


@dataclass(frozen=True, slots=True)
class Buckets:
    """What is left of a tenant's two buckets at ``updated_at``."""

    requests: float
    tokens: float
    updated_at: float

    @classmethod
    def full(cls, limits: TenantLimits, now: float) -> Buckets:
        return cls(limits.request_burst, float(limits.tokens_per_min or 0), now)


@dataclass(frozen=True, slots=True)
class Lease:
    """One admitted request's hold on a tenant's in-flight count, until it is released
    or ``expires_at`` passes (so a crashed ingress's leases end on their own)."""

    tenant: str
    id: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to one request: admitted, or refused by ``limit`` (its name) with a
    hint of when to retry (seconds). ``in_flight`` counts the tenant's requests under way,
    this one included when admitted."""

    admitted: bool
    limit: LimitName | None
    retry_after_s: float
    in_flight: int


def admit(
    limits: TenantLimits,
    buckets: Buckets | None,
    *,
    in_flight: int,
    tokens: int,
    now: float,
) -> tuple[Admission, Buckets | None]:
    """Admit one request costing ``tokens`` or refuse it; return the answer and the
    buckets to store (the old ones, unchanged, when refused).

    Checks in order: in-flight, requests per second, tokens per minute. ``buckets`` is
    ``None`` for a tenant never seen (full buckets). A request costing more tokens than
    one minute holds is refused for good: the caller checks :func:`fits` first.
    """
    if limits.max_in_flight is not None and in_flight >= limits.max_in_flight:
        return Admission(False, "max_in_flight", IN_FLIGHT_RETRY_S, in_flight), buckets
    state = buckets or Buckets.full(limits, now)
    elapsed = max(0.0, now - state.updated_at)
    requests, left = state.requests, state.tokens
    if limits.requests_per_s is not None:
        requests = min(limits.request_burst, requests + elapsed * limits.requests_per_s)
        if requests < 1.0:
            wait = (1.0 - requests) / limits.requests_per_s
            return Admission(False, "requests_per_s", wait, in_flight), buckets
    if limits.tokens_per_min is not None:
        rate = limits.tokens_per_min / 60.0
        left = min(float(limits.tokens_per_min), left + elapsed * rate)
        if left < tokens:
            wait = (tokens - left) / rate
            return Admission(False, "tokens_per_min", wait, in_flight), buckets
        left -= tokens
    if limits.requests_per_s is not None:
        requests -= 1.0
    charged = replace(state, requests=requests, tokens=left, updated_at=max(now, state.updated_at))
    return Admission(True, None, 0.0, in_flight + 1), charged


def fits(limits: TenantLimits, tokens: int) -> bool:
    """Whether a request costing ``tokens`` can ever be admitted under ``limits``."""
    return limits.tokens_per_min is None or tokens <= limits.tokens_per_min
