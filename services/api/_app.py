"""The HTTP API: :func:`create_api` builds the FastAPI app from one router per resource.

The app works over an :class:`AdapterStore` and a :class:`ModelGateway` (how requests
reach the model replicas), so the API is the same whether the gateway is Ray Serve
(:class:`services.serve.ServeGateway`, in production) or a fake in tests. Routers:
generation (:mod:`._generation`), adapters (:mod:`._adapters`), tenants
(:mod:`._tenants`), training jobs (:mod:`._training`), health and stats (:mod:`._stats`)
and the dashboard (:mod:`._dashboard`).

Tenancy: ``Authorization: Bearer <key>`` maps to one tenant (one Redis round trip); a
tenant sees and uses only its own adapters. The admin key
(:attr:`ServiceSettings.admin_key`) manages tenants, keys and quotas and is no tenant
(see :mod:`._auth`). Errors answer as :mod:`._errors` maps them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from adapter_store import AdapterStore
from services._settings import ServiceSettings
from services.api import _adapters
from services.api import _generation
from services.api import _stats
from services.api import _tenants
from services.api import _training
from services.api._admission import TenantAdmission
from services.api._auth import ApiContext
from services.api._dashboard import dashboard_router
from services.api._errors import install_error_handlers
from services.api._gateway import ModelGateway
from services.api._gateway import TrainingGateway
from services.api._metrics import IngressMetrics
from services.api._request_limits import BodySizeLimit

__all__ = ["create_api"]


def create_api(
    store: AdapterStore,
    gateway: ModelGateway,
    settings: ServiceSettings,
    *,
    trainer: TrainingGateway | None = None,
) -> FastAPI:
    """The loramux HTTP API over ``store`` and ``gateway`` (see the module docstring).

    Without a ``trainer`` the training endpoints answer 503 naming ``--local``."""
    admission = TenantAdmission(store.metadata, settings.limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Leases of requests that outlive their ttl are renewed while the app runs.
        renewal = asyncio.create_task(admission.renew_forever())
        try:
            yield
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal

    api = FastAPI(title="loramux", version="0.1.0", lifespan=lifespan)
    api.state.context = ApiContext(
        store=store,
        gateway=gateway,
        settings=settings,
        meter=IngressMetrics(tenant_label=settings.metrics_tenant_label),
        admission=admission,
        trainer=trainer,
    )
    api.add_middleware(BodySizeLimit, limits=settings.limits, paths=_generation.PATHS)
    install_error_handlers(api)
    for resource in (_generation, _adapters, _tenants, _stats, _training):
        api.include_router(resource.router)
    api.include_router(dashboard_router(store, gateway, settings))
    return api
