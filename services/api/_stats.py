"""Health and statistics: ``/healthz`` and ``/v1/stats``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from adapter_store import AdapterStore
from services.api._auth import ApiKey, Context, is_admin, only_tenant
from services.api._tenants import usage_of
from services.client import Health
from services.exceptions import ServiceUnavailableError

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz")
async def healthz(context: Context) -> Health:
    live = len(await context.gateway.replica_stats())
    expected = context.settings.replicas
    if live == 0:
        raise ServiceUnavailableError(
            f"no model replica is ready yet (0 of {expected}); retry shortly"
        )
    return Health(status="ok", replicas=live, expected_replicas=expected)


@router.get("/v1/stats")
async def stats(context: Context, key: ApiKey) -> dict[str, Any]:
    """Per replica: residency by tier, hit rates, load, loads. The admin key sees all of
    it and every tenant's usage. A tenant key sees, per replica, only its id, its GPU
    slots, the base model's size and the residency of the tenant's own adapters: the
    request, queue, hit/miss, load and load-error counters are shared by all tenants
    and would reveal the others' traffic, so they are left out. It also sees its own
    usage and per-adapter request counts.

    Raises:
        AuthenticationError (401): no key, or an unknown or revoked one; checked
            before the replicas are asked.
    """
    store, gateway = context.store, context.gateway
    if is_admin(context.settings, key):
        tenants = await run_in_threadpool(_all_usage, store)
        return {"replicas": await gateway.replica_stats(), "tenants": tenants}
    tenant = await run_in_threadpool(store.tenant_for_key, key)
    own = await run_in_threadpool(_tenant_counters, store, tenant)
    replicas = await gateway.replica_stats()
    return {"replicas": [only_tenant(r, tenant) for r in replicas], **own}


def _all_usage(store: AdapterStore) -> dict[str, dict[str, Any]]:
    return {tenant: usage_of(store, tenant).model_dump() for tenant in store.list_tenants()}


def _tenant_counters(store: AdapterStore, tenant: str) -> dict[str, Any]:
    return {
        "tenant": usage_of(store, tenant).model_dump(),
        "adapters": {
            adapter.name: {
                "requests": adapter.request_count,
                "last_used_at": adapter.last_used_at,
            }
            for adapter in store.iter_adapters(tenant)
        },
    }
