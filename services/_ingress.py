"""The HTTP API: OpenAI-compatible generation, adapters, tenants, health and stats.

:func:`create_api` builds the FastAPI app over an :class:`AdapterStore` and a
:class:`ModelGateway` (how requests reach the model replicas), so the API is the same
whether the gateway is Ray Serve (:class:`ServeGateway`, in production) or anything
else. :class:`IngressServer` is the Ray Serve ingress deployment's class.

Tenancy: ``Authorization: Bearer <key>`` maps to one tenant (one Redis round trip); a
tenant sees and uses only its own adapters, so another tenant's adapter is a plain 404.
The admin key (:attr:`ServiceSettings.admin_key`) manages tenants, keys and quotas and
is no tenant. ``model`` names an adapter (``name``, ``name@3``, ``name:prod``) or, when
it equals the base model id, the base model alone; an adapter named like the base
model is therefore reachable only by version or alias.

Blocking store calls run in the threadpool (sync endpoints and dependencies, or
``run_in_threadpool``), never on the event loop. Errors answer as
:mod:`services._errors` maps them.
"""

from __future__ import annotations

import secrets
import shutil
import tarfile
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from adapter_store import AdapterInfo as StoredAdapter
from adapter_store import AdapterStore, AdapterTooLargeError, AdapterVersion, read_adapter_upload
from services._api_models import (
    AdapterInfo,
    AdapterPage,
    AdapterVersionInfo,
    AliasUpdate,
    ChatCompletionRequest,
    CompletionRequest,
    Deleted,
    Health,
    KeyRevoke,
    KeyRevoked,
    Model,
    ModelList,
    QuotaUpdate,
    TenantCreate,
    TenantCreated,
    TenantUsage,
)
from services._errors import error_body, install_error_handlers
from services._metrics import IngressMetrics
from services._openai import (
    ResponseIds,
    chat_completion,
    chat_events,
    completion,
    completion_events,
    generation_request,
    response_plan,
)
from services._responses import ResponseRequest, chat_request, response_events, response_object
from services._settings import ServiceSettings
from services.engine import GenerationChunk, GenerationRequest, GenerationResult
from services.exceptions import (
    AuthenticationError,
    BadRequestError,
    PermissionDeniedError,
    ServiceUnavailableError,
)

__all__ = ["IngressServer", "ModelGateway", "ServeGateway", "create_api"]

_UPLOAD_PARTS = ("files", "archive")
_LIST_PAGE = 1000
# Multipart boundaries and part headers on top of the files' bytes.
_MULTIPART_SLACK = 1 << 20
# A replica's stats fields a tenant key sees (besides its own residency): configuration,
# no counter. An allow-list, so a counter added to the replica's report later stays
# hidden from tenants: counters (requests, queue, hits, loads) sum every tenant's traffic.
_TENANT_REPLICA_FIELDS = ("replica_id", "gpu_slots", "base_model_bytes")


class ModelGateway(Protocol):
    """How the ingress reaches the model replicas."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the request's chunks from a replica; closing the iterator cancels it."""
        ...

    async def replica_stats(self) -> list[dict[str, Any]]:
        """The live replicas' latest statistics."""
        ...


class ServeGateway:
    """The model deployment behind Ray Serve handles, routed by adapter key."""

    def __init__(self, model: Any, board: Any) -> None:  # DeploymentHandles
        self._model = model
        self._board = board

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        key = request.adapter.key if request.adapter is not None else ""
        response = self._model.options(stream=True, multiplexed_model_id=key).generate.remote(
            request
        )
        finished = False
        try:
            async for chunk in response:
                yield chunk
            finished = True
        finally:
            if not finished:
                response.cancel()  # the client went away: free the batch row

    async def replica_stats(self) -> list[dict[str, Any]]:
        return await self._board.snapshot.remote()


def _bearer(authorization: str | None) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationError("missing API key: send the header 'Authorization: Bearer KEY'")
    return key.strip()


async def api_key(authorization: Annotated[str | None, Header()] = None) -> str:
    """The request's bearer key. Raises AuthenticationError (401) when there is none."""
    return _bearer(authorization)


ApiKey = Annotated[str, Depends(api_key)]


