"""OpenAI-compatible generation: ``/v1/completions``, ``/v1/chat/completions``,
``/v1/responses`` (mapped onto chat, :mod:`._responses`), ``/v1/models`` and
``/v1/models/{model}``.

``model`` names an adapter (``name``, ``name@3``, ``name:prod``) or, when it equals the
base model id, the base model alone; an adapter named like the base model is therefore
reachable only by version or alias. A request is resolved (three Redis round trips, in
the threadpool), checked against the request limits (400 naming the limit), admitted
under the tenant's rate and concurrency limits (429 with ``Retry-After``) and sent
through the gateway; the route waits for the first chunk so
that an error before any output still answers with its status. After that, an error
becomes one ``data: {"error": ...}`` event of the stream.

A replica that dies under a request (the gateway raises :class:`ReplicaLostError`) costs
its client nothing while the client has received nothing: the request goes to another
replica, up to ``replica_retries`` times. A whole (non-streamed) answer is therefore
collected before it is returned; a stream that had sent chunks ends with a
``replica_lost`` error event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from collections.abc import AsyncIterator
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from adapter_store import AdapterVersion
from adapter_store import ManifestNotFoundError
from services.api._auth import ApiContext
from services.api._auth import ApiKey
from services.api._auth import Context
from services.api._auth import Tenant
from services.api._errors import error_body
from services.api._gateway import ModelGateway
from services.api._openai import ResponseIds
from services.api._openai import ResponsePlan
from services.api._openai import chat_completion
from services.api._openai import chat_events
from services.api._openai import completion
from services.api._openai import completion_events
from services.api._openai import generation_request
from services.api._openai import response_plan
from services.api._request_limits import check_generation
from services.api._responses import ResponseRequest
from services.api._responses import chat_request
from services.api._responses import response_events
from services.api._responses import response_object
from services.client import ChatCompletionRequest
from services.client import CompletionRequest
from services.client import Model
from services.client import ModelList
from services.engine import GenerationChunk
from services.engine import GenerationRequest
from services.engine import GenerationResult
from services.exceptions import BadRequestError
from services.exceptions import ReplicaLostError

__all__ = ["PATHS", "router"]

logger = logging.getLogger(__name__)

router = APIRouter()

# The routes whose bodies BodySizeLimit bounds (uploads have their own cap).
PATHS = ("/v1/completions", "/v1/chat/completions")


def _resolve_model(context: ApiContext, key: str, model: str) -> tuple[str, AdapterVersion | None]:
    """Authenticate and resolve ``model`` to the tenant and the version (blocking:
    three Redis round trips)."""
    store, base_model = context.store, context.settings.base_model_id
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


async def _start(
    context: ApiContext,
    endpoint: str,
    key: str,
    body: CompletionRequest | ChatCompletionRequest,
) -> AsyncGenerator[GenerationChunk, None]:
    """Resolve, validate and send; wait for the first chunk so that an error before any
    output still answers with its status. The request is metered as ``endpoint``."""
    meter = context.meter
    with meter.failures(endpoint):
        tenant, adapter = await run_in_threadpool(_resolve_model, context, key, body.model)
        request = generation_request(
            body, adapter, default_max_tokens=context.settings.default_max_tokens
        )
        tokens = check_generation(body, request.sampling.max_tokens, context.settings.limits)
        chunks = _admitted(context, tenant, tokens, request, whole=not body.stream)
        try:
            first = await anext(chunks)
        except BaseException:
            await chunks.aclose()
            raise
    return meter.metered(endpoint, tenant, _prepend(first, chunks))


async def _admitted(
    context: ApiContext, tenant: str, tokens: int, request: GenerationRequest, *, whole: bool
) -> AsyncGenerator[GenerationChunk, None]:
    """The gateway's chunks under one admission of ``tenant``: refused (429) before
    anything is sent, the lease released when the stream ends, fails or is closed.
    Admission and release are Redis round trips, so they run in the threadpool."""
    lease = context.admission.admitted(tenant, tokens)
    await run_in_threadpool(lease.__enter__)
    try:
        retries = context.settings.replica_retries
        async with aclosing(
            _surviving_replicas(context.gateway, request, retries, whole)
        ) as chunks:
            async for chunk in chunks:
                yield chunk
    finally:
        await run_in_threadpool(lease.__exit__, None, None, None)


async def _surviving_replicas(
    gateway: ModelGateway, request: GenerationRequest, retries: int, whole: bool
) -> AsyncGenerator[GenerationChunk, None]:
    """``request``'s chunks, sent again (up to ``retries`` times) to another replica when
    its replica dies before the client has received anything; with ``whole`` the chunks
    are held until the answer is complete, so that a death at any point is retried.

    Raises:
        ReplicaLostError: the replica died after chunks had been passed on, or on every
            attempt.
    """
    attempt = 0
    while True:
        passed_on = 0
        try:
            async with aclosing(gateway.generate(request)) as chunks:
                if whole:
                    held = [chunk async for chunk in chunks]
                    for chunk in held:
                        yield chunk
                    return
                async for chunk in chunks:
                    passed_on += 1
                    yield chunk
            return
        except ReplicaLostError as exc:
            if passed_on:
                raise ReplicaLostError(
                    f"{exc.message}; the stream had sent {passed_on} chunks, so it was not retried: "
                    "send the request again"
                ) from exc
            if attempt == retries:
                raise ReplicaLostError(
                    f"{exc.message}; tried {retries + 1} times (LORAMUX_REPLICA_RETRIES={retries})"
                ) from exc
            attempt += 1
            logger.warning("retry %d of a request on another replica: %s", attempt, exc.message)


@router.post("/v1/completions", response_model=None)
async def completions(context: Context, key: ApiKey, body: CompletionRequest) -> Any:
    return await _answer_choices(
        context, "completions", key, body, "cmpl", completion, completion_events
    )


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(context: Context, key: ApiKey, body: ChatCompletionRequest) -> Any:
    return await _answer_choices(
        context, "chat_completions", key, body, "chatcmpl", chat_completion, chat_events
    )


@router.post("/v1/responses", response_model=None)
async def responses(context: Context, key: ApiKey, body: ResponseRequest) -> Any:
    ids = ResponseIds("resp", body.model)
    return await _answer(
        context,
        "responses",
        key,
        chat_request(body),
        whole=lambda results: response_object(ids, body, results[0]).model_dump(),
        events=lambda chunks: response_events(ids, body, chunks),
    )


async def _answer_choices(
    context: ApiContext,
    endpoint: str,
    key: str,
    body: CompletionRequest | ChatCompletionRequest,
    id_prefix: str,
    whole: Callable[[ResponseIds, list[GenerationResult], ResponsePlan], BaseModel],
    events: Callable[
        [ResponseIds, ResponsePlan, AsyncIterator[GenerationChunk]], AsyncIterator[BaseModel]
    ],
) -> Any:
    """:func:`_answer` for the choice-shaped endpoints (completions and chat): the ids
    and the plan of choices (``n``, ``echo``, tools) come from the request."""
    ids, plan = ResponseIds(id_prefix, body.model), response_plan(body)
    return await _answer(
        context,
        endpoint,
        key,
        body,
        whole=lambda results: whole(ids, results, plan).model_dump(exclude_none=True),
        events=lambda chunks: events(ids, plan, chunks),
    )


async def _answer(
    context: ApiContext,
    endpoint: str,
    key: str,
    body: CompletionRequest | ChatCompletionRequest,
    whole: Callable[[list[GenerationResult]], dict[str, Any]],
    events: Callable[[AsyncIterator[GenerationChunk]], AsyncIterator[BaseModel]],
) -> Any:
    """Start the request; answer one JSON object (``whole`` of the per-choice results)
    or, with ``stream``, server-sent ``events`` of the chunks."""
    chunks = await _start(context, endpoint, key, body)
    if not body.stream:
        return whole(GenerationResult.choices_from_chunks([chunk async for chunk in chunks]))
    return StreamingResponse(_sse(events(chunks)), media_type="text/event-stream")


@router.get("/v1/models", response_model_exclude_none=True)
def models(context: Context, tenant: Tenant) -> ModelList:
    base_model = context.settings.base_model_id
    data = [_model_card(context, tenant, base_model, None)]
    data += [
        Model(
            id=adapter.name,
            created=int(adapter.created_at),
            owned_by=tenant,
            root=base_model,
            parent=base_model,
        )
        for adapter in context.store.iter_adapters(tenant)
    ]
    return ModelList(data=data)


@router.get("/v1/models/{model:path}")
def get_model(context: Context, model: str, tenant: Tenant) -> Model:
    """The base model's card or, by any reference, one of the tenant's adapters'."""
    base_model = context.settings.base_model_id
    version = None if model == base_model else context.store.resolve(tenant, model)
    return _model_card(context, tenant, model, version)


def _model_card(
    context: ApiContext, tenant: str, model: str, version: AdapterVersion | None
) -> Model:
    base_model = context.settings.base_model_id
    if version is None:
        try:  # the replicas register the manifest, with its quantization, as they start
            quantization = context.store.get_manifest(base_model).quantization
        except ManifestNotFoundError:
            quantization = None
        return Model(id=base_model, owned_by="loramux", root=base_model, quantization=quantization)
    return Model(
        id=model,
        created=int(version.created_at),
        owned_by=tenant,
        root=base_model,
        parent=base_model,
    )


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
