"""Tenant administration (admin key only): tenants, API keys and quotas."""

from __future__ import annotations

from fastapi import APIRouter

from adapter_store import AdapterStore
from services.api._auth import Admin, Context
from services.client import (
    KeyRevoke,
    KeyRevoked,
    QuotaUpdate,
    TenantCreate,
    TenantCreated,
    TenantUsage,
)

__all__ = ["router", "usage_of"]

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


def usage_of(store: AdapterStore, tenant: str) -> TenantUsage:
    """The tenant's usage and quota as the API answers it (blocking: one round trip)."""
    return TenantUsage.model_validate(store.get_usage(tenant), from_attributes=True)