def tenant_of(request: Request, key: ApiKey) -> str:
    """The tenant of the request's key (blocking: FastAPI runs it in the threadpool).

    Raises:
        AuthenticationError (401): no key, or an unknown or revoked one.
    """
    return request.app.state.store.tenant_for_key(key)


Tenant = Annotated[str, Depends(tenant_of)]


def _is_admin(settings: ServiceSettings, key: str) -> bool:
    expected = settings.admin_key
    return expected is not None and secrets.compare_digest(
        key.encode(), expected.get_secret_value().encode()
    )


async def require_admin(request: Request, key: ApiKey) -> None:
    """Raises PermissionDeniedError (403) unless the key is the admin key."""
    if not _is_admin(request.app.state.settings, key):
        raise PermissionDeniedError("this endpoint needs the admin key")


Admin = Depends(require_admin)


def version_info(version: AdapterVersion, aliases: list[str]) -> AdapterVersionInfo:
    return AdapterVersionInfo(
        tenant=version.tenant,
        name=version.name,
        version=version.version,
        key=version.key,
        digest=version.digest,
        config_digest=version.config_digest,
        size_bytes=version.size_bytes,
        rank=version.rank,
        base_model=version.base_model,
        created_at=version.created_at,
        aliases=aliases,
    )


def adapter_info(adapter: StoredAdapter) -> AdapterInfo:
    latest = adapter.latest
    return AdapterInfo(
        tenant=adapter.tenant,
        name=adapter.name,
        versions=list(adapter.versions),
        aliases=dict(adapter.aliases),
        latest=version_info(latest, _aliases_of(adapter, latest.version)),
    )


def _aliases_of(adapter: StoredAdapter, version: int) -> list[str]:
    return sorted(alias for alias, v in adapter.aliases.items() if v == version)


