"""Adapters: push, list, show, alias, delete and download (``/v1/adapters``).

A tenant sees and uses only its own adapters, so another tenant's adapter is a plain
404. Blocking store calls run in the threadpool (sync endpoints, or
``run_in_threadpool``), never on the event loop.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from typing import Annotated

from fastapi import APIRouter
from fastapi import Query
from fastapi import Request
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from adapter_store import MAX_PAGE_SIZE
from adapter_store import AdapterInfo as StoredAdapter
from adapter_store import AdapterStore
from adapter_store import AdapterTooLargeError
from adapter_store import AdapterVersion
from adapter_store import read_adapter_upload
from services.api._auth import Context
from services.api._auth import Tenant
from services.client import AdapterInfo
from services.client import AdapterPage
from services.client import AdapterVersionInfo
from services.client import AliasUpdate
from services.client import Deleted
from services.client import Origin
from services.exceptions import BadRequestError

__all__ = ["adapter_info", "router", "version_info"]

router = APIRouter()

_UPLOAD_PARTS = ("files", "archive")
# Multipart boundaries and part headers on top of the files' bytes.
_MULTIPART_SLACK = 1 << 20


def version_info(version: AdapterVersion, aliases: list[str]) -> AdapterVersionInfo:
    """The wire form of a stored version (its fields by name) with its ``aliases``."""
    info = AdapterVersionInfo.model_validate(version, from_attributes=True)
    return info.model_copy(update={"aliases": aliases})


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


@router.post("/v1/adapters", status_code=201)
async def push_adapter(context: Context, request: Request, tenant: Tenant) -> AdapterVersionInfo:
    store = context.store
    with context.meter.failures("push"):
        async with _upload(request, store.limits.max_bytes) as upload:
            version = await run_in_threadpool(
                _push_files, store, tenant, upload, context.settings.base_model_id
            )
    context.meter.pushed(version.size_bytes)
    return version_info(version, ["latest"])


def _push_files(
    store: AdapterStore, tenant: str, upload: _Upload, base_model: str
) -> AdapterVersion:
    # Read in chunks from the parts Starlette spooled: a large file is copied into a
    # mapped temporary file, never held whole in memory (adapter_store._source).
    adapter = read_adapter_upload(upload.files, store.limits)
    return store.push(tenant, upload.name, adapter, base_model=base_model, origin=upload.origin)


@router.get("/v1/adapters")
def list_adapters(
    context: Context,
    tenant: Tenant,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
) -> AdapterPage:
    page = context.store.list_adapters(tenant, cursor=cursor, limit=limit)
    return AdapterPage(data=[adapter_info(a) for a in page.items], next_cursor=page.next_cursor)


@router.get("/v1/adapters/{name}")
def get_adapter(context: Context, name: str, tenant: Tenant) -> AdapterInfo:
    return adapter_info(context.store.get_adapter(tenant, name))


@router.get("/v1/adapters/{name}/versions/{version}")
def get_version(context: Context, name: str, version: int, tenant: Tenant) -> AdapterVersionInfo:
    store = context.store
    resolved = store.resolve(tenant, f"{name}@{version}")
    return version_info(resolved, _aliases_of(store.get_adapter(tenant, name), version))


@router.put("/v1/adapters/{name}/aliases/{alias}")
def set_alias(
    context: Context, name: str, alias: str, body: AliasUpdate, tenant: Tenant
) -> AdapterInfo:
    context.store.set_alias(tenant, f"{name}@{body.version}", alias)
    return adapter_info(context.store.get_adapter(tenant, name))


@router.delete("/v1/adapters/{name}/aliases/{alias}")
def remove_alias(context: Context, name: str, alias: str, tenant: Tenant) -> AdapterInfo:
    context.store.remove_alias(tenant, name, alias)
    return adapter_info(context.store.get_adapter(tenant, name))


@router.delete("/v1/adapters/{name}")
def delete_adapter(context: Context, name: str, tenant: Tenant) -> Deleted:
    context.store.delete(tenant, name)
    return Deleted(name=name)


@router.delete("/v1/adapters/{name}/versions/{version}")
def delete_version(context: Context, name: str, version: int, tenant: Tenant) -> Deleted:
    context.store.delete(tenant, f"{name}@{version}")
    return Deleted(name=name, version=version)


@router.get("/v1/adapters/{ref}/download", response_class=FileResponse)
def download_adapter(context: Context, ref: str, tenant: Tenant) -> FileResponse:
    workdir = Path(tempfile.mkdtemp(prefix="loramux-download-"))
    try:
        version = context.store.pull(tenant, ref, workdir / "adapter")
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


@dataclass(frozen=True, slots=True)
class _Upload:
    name: str
    origin: Origin
    files: dict[str, IO[bytes]]


@asynccontextmanager
async def _upload(request: Request, max_bytes: int) -> AsyncIterator[_Upload]:
    """The ``name`` and ``origin`` fields and the uploaded files (by file name), open
    for reading for the duration of the block.

    The body must declare its size (``Content-Length``): the cap is checked on it
    before Starlette reads the body, spooling each file part to disk past 1 MiB, which
    it would otherwise do without limit for a chunked body.

    Raises:
        HTTPException (411): no ``Content-Length`` (a chunked upload).
        BadRequestError: no name, an origin other than pushed or trained, or not one
            ``archive`` part or ``files`` parts.
        AdapterTooLargeError: the declared body is above ``max_bytes``.
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
        origin = form.get("origin") or "pushed"
        if origin not in ("pushed", "trained"):
            raise BadRequestError(f"origin {origin!r}: send 'pushed' (the default) or 'trained'")
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
        yield _Upload(name, origin, {part.filename or "upload": part.file for _, part in parts})
    finally:
        await form.close()
