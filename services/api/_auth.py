"""Who is asking: the bearer key, its tenant, and whether it is the admin key.

The API routers and the dashboard both use these, so ``/v1/stats`` and
``/dashboard/data`` cannot drift apart. The shared state of the app (store, gateway,
settings, meter) is :class:`ApiContext`, read with the :data:`Context` dependency.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi import Header
from fastapi import Request

from adapter_store import AdapterStore
from services._settings import ServiceSettings
from services.api._admission import TenantAdmission
from services.api._gateway import ModelGateway
from services.api._gateway import TrainingGateway
from services.api._metrics import IngressMetrics
from services.exceptions import PermissionDeniedError
from services.exceptions import UnauthorizedError

__all__ = [
    "Admin",
    "ApiContext",
    "ApiKey",
    "Context",
    "Tenant",
    "is_admin",
]


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What every route works with; one per app, on ``app.state.context``."""

    store: AdapterStore
    gateway: ModelGateway
    settings: ServiceSettings
    meter: IngressMetrics
    admission: TenantAdmission
    trainer: TrainingGateway | None = None


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
