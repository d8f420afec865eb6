"""Who is asking: the bearer key, its tenant, the admin key, and what a tenant may see.

The API routers and the dashboard both use these, so ``/v1/stats`` and
``/dashboard/data`` cannot drift apart. The shared state of the app (store, gateway,
settings, meter) is :class:`ApiContext`, read with the :data:`Context` dependency.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from adapter_store import AdapterStore
from services._settings import ServiceSettings
from services.api._gateway import ModelGateway
from services.api._metrics import IngressMetrics
from services.exceptions import PermissionDeniedError, UnauthorizedError

__all__ = [
    "Admin",
    "ApiContext",
    "ApiKey",
    "Context",
    "Tenant",
    "is_admin",
    "only_tenant",
]

# A replica's stats fields a tenant key sees (besides its own residency): configuration,
# no counter. An allow-list, so a counter added to the replica's report later stays
# hidden from tenants: counters (requests, queue, hits, loads) sum every tenant's traffic.
_TENANT_REPLICA_FIELDS = ("replica_id", "gpu_slots", "base_model_bytes")


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What every route works with; one per app, on ``app.state.context``."""

    store: AdapterStore
    gateway: ModelGateway
    settings: ServiceSettings
    meter: IngressMetrics


async def _context(request: Request) -> ApiContext:
    return request.app.state.context


Context = Annotated[ApiContext, Depends(_context)]


def _bearer(authorization: str | None) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise UnauthorizedError("missing API key: send the header 'Authorization: Bearer KEY'")
    return key.strip()


async def api_key(authorization: Annotated[str | None, Header()] = None) -> str:
    """The request's bearer key. Raises UnauthorizedError (401) when there is none."""
    return _bearer(authorization)


ApiKey = Annotated[str, Depends(api_key)]


def tenant_of(context: Context, key: ApiKey) -> str:
    """The tenant of the request's key (blocking: FastAPI runs it in the threadpool).

    Raises:
        UnauthorizedError (401): no key, or an unknown or revoked one.
    """
    return context.store.tenant_for_key(key)


Tenant = Annotated[str, Depends(tenant_of)]


def is_admin(settings: ServiceSettings, key: str) -> bool:
    """Whether ``key`` is the admin key (compared in constant time)."""
    expected = settings.admin_key
    return expected is not None and secrets.compare_digest(
        key.encode(), expected.get_secret_value().encode()
    )


async def require_admin(context: Context, key: ApiKey) -> None:
    """Raises PermissionDeniedError (403) unless the key is the admin key."""
    if not is_admin(context.settings, key):
        raise PermissionDeniedError("this endpoint needs the admin key")


Admin = Depends(require_admin)


def only_tenant(replica: dict[str, Any], tenant: str) -> dict[str, Any]:
    """What ``tenant`` may see of a replica's stats: its configuration fields (an
    allow-list) and residency cut down to its own adapters; every counter is left out."""
    prefix = f"{tenant}/"
    residency = {
        tier: [key for key in keys if key.startswith(prefix)]
        for tier, keys in replica["residency"].items()
    }
    shared = {field: replica[field] for field in _TENANT_REPLICA_FIELDS if field in replica}
    return {**shared, "residency": residency}
