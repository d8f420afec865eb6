"""The Responses API (``POST /v1/responses``): text in, text out, over the chat path.

A Responses request is translated into a chat request (``instructions`` as the system
message, ``input`` as the conversation) and goes through the same validation, routing
and engine as chat, so every adapter and limit applies unchanged. The response and the
stream events follow OpenAI's shapes. Nothing is stored: ``store`` is accepted and
answered as false, and ``previous_response_id`` is refused (the conversation must be
sent whole, as with chat).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field

from services.api._openai import ResponseIds
from services.client import ChatCompletionRequest
from services.client import ContentPart
from services.client import ResponseFormat
from services.engine import GenerationChunk
from services.engine import GenerationResult
from services.exceptions import BadRequestError

__all__ = [
    "ResponseEvent",
    "ResponseObject",
    "ResponseRequest",
    "chat_request",
    "response_events",
    "response_object",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResponseInputMessage(_Request):
    """One message of ``input`` (``type`` "message", or left out)."""

    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]


class TextFormat(_Request):
    """``text.format``: plain text, any JSON object, or JSON matching ``schema``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextOptions(_Request):
    format: TextFormat = Field(default_factory=TextFormat)


class ResponseRequest(_Request):
    """``POST /v1/responses``: the parameters loramux serves (unknown ones are a 400)."""

    model: str = Field(min_length=1)
    input: str | list[ResponseInputMessage]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stream: bool = False
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    text: TextOptions | None = None
    previous_response_id: str | None = None


class ResponseObject(BaseModel):
    """A response, or the ``response`` inside a stream's lifecycle events."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["response"] = "response"
    created_at: int
    model: str
    status: Literal["in_progress", "completed", "incomplete"]
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None = None
    incomplete_details: dict[str, str] | None = None
    error: None = None


class ResponseEvent(BaseModel):
    """One stream event; ``type`` names it and the other fields are the event's."""

    model_config = ConfigDict(extra="allow")

    type: str
    sequence_number: int


def chat_request(body: ResponseRequest) -> ChatCompletionRequest:
    """The chat request that ``body`` means.

    Raises:
        BadRequestError: ``previous_response_id`` (nothing is stored to continue from).
    """
    if body.previous_response_id is not None:
        raise BadRequestError(
            "previous_response_id needs stored responses, which loramux does not keep; "
            "send the whole conversation in input"
        )
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
    else:
        messages += [m.model_dump(exclude={"type"}) for m in body.input]
    fmt = body.text.format if body.text is not None else None
    response_format = None
    if fmt is not None and fmt.type != "text":
        response_format = ResponseFormat(
            type=fmt.type,
            json_schema=None
            if fmt.type == "json_object"
            else {"name": fmt.name or "response", "schema": fmt.schema_ or {}},
        )
    return ChatCompletionRequest(
        model=body.model,
        messages=messages,
        max_completion_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        user=body.user,
        response_format=response_format,
        stream=body.stream,
    )


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    content = [] if status == "in_progress" else [part]
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _response(
    ids: ResponseIds, body: ResponseRequest, status: str, output: list[dict[str, Any]], **extra: Any
) -> ResponseObject:
    return ResponseObject(
        id=ids.id,
        created_at=ids.created,
        model=ids.model,
        status=status,
        output=output,
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        metadata=body.metadata or {},
        parallel_tool_calls=False,
        tool_choice="none",
        tools=[],
        store=False,
        **extra,
    )


def response_object(
    ids: ResponseIds, body: ResponseRequest, result: GenerationResult
) -> ResponseObject:
    """The finished response: one assistant message; ``incomplete`` at the token limit."""
    complete = result.finish_reason == "stop"
    usage = {
        "input_tokens": result.usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": result.usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": result.usage.total_tokens,
    }
    return _response(
        ids,
        body,
        "completed" if complete else "incomplete",
        [_message_item(_item_id(ids), result.text, "completed")],
        usage=usage,
        incomplete_details=None if complete else {"reason": "max_output_tokens"},
    )


def _item_id(ids: ResponseIds) -> str:
    return "msg_" + ids.id.removeprefix("resp-")


async def response_events(
    ids: ResponseIds, body: ResponseRequest, chunks: AsyncIterator[GenerationChunk]
) -> AsyncIterator[BaseModel]:
    """OpenAI's event sequence: created, in_progress, the item and its text part added,
    one ``output_text.delta`` per piece, then the done events and ``completed`` (or
    ``incomplete``) with the whole response."""
    sequence = iter(range(1 << 62))
    item_id = _item_id(ids)
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}

    def event(type_: str, **fields: Any) -> ResponseEvent:
        return ResponseEvent(type=type_, sequence_number=next(sequence), **fields)

    started = _response(ids, body, "in_progress", [])
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    yield event(
        "response.output_item.added",
        output_index=0,
        item=_message_item(item_id, "", "in_progress"),
    )
    empty_part = {"type": "output_text", "text": "", "annotations": []}
    yield event("response.content_part.added", **where, part=empty_part)
    received: list[GenerationChunk] = []
    async for chunk in chunks:
        received.append(chunk)
        if chunk.text:
            yield event("response.output_text.delta", **where, delta=chunk.text, logprobs=[])
    final = response_object(ids, body, GenerationResult.from_chunks(received))
    text = final.output[0]["content"][0]["text"]
    yield event("response.output_text.done", **where, text=text, logprobs=[])
    yield event("response.content_part.done", **where, part=final.output[0]["content"][0])
    yield event("response.output_item.done", output_index=0, item=final.output[0])
    yield event(f"response.{final.status}", response=final)
