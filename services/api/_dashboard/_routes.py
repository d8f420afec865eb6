"""``/dashboard``: the built-in operator page, its static assets and its data endpoint.

Access policy:

- ``GET /dashboard`` and ``GET /dashboard/static/<asset>`` need no key: they are the
  same static files for everyone and hold no data. They are served with a strict
  Content-Security-Policy (everything from this origin only, no inline script) and
  ``nosniff``, from a fixed allow-list of files, never from a path in the URL.
- ``GET /dashboard/data`` follows ``/v1/stats``'s rules, with the same bearer key: the
  admin key sees every replica, tenant and adapter; a tenant's key sees the replicas'
  load and hit rates with residency cut down to its own adapters, and only its own
  adapters, requests and storage. The page asks for the key in a form field and keeps it
  in ``sessionStorage`` (gone with the tab); ``/dashboard#key=KEY`` fills it in, and the
  page drops the fragment from the address bar at once. A fragment never reaches a
  server, so the key appears in no access log.

The data is one JSON document shaped for the page: the replicas' latest reports (as
``/v1/stats`` has them), the store's totals (tenants, adapters, versions, bytes charged)
with what full fine-tuned copies of the base model would take instead, and the top
adapters and tenants by requests, and the routing decisions by kind (counted by the
router of the ingress replica that answers, since it started; see
:func:`services.api._metrics.routing_decision_counts`). It is its own endpoint rather than
``/v1/stats`` because the page needs the store's totals and rankings, which ``/v1/stats``
does not carry, in one request per refresh. The hit-rate-over-time series are
accumulated by the page from successive samples (a page reload starts new series).

Cost: the store's part lists every visible tenant's adapters (one Redis round trip per
page of 1000 adapters, per tenant); it is computed at most once per ``summary_ttl_s``
per scope, however many pages poll. Failure mode: a store or replica error answers as
``/v1/stats`` would (see :mod:`services.api._errors`); the page shows it and keeps polling.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Protocol

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from adapter_store import AdapterStore
from adapter_store import TenantLimits
from services._settings import ServiceSettings
from services.api._auth import ApiKey
from services.api._auth import is_admin
from services.api._metrics import routing_decision_counts
from services.client import ReplicaStats
from services.exceptions import ResourceNotFoundError

__all__ = ["ASSETS", "ReplicaStatsSource", "dashboard_router"]

STATIC_DIR = Path(__file__).parent / "static"
# The only files served, by URL name: (file under STATIC_DIR, content type).
ASSETS: dict[str, tuple[str, str]] = {
    "": ("index.html", "text/html; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_TOP = 12
_SUMMARY_TTL_S = 5.0


class ReplicaStatsSource(Protocol):
    """Where the replicas' latest reports come from (the ingress's model gateway)."""

    async def replica_stats(self) -> list[ReplicaStats]: ...


@dataclass(frozen=True, slots=True)
class _Summary:
    """The store's part of the page for one scope (all tenants, or one)."""

    storage: dict[str, int]
    top_adapters: list[dict[str, Any]]
    top_tenants: list[dict[str, Any]]