async def _sse(events: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    """Server-sent events: one ``data:`` per model, ``[DONE]`` at the end; an error
    after the stream started becomes one ``data: {"error": ...}`` event instead."""
    try:
        async for event in events:
            yield f"data: {event.model_dump_json(exclude_none=True)}\n\n"
        yield "data: [DONE]\n\n"
    except Exception as exc:
        yield f"data: {error_body(exc)}\n\n"


async def _prepend(
    first: GenerationChunk, rest: AsyncGenerator[GenerationChunk, None]
) -> AsyncGenerator[GenerationChunk, None]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


def create_api(store: AdapterStore, gateway: ModelGateway, settings: ServiceSettings) -> FastAPI:
    """The loramux HTTP API over ``store`` and ``gateway`` (see the module docstring)."""
    api = FastAPI(title="loramux", version="0.1.0")
    api.state.store = store
    api.state.settings = settings
    install_error_handlers(api)
    base_model = settings.base_model_id
    meter = IngressMetrics(tenant_label=settings.metrics_tenant_label)

    # --- generation ---------------------------------------------------------------

    def resolve_model(key: str, model: str) -> tuple[str, AdapterVersion | None]:
        """Authenticate and resolve ``model`` to the tenant and the version (blocking:
        three Redis round trips)."""
        tenant = store.tenant_for_key(key)
        if model == base_model:
            return tenant, None
        version = store.resolve(tenant, model)
        if version.base_model != base_model:
            raise BadRequestError(
                f"adapter {version.key} was pushed for base model {version.base_model!r}; "
                f"this service serves {base_model!r}"
            )
        store.record_usage(version)
        return tenant, version

    async def start(
        endpoint: str, key: str, body: CompletionRequest | ChatCompletionRequest
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Resolve, validate and send; wait for the first chunk so that an error before
        any output still answers with its status. The request is metered as ``endpoint``."""
        with meter.failures(endpoint):
            tenant, adapter = await run_in_threadpool(resolve_model, key, body.model)
            request = generation_request(
                body, adapter, default_max_tokens=settings.default_max_tokens
            )
            chunks = gateway.generate(request)
            try:
                first = await anext(chunks)
            except BaseException:
                await chunks.aclose()
                raise
        return meter.metered(endpoint, tenant, _prepend(first, chunks))

    @api.post("/v1/completions", response_model=None)
    async def completions(key: ApiKey, body: CompletionRequest) -> Any:
        ids = ResponseIds("cmpl", body.model)
        chunks = await start("completions", key, body)
        plan = response_plan(body)
        if not body.stream:
            results = GenerationResult.choices_from_chunks([chunk async for chunk in chunks])
            return completion(ids, results, plan).model_dump(exclude_none=True)
        events = completion_events(ids, plan, chunks)
        return StreamingResponse(_sse(events), media_type="text/event-stream")

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(key: ApiKey, body: ChatCompletionRequest) -> Any:
        ids = ResponseIds("chatcmpl", body.model)
        chunks = await start("chat_completions", key, body)
        plan = response_plan(body)
        if not body.stream:
            results = GenerationResult.choices_from_chunks([chunk async for chunk in chunks])
            return chat_completion(ids, results, plan).model_dump(exclude_none=True)
        events = chat_events(ids, plan, chunks)
        return StreamingResponse(_sse(events), media_type="text/event-stream")

    @api.post("/v1/responses", response_model=None)
    async def responses(key: ApiKey, body: ResponseRequest) -> Any:
        ids = ResponseIds("resp", body.model)
        chunks = await start("responses", key, chat_request(body))
        if not body.stream:
            results = GenerationResult.choices_from_chunks([chunk async for chunk in chunks])
            return response_object(ids, body, results[0]).model_dump()
        events = response_events(ids, body, chunks)
        return StreamingResponse(_sse(events), media_type="text/event-stream")

    @api.get("/v1/models")
    def models(tenant: Tenant) -> ModelList:
        data = [model_card(tenant, base_model, None)]
        data += [
            Model(
                id=adapter.name,
                created=int(adapter.created_at),
                owned_by=tenant,
                root=base_model,
                parent=base_model,
            )
            for adapter in _all_adapters(store, tenant)
        ]
        return ModelList(data=data)

    @api.get("/v1/models/{model:path}")
    def get_model(model: str, tenant: Tenant) -> Model:
        """The base model's card or, by any reference, one of the tenant's adapters'."""
        version = None if model == base_model else store.resolve(tenant, model)
        return model_card(tenant, model, version)

    def model_card(tenant: str, model: str, version: AdapterVersion | None) -> Model:
        if version is None:
            return Model(id=base_model, owned_by="loramux", root=base_model)
        return Model(
            id=model,
            created=int(version.created_at),
            owned_by=tenant,
            root=base_model,
            parent=base_model,
        )

    # --- adapters -----------------------------------------------------------------

    @api.post("/v1/adapters", status_code=201)
    async def push_adapter(request: Request, tenant: Tenant) -> AdapterVersionInfo:
        with meter.failures("push"):
            name, files = await _read_upload(request, store.limits.max_bytes)
            version = await run_in_threadpool(push_files, tenant, name, files)
        meter.pushed(version.size_bytes)
        return version_info(version, ["latest"])

    def push_files(tenant: str, name: str, files: dict[str, bytes]) -> AdapterVersion:
        adapter = read_adapter_upload(files, store.limits)
        return store.push(tenant, name, adapter, base_model=base_model)

    @api.get("/v1/adapters")
    def list_adapters(
        tenant: Tenant,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=_LIST_PAGE)] = 100,
    ) -> AdapterPage:
        page = store.list_adapters(tenant, cursor=cursor, limit=limit)
        return AdapterPage(data=[adapter_info(a) for a in page.items], next_cursor=page.next_cursor)

    @api.get("/v1/adapters/{name}")
    def get_adapter(name: str, tenant: Tenant) -> AdapterInfo:
        return adapter_info(store.get_adapter(tenant, name))

    @api.get("/v1/adapters/{name}/versions/{version}")
    def get_version(name: str, version: int, tenant: Tenant) -> AdapterVersionInfo:
        resolved = store.resolve(tenant, f"{name}@{version}")
        return version_info(resolved, _aliases_of(store.get_adapter(tenant, name), version))

    @api.put("/v1/adapters/{name}/aliases/{alias}")
    def set_alias(name: str, alias: str, body: AliasUpdate, tenant: Tenant) -> AdapterInfo:
        store.set_alias(tenant, f"{name}@{body.version}", alias)
        return adapter_info(store.get_adapter(tenant, name))

    @api.delete("/v1/adapters/{name}/aliases/{alias}")
    def remove_alias(name: str, alias: str, tenant: Tenant) -> AdapterInfo:
        store.remove_alias(tenant, name, alias)
        return adapter_info(store.get_adapter(tenant, name))

    @api.delete("/v1/adapters/{name}")
    def delete_adapter(name: str, tenant: Tenant) -> Deleted:
        store.delete(tenant, name)
        return Deleted(name=name)

    @api.delete("/v1/adapters/{name}/versions/{version}")
    def delete_version(name: str, version: int, tenant: Tenant) -> Deleted:
        store.delete(tenant, f"{name}@{version}")
        return Deleted(name=name, version=version)

    @api.get("/v1/adapters/{ref}/download", response_class=FileResponse)
    def download_adapter(ref: str, tenant: Tenant) -> FileResponse:
        workdir = Path(tempfile.mkdtemp(prefix="loramux-download-"))
        try:
            version = store.pull(tenant, ref, workdir / "adapter")
            archive = workdir / "adapter.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                for path in sorted((workdir / "adapter").iterdir()):
                    tar.add(path, arcname=path.name)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return FileResponse(
            archive,
            media_type="application/gzip",
            filename=f"{version.name}-{version.version}.tar.gz",
            background=BackgroundTask(shutil.rmtree, workdir, ignore_errors=True),
        )

    # --- tenants (admin) ----------------------------------------------------------

    @api.post("/v1/tenants", status_code=201, dependencies=[Admin])
    def create_tenant(body: TenantCreate) -> TenantCreated:
        tenant, key = store.create_tenant(body.name)
        return TenantCreated(name=tenant.name, api_key=key)

    @api.post("/v1/tenants/{name}/keys", status_code=201, dependencies=[Admin])
    def issue_key(name: str) -> TenantCreated:
        return TenantCreated(name=name, api_key=store.issue_key(name))

    @api.post("/v1/keys/revoke", dependencies=[Admin])
    def revoke_key(body: KeyRevoke) -> KeyRevoked:
        return KeyRevoked(tenant=store.revoke_key(body.api_key))

    @api.put("/v1/tenants/{name}/quota", dependencies=[Admin])
    def set_quota(name: str, body: QuotaUpdate) -> TenantUsage:
        store.set_quota(name, max_adapters=body.max_adapters, max_bytes=body.max_bytes)
        return _usage(store, name)

    @api.get("/v1/tenants/{name}/usage", dependencies=[Admin])
    def tenant_usage(name: str) -> TenantUsage:
        return _usage(store, name)

    # --- health and stats ---------------------------------------------------------

    @api.get("/healthz")
    async def healthz() -> Health:
        live = len(await gateway.replica_stats())
        if live == 0:
            raise ServiceUnavailableError(
                f"no model replica is ready yet (0 of {settings.replicas}); retry shortly"
            )
        return Health(status="ok", replicas=live, expected_replicas=settings.replicas)

    @api.get("/v1/stats")
    async def stats(key: ApiKey) -> dict[str, Any]:
        """Per replica: residency by tier, hit rates, load, loads. The admin key sees
        all of it and every tenant's usage. A tenant key sees, per replica, only its id,
        its GPU slots, the base model's size and the residency of the tenant's own
        adapters: the request, queue, hit/miss, load and load-error counters are shared
        by all tenants and would reveal the others' traffic, so they are left out. It
        also sees its own usage and per-adapter request counts.

        Raises:
            AuthenticationError (401): no key, or an unknown or revoked one; checked
                before the replicas are asked.
        """
        if _is_admin(settings, key):
            tenants = await run_in_threadpool(_all_usage, store)
            return {"replicas": await gateway.replica_stats(), "tenants": tenants}
        tenant = await run_in_threadpool(store.tenant_for_key, key)
        own = await run_in_threadpool(_tenant_counters, store, tenant)
        replicas = await gateway.replica_stats()
        return {"replicas": [_only_tenant(r, tenant) for r in replicas], **own}

    # Imported here, not at the top: the dashboard reuses this module's access rules.
    from services._dashboard import dashboard_router

    api.include_router(dashboard_router(store, gateway, settings))
    return api


