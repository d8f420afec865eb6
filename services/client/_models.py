"""The HTTP API's wire models, shared by the SDK and the ingress (pydantic only).

Completions, chat and models follow the OpenAI API shapes field for field, so any
OpenAI client works against loramux; ``model`` is an adapter reference (``name``,
``name@3``, ``name:prod``) or the base model id. The adapter, tenant and error models
are loramux's own.

Requests forbid unknown fields, so a misspelt or unsupported parameter is a 400 that
names it rather than a silently ignored setting. Responses ignore unknown fields, so an
older client keeps working against a newer server.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AdapterInfo",
    "AdapterPage",
    "AdapterVersionInfo",
    "AliasUpdate",
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionChunkChoice",
    "ChatCompletionRequest",
    "ChatMessage",
    "ChoiceDelta",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "Deleted",
    "ErrorBody",
    "ErrorDetail",
    "FinishReason",
    "Health",
    "KeyRevoke",
    "KeyRevoked",
    "Model",
    "ModelList",
    "QuotaUpdate",
    "TenantCreate",
    "TenantCreated",
    "TenantUsage",
    "Usage",
]

FinishReason = Literal["stop", "length"]
"""Why generation ended: a stop sequence or end of text, or ``max_tokens``."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- errors -------------------------------------------------------------------------


class ErrorDetail(_Response):
    """What went wrong: ``type`` is a stable machine name, ``message`` says how to fix it."""

    type: str
    message: str
    param: str | None = None
    code: str | None = None


class ErrorBody(_Response):
    """The body of every error response, and of an error event inside a stream."""

    error: ErrorDetail


# --- completions (OpenAI shapes) ----------------------------------------------------


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _SamplingParams(_Request):
    """The sampling parameters completions and chat share, with OpenAI's defaults."""

    model: str = Field(min_length=1, description="adapter reference or base model id")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None


class CompletionRequest(_SamplingParams):
    """``POST /v1/completions``."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False


class CompletionChoice(_Response):
    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: dict[str, Any] | None = None


class Completion(_Response):
    """A completion, or one chunk of a streamed completion (same shape, as in OpenAI)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChatMessage(_Response):
    """One message of a conversation, in requests and responses.

    Extra fields (OpenAI's ``name``, ``refusal``...) are ignored on both sides.
    """

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_SamplingParams):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class ChatCompletionChoice(_Response):
    index: int
    message: ChatMessage
    finish_reason: FinishReason | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChoiceDelta(_Response):
    """The new part of a streamed message: the role first, then content pieces."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionChunkChoice(_Response):
    index: int
    delta: ChoiceDelta
    finish_reason: FinishReason | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(_Response):
    """One ``data:`` event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class Model(_Response):
    """One entry of ``GET /v1/models``: the base model or one of the tenant's adapters."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[Model]


# --- adapters -----------------------------------------------------------------------


class AdapterVersionInfo(_Response):
    """One immutable adapter version (``POST /v1/adapters`` answers with the new one)."""

    tenant: str
    name: str
    version: int
    key: str = Field(description="tenant/name@version, the routing and cache key")
    digest: str = Field(description="sha256 of adapter_model.safetensors")
    config_digest: str = Field(description="sha256 of adapter_config.json")
    size_bytes: int
    rank: int
    base_model: str
    created_at: float
    aliases: list[str] = Field(default_factory=list)


class AdapterInfo(_Response):
    """An adapter: its versions, its aliases (alias -> version) and its latest version."""

    tenant: str
    name: str
    versions: list[int]
    aliases: dict[str, int]
    latest: AdapterVersionInfo


class AdapterPage(_Response):
    """One page of ``GET /v1/adapters``; pass ``next_cursor`` back for the next page."""

    object: Literal["list"] = "list"
    data: list[AdapterInfo]
    next_cursor: str | None = None


class AliasUpdate(_Request):
    """``PUT /v1/adapters/{name}/aliases/{alias}``."""

    version: int = Field(ge=1)


class Deleted(_Response):
    """``DELETE /v1/adapters/{name}[/versions/{version}]``; ``version`` None: all of it."""

    name: str
    version: int | None = None
    deleted: bool = True


# --- tenants and health -------------------------------------------------------------


class TenantCreate(_Request):
    """``POST /v1/tenants`` (admin key)."""

    name: str = Field(min_length=1, max_length=64)


class TenantCreated(_Response):
    """The new tenant and its API key; the key is shown this once, only its hash is kept."""

    name: str
    api_key: str


class KeyRevoke(_Request):
    """``POST /v1/keys/revoke`` (admin key)."""

    api_key: str = Field(min_length=1)


class KeyRevoked(_Response):
    """The tenant whose key ``POST /v1/keys/revoke`` revoked; it fails at once."""

    tenant: str
    revoked: bool = True


class QuotaUpdate(_Request):
    """``PUT /v1/tenants/{name}/quota`` (admin key); ``null`` is unlimited."""

    max_adapters: int | None = Field(default=None, ge=0)
    max_bytes: int | None = Field(default=None, ge=0)


class TenantUsage(_Response):
    """A tenant's adapter count and stored bytes against its quotas (None: unlimited)."""

    tenant: str
    adapters: int
    bytes: int
    max_adapters: int | None = None
    max_bytes: int | None = None


class Health(_Response):
    """``GET /healthz``: ``replicas`` model replicas are live of ``expected_replicas``
    (the deployment's configured count); None from a server that does not say."""

    status: str
    replicas: int | None = None
    expected_replicas: int | None = None