def dashboard_router(
    store: AdapterStore,
    replicas: ReplicaStatsSource,
    settings: ServiceSettings,
    *,
    summary_ttl_s: float = _SUMMARY_TTL_S,
    clock: Callable[[], float] = time.monotonic,
) -> APIRouter:
    """The ``/dashboard`` routes (see the module docstring).

    The data endpoint reads the key and tells the admin key apart with the ingress's own
    functions, the ones ``/v1/stats`` uses, so the two endpoints cannot drift apart.
    """
    router = APIRouter()
    summaries: dict[str | None, tuple[float, _Summary]] = {}
    summaries_lock = threading.Lock()  # summary() runs on the threadpool

    def summary(tenant: str | None) -> _Summary:
        """``tenant``'s part, or every tenant's for ``None``; recomputed when stale."""
        with summaries_lock:
            now = clock()
            cached = summaries.get(tenant)
            if cached is not None and now - cached[0] < summary_ttl_s:
                return cached[1]
            # Drop stale scopes so tenants that stopped polling do not pile up.
            for scope in [s for s, (at, _) in summaries.items() if now - at >= summary_ttl_s]:
                del summaries[scope]
        tenants = store.list_tenants() if tenant is None else [tenant]
        fresh = _summarize(store, tenants, settings.limits.tenant_defaults())
        with summaries_lock:
            summaries[tenant] = (now, fresh)
        return fresh

    @router.get("/dashboard/data")
    async def dashboard_data(key: ApiKey) -> dict[str, Any]:
        """Everything the page draws, scoped by the key as ``/v1/stats`` is."""
        reports = await replicas.replica_stats()
        tenant = (
            None if is_admin(settings, key) else await run_in_threadpool(store.tenant_for_key, key)
        )
        part = await run_in_threadpool(summary, tenant)
        if tenant is not None:
            reports = [report.for_tenant(tenant) for report in reports]
        base = next((r for r in reports if r.base_model_bytes), None)
        base_bytes = base.base_model_bytes if base is not None else None
        # A full fine-tuned copy holds the unquantized weights, whatever the base holds.
        full_bytes = (base.base_model_full_bytes or base_bytes) if base is not None else None
        adapters = part.storage["adapters"]
        full_copies = full_bytes * adapters if full_bytes is not None else None
        return {
            "scope": "all" if tenant is None else "tenant",
            "tenant": tenant,
            "base_model": {
                "id": settings.base_model_id,
                "bytes": base_bytes,
                "full_bytes": full_bytes,
                "quantization": base.quantization if base is not None else None,
                "engine": base.engine if base is not None else None,
            },
            "replicas": [report.model_dump(exclude_none=True) for report in reports],
            "storage": {
                **part.storage,
                "full_copies_bytes": full_copies,
                "saved_bytes": (
                    full_copies - part.storage["bytes"] if full_copies is not None else None
                ),
            },
            "top_adapters": part.top_adapters,
            "top_tenants": part.top_tenants,
            # This ingress replica's router only; None (an empty state on the page)
            # until it has placed a request.
            "routing": routing_decision_counts() or None,
        }

    @router.get("/dashboard", response_class=FileResponse)
    async def dashboard_page() -> FileResponse:
        return _asset("")

    @router.get("/dashboard/static/{name}", response_class=FileResponse)
    async def dashboard_asset(name: str) -> FileResponse:
        return _asset(name)

    return router


def _asset(name: str) -> FileResponse:
    """One allow-listed asset. Raises ResourceNotFoundError (404) for any other name."""
    if name not in ASSETS:
        raise ResourceNotFoundError(f"no dashboard asset {name!r}")
    filename, media_type = ASSETS[name]
    return FileResponse(STATIC_DIR / filename, media_type=media_type, headers=_SECURITY_HEADERS)


def _summarize(store: AdapterStore, tenants: list[str], default_limits: TenantLimits) -> _Summary:
    """Totals and top lists over ``tenants`` (blocking: lists their adapters); each
    tenant's row carries its effective request limits, and whether it has its own."""
    adapters: list[dict[str, Any]] = []
    per_tenant: list[dict[str, Any]] = []
    versions = stored = 0
    for tenant in tenants:
        usage = store.get_usage(tenant)
        requests = 0
        for adapter in store.iter_adapters(tenant):
            versions += len(adapter.versions)
            requests += adapter.request_count
            adapters.append(
                {
                    "adapter": f"{tenant}/{adapter.name}",
                    "tenant": tenant,
                    "requests": adapter.request_count,
                    "versions": len(adapter.versions),
                    "origin": adapter.latest.origin,
                }
            )
        stored += usage.bytes
        own = store.get_limits(tenant)
        per_tenant.append(
            {
                "tenant": tenant,
                "requests": requests,
                "adapters": usage.adapters,
                "bytes": usage.bytes,
                "limits": dataclasses.asdict(own.over(default_limits)),
                "own_limits": own != TenantLimits(),
            }
        )
    return _Summary(
        storage={
            "tenants": len(tenants),
            "adapters": len(adapters),
            "trained": sum(1 for row in adapters if row["origin"] == "trained"),
            "versions": versions,
            "bytes": stored,
        },
        top_adapters=_top(adapters, "adapter"),
        top_tenants=_top(per_tenant, "tenant"),
    )


def _top(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The busiest rows first (ties by name), at most ``_TOP``."""
    return sorted(rows, key=lambda row: (-row["requests"], row[name]))[:_TOP]
