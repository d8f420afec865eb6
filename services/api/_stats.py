"""Health and statistics: ``/healthz`` and ``/v1/stats``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from adapter_store import AdapterStore
from services.api._admission import TenantAdmission
from services.api._auth import ApiKey
from services.api._auth import Context
from services.api._auth import is_admin
from services.api._tenants import limits_of
from services.api._tenants import usage_of
from services.client import AdapterCounters
from services.client import Health
from services.client import ServiceStats
from services.client import TenantLimitsInfo
from services.client import TenantUsage
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


@router.get("/v1/stats", response_model_exclude_none=True)
async def stats(context: Context, key: ApiKey) -> ServiceStats:
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
    admission = context.admission
    if is_admin(context.settings, key):
        tenants, limits = await run_in_threadpool(_all_tenants, store, admission)
        return ServiceStats(
            replicas=await gateway.replica_stats(), tenants=tenants, tenant_limits=limits
        )
    tenant = await run_in_threadpool(store.tenant_for_key, key)
    usage, adapters = await run_in_threadpool(_tenant_counters, store, tenant)
    own_limits = await run_in_threadpool(limits_of, store, admission, tenant)
    replicas = await gateway.replica_stats()
    return ServiceStats(
        replicas=[replica.for_tenant(tenant) for replica in replicas],
        tenant=usage,
        adapters=adapters,
        limits=own_limits,
    )


def _all_tenants(
    store: AdapterStore, admission: TenantAdmission
) -> tuple[dict[str, TenantUsage], dict[str, TenantLimitsInfo]]:
    names = store.list_tenants()
    usage = {tenant: usage_of(store, tenant) for tenant in names}
    return usage, {tenant: limits_of(store, admission, tenant) for tenant in names}


def _tenant_counters(
    store: AdapterStore, tenant: str
) -> tuple[TenantUsage, dict[str, AdapterCounters]]:
    adapters = {
        adapter.name: AdapterCounters(
            requests=adapter.request_count, last_used_at=adapter.last_used_at
        )
        for adapter in store.iter_adapters(tenant)
    }
    return usage_of(store, tenant), adapters
