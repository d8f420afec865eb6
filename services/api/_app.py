"""The HTTP API: :func:`create_api` builds the FastAPI app from one router per resource.

The app works over an :class:`AdapterStore` and a :class:`ModelGateway` (how requests
reach the model replicas), so the API is the same whether the gateway is Ray Serve
(:class:`services.serve.ServeGateway`, in production) or a fake in tests. Routers:
generation (:mod:`._generation`), adapters (:mod:`._adapters`), tenants
(:mod:`._tenants`), health and stats (:mod:`._stats`) and the dashboard
(:mod:`._dashboard`).

Tenancy: ``Authorization: Bearer <key>`` maps to one tenant (one Redis round trip); a
tenant sees and uses only its own adapters. The admin key
(:attr:`ServiceSettings.admin_key`) manages tenants, keys and quotas and is no tenant
(see :mod:`._auth`). Errors answer as :mod:`._errors` maps them.
"""

from __future__ import annotations

from fastapi import FastAPI

from adapter_store import AdapterStore
from services._settings import ServiceSettings
from services.api import _adapters, _generation, _stats, _tenants
from services.api._auth import ApiContext
from services.api._dashboard import dashboard_router
from services.api._errors import install_error_handlers
from services.api._gateway import ModelGateway
from services.api._metrics import IngressMetrics

__all__ = ["create_api"]


def create_api(store: AdapterStore, gateway: ModelGateway, settings: ServiceSettings) -> FastAPI:
    """The loramux HTTP API over ``store`` and ``gateway`` (see the module docstring)."""
    api = FastAPI(title="loramux", version="0.1.0")
    api.state.context = ApiContext(
        store=store,
        gateway=gateway,
        settings=settings,
        meter=IngressMetrics(tenant_label=settings.metrics_tenant_label),
    )
    install_error_handlers(api)
    for resource in (_generation, _adapters, _tenants, _stats):
        api.include_router(resource.router)
    api.include_router(dashboard_router(store, gateway, settings))
    return api