async def _read_upload(request: Request, max_bytes: int) -> tuple[str, dict[str, bytes]]:
    """The ``name`` field and the uploaded files (by file name), each read up to the cap.

    The body must declare its size (``Content-Length``): the cap is checked on it
    before Starlette spools the file parts to disk, which it would otherwise do without
    limit for a chunked body.

    Raises:
        HTTPException (411): no ``Content-Length`` (a chunked upload).
        BadRequestError: no name, or not one ``archive`` part or ``files`` parts.
        AdapterTooLargeError: the declared body, or a part, is above ``max_bytes``.
    """
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        raise HTTPException(
            411,
            "an adapter upload needs a Content-Length header: send the multipart body "
            "with its size, not chunked (the loramux SDK and curl -F do)",
        )
    if int(declared) > max_bytes + _MULTIPART_SLACK:
        # Refused before Starlette spools the parts to disk.
        raise AdapterTooLargeError(
            f"the upload is {int(declared)} bytes, above the {max_bytes}-byte adapter cap"
        )
    form = await request.form(max_files=4, max_fields=8)
    try:
        name = form.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequestError("the upload needs a 'name' form field: the adapter's name")
        parts = [
            (field, part)
            for field, part in form.multi_items()
            if field in _UPLOAD_PARTS and isinstance(part, UploadFile)
        ]
        fields = {field for field, _ in parts}
        if len(fields) != 1 or (fields == {"archive"} and len(parts) != 1) or not parts:
            raise BadRequestError(
                "upload either one 'archive' part (.tar.gz, .tar or .zip) or the two 'files' "
                "parts adapter_config.json and adapter_model.safetensors"
            )
        files: dict[str, bytes] = {}
        for _, part in parts:
            # One byte past the cap is enough for the store's reader to refuse it.
            files[part.filename or "upload"] = await part.read(max_bytes + 1)
        return name, files
    finally:
        await form.close()


