"""Tenant administration (admin key only): tenants, API keys, quotas and request limits."""

from __future__ import annotations

from fastapi import APIRouter

from adapter_store import AdapterStore
from adapter_store import TenantLimits
from services.api._admission import TenantAdmission
from services.api._auth import Admin
from services.api._auth import Context
from services.client import KeyRevoke
from services.client import KeyRevoked
from services.client import QuotaUpdate
from services.client import RequestLimits
from services.client import TenantCreate
from services.client import TenantCreated
from services.client import TenantLimitsInfo
from services.client import TenantUsage

__all__ = ["limits_of", "router", "usage_of"]

router = APIRouter(dependencies=[Admin])


@router.post("/v1/tenants", status_code=201)
def create_tenant(context: Context, body: TenantCreate) -> TenantCreated:
    tenant, key = context.store.create_tenant(body.name)
    return TenantCreated(name=tenant.name, api_key=key)


@router.post("/v1/tenants/{name}/keys", status_code=201)
def issue_key(context: Context, name: str) -> TenantCreated:
    return TenantCreated(name=name, api_key=context.store.issue_key(name))


@router.post("/v1/keys/revoke")
def revoke_key(context: Context, body: KeyRevoke) -> KeyRevoked:
    return KeyRevoked(tenant=context.store.revoke_key(body.api_key))


@router.put("/v1/tenants/{name}/quota")
def set_quota(context: Context, name: str, body: QuotaUpdate) -> TenantUsage:
    context.store.set_quota(name, max_adapters=body.max_adapters, max_bytes=body.max_bytes)
    return usage_of(context.store, name)


@router.get("/v1/tenants/{name}/usage")
def tenant_usage(context: Context, name: str) -> TenantUsage:
    return usage_of(context.store, name)


@router.put("/v1/tenants/{name}/limits")
def set_limits(context: Context, name: str, body: RequestLimits) -> TenantLimitsInfo:
    """Replace the tenant's own limits; every ingress applies them from the next request
    on (admission reads them from the store with each request)."""
    context.store.set_limits(name, TenantLimits(**body.model_dump()))
    return limits_of(context.store, context.admission, name)


@router.get("/v1/tenants/{name}/limits")
def tenant_limits(context: Context, name: str) -> TenantLimitsInfo:
    return limits_of(context.store, context.admission, name)


def limits_of(store: AdapterStore, admission: TenantAdmission, tenant: str) -> TenantLimitsInfo:
    """The tenant's own and effective request limits (blocking: one round trip)."""
    own = store.get_limits(tenant)
    return TenantLimitsInfo.of(tenant, own, own.over(admission.defaults))


def usage_of(store: AdapterStore, tenant: str) -> TenantUsage:
    """The tenant's usage and quota as the API answers it (blocking: one round trip)."""
    return TenantUsage.model_validate(store.get_usage(tenant), from_attributes=True)