def _all_adapters(store: AdapterStore, tenant: str) -> list[StoredAdapter]:
    adapters: list[StoredAdapter] = []
    cursor: str | None = None
    while True:
        page = store.list_adapters(tenant, cursor=cursor, limit=_LIST_PAGE)
        adapters += page.items
        cursor = page.next_cursor
        if cursor is None:
            return adapters


def _usage(store: AdapterStore, tenant: str) -> TenantUsage:
    usage = store.get_usage(tenant)
    return TenantUsage(
        tenant=usage.tenant,
        adapters=usage.adapters,
        bytes=usage.bytes,
        max_adapters=usage.max_adapters,
        max_bytes=usage.max_bytes,
    )


def _all_usage(store: AdapterStore) -> dict[str, dict[str, Any]]:
    return {tenant: _usage(store, tenant).model_dump() for tenant in store.list_tenants()}


def _tenant_counters(store: AdapterStore, tenant: str) -> dict[str, Any]:
    return {
        "tenant": _usage(store, tenant).model_dump(),
        "adapters": {
            adapter.name: {
                "requests": adapter.request_count,
                "last_used_at": adapter.last_used_at,
            }
            for adapter in _all_adapters(store, tenant)
        },
    }


def _only_tenant(replica: dict[str, Any], tenant: str) -> dict[str, Any]:
    """What ``tenant`` may see of a replica's stats: the fields in
    :data:`_TENANT_REPLICA_FIELDS`, and residency cut down to its own adapters."""
    prefix = f"{tenant}/"
    residency = {
        tier: [key for key in keys if key.startswith(prefix)]
        for tier, keys in replica["residency"].items()
    }
    shared = {field: replica[field] for field in _TENANT_REPLICA_FIELDS if field in replica}
    return {**shared, "residency": residency}


class IngressServer:
    """The ingress deployment: the API over the store and the model deployment.

    Wrapped by ``serve.ingress()`` in :mod:`services._app`; Ray Serve calls
    :meth:`__serve_build_asgi_app__` after the constructor.
    """

    def __init__(self, settings: ServiceSettings, model: Any, board: Any) -> None:
        self._settings = settings
        self._store = AdapterStore.from_settings(settings.store)
        self._gateway = ServeGateway(model, board)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self._store, self._gateway, self._settings)

    def __del__(self) -> None:
        self._store.close()
