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

from typing import Any
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field

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
    "ContentPart",
    "Deleted",
    "ErrorBody",
    "ErrorDetail",
    "FinishReason",
    "FunctionCall",
    "FunctionDefinition",
    "Health",
    "JsonSchemaFormat",
    "KeyRevoke",
    "KeyRevoked",
    "Model",
    "ModelList",
    "NamedToolChoice",
    "Origin",
    "QuotaUpdate",
    "RequestLimits",
    "ResponseFormat",
    "StreamOptions",
    "TenantCreate",
    "TenantCreated",
    "TenantLimitsInfo",
    "TenantUsage",
    "ToolCall",
    "ToolCallDelta",
    "ToolDefinition",
    "TrainingJob",
    "TrainingJobCreate",
    "TrainingOptions",
    "TrainingProgress",
    "Usage",
]

FinishReason = Literal["stop", "length"]
"""Why generation ended: a stop sequence or end of text, or ``max_tokens``."""
ChatFinishReason = Literal["stop", "length", "tool_calls"]
"""A chat choice also ends in ``tool_calls`` when the model called tools."""
MAX_CHOICES = 16


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


class StreamOptions(_Request):
    """``stream_options``: ``include_usage`` adds a last chunk with no choices and the
    request's usage (OpenAI's shape)."""

    include_usage: bool = False


class JsonSchemaFormat(_Request):
    """``response_format.json_schema``: the output must validate against ``schema``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    """``response_format``: ``text`` (default), ``json_object`` or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _SamplingParams(_Request):
    """The sampling parameters completions and chat share, with OpenAI's defaults, and
    vLLM's extras (``top_k``, ``repetition_penalty``, ``min_tokens``, ``stop_token_ids``,
    ``guided_*``)."""

    model: str = Field(min_length=1, description="adapter reference or base model id")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    top_k: int = Field(default=0, ge=0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    min_tokens: int = Field(default=0, ge=0)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None


class CompletionRequest(_SamplingParams):
    """``POST /v1/completions``."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1, le=MAX_CHOICES)


class CompletionChoice(_Response):
    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: dict[str, Any] | None = None


class _CompletionEnvelope(_Response):
    """What every completion answer and stream chunk carries around its choices."""

    id: str
    created: int
    model: str
    usage: Usage | None = None
    system_fingerprint: str | None = None


class Completion(_CompletionEnvelope):
    """A completion, or one chunk of a streamed completion (same shape, as in OpenAI)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class FunctionCall(_Response):
    name: str
    arguments: str = Field(description="the arguments as JSON text")


class ToolCall(_Response):
    """A call the model made, in a response; sent back on the assistant message."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ContentPart(_Response):
    """A part of a message's content; loramux reads text parts only."""

    type: Literal["text", "input_text", "output_text"]
    text: str


class ChatMessage(_Response):
    """One message of a conversation, in requests and responses.

    ``content`` is text or a list of text parts; an assistant message may carry
    ``tool_calls`` instead, and a ``tool`` message answers the call ``tool_call_id``.
    Extra fields (OpenAI's ``name``, ``refusal``...) are ignored on both sides.
    """

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(_Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Request):
    """One entry of ``tools``: a function the model may call."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class _FunctionName(_Request):
    name: str


class NamedToolChoice(_Request):
    """``tool_choice`` naming one function: the model must call exactly it."""

    type: Literal["function"] = "function"
    function: _FunctionName


class ChatCompletionRequest(_SamplingParams):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ToolDefinition] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Validated and ignored (docs/openai.md): nothing is stored, there is one tier.
    store: bool | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    service_tier: Literal["auto", "default"] | None = None


class ChatCompletionChoice(_Response):
    index: int
    message: ChatMessage
    finish_reason: ChatFinishReason | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(_CompletionEnvelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatCompletionChoice]


class _FunctionCallDelta(_Response):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Response):
    """A piece of a streamed tool call: the first names it (``id``, ``name``), the next
    ones add to ``arguments``; ``index`` tells the calls of one message apart."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: _FunctionCallDelta


class ChoiceDelta(_Response):
    """The new part of a streamed message: the role first, then content or tool-call
    pieces."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatCompletionChunkChoice(_Response):
    index: int
    delta: ChoiceDelta
    finish_reason: ChatFinishReason | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(_CompletionEnvelope):
    """One ``data:`` event of a streamed chat completion."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatCompletionChunkChoice]


class Model(_Response):
    """One entry of ``GET /v1/models``: the base model or one of the tenant's adapters.

    ``quantization`` (a loramux extension) is set on the base model's entry only: how the
    replicas hold its weights (``none``, ``nf4``, ``int8``), as its manifest records it.
    ``root`` (the base model) and ``parent`` (the model an adapter applies to; None for
    the base) are vLLM's extra fields.
    """

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str
    quantization: str | None = None
    root: str | None = None
    parent: str | None = None


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[Model]


# --- adapters -----------------------------------------------------------------------


Origin = Literal["pushed", "trained"]
"""How an adapter version came to be: uploaded, or fine-tuned by ``loramux train``."""


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
    origin: Origin = Field(
        default="pushed", description="uploaded by the tenant, or trained by the service"
    )


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


class RequestLimits(_Request):
    """A tenant's request limits: ``PUT /v1/tenants/{name}/limits`` (admin key) replaces
    its own, where ``null`` means the service's default; in an answer's ``effective``,
    ``null`` means unlimited."""

    requests_per_s: float | None = Field(default=None, gt=0)
    tokens_per_min: int | None = Field(default=None, gt=0)
    max_in_flight: int | None = Field(default=None, gt=0)


class TenantLimitsInfo(_Response):
    """A tenant's request limits: its ``own`` (``null``: the service default applies) and
    the ``effective`` ones admission applies (``null``: unlimited)."""

    tenant: str
    own: RequestLimits
    effective: RequestLimits

    @classmethod
    def of(cls, tenant: str, own: object, effective: object) -> TenantLimitsInfo:
        """From the store's limits (objects with the three fields, e.g. TenantLimits)."""
        return cls(
            tenant=tenant,
            own=RequestLimits.model_validate(own, from_attributes=True),
            effective=RequestLimits.model_validate(effective, from_attributes=True),
        )


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


# --- training -----------------------------------------------------------------------


class TrainingOptions(_Request):
    """The knobs of a fine-tune (``loramux train``, ``client.training``, the API).

    ``target_modules`` ``None`` adapts every linear layer of the attention and MLP blocks
    (PEFT's ``all-linear``), which trains best at small ranks. ``epochs`` ``None`` picks
    enough passes for about 300 optimizer steps (at least 3, at most 100), which teaches a
    few dozen examples their answers without drowning a large set. ``max_steps`` caps
    the optimizer steps whatever ``epochs`` says. ``validation_split`` is the share of
    examples held out for the eval loss (at least one when above zero and the data has
    two or more examples).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(default=8, ge=1, le=256)
    alpha: float = Field(default=16.0, gt=0, le=4096)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(default=None, min_length=1)
    epochs: float | None = Field(default=None, gt=0, le=1000)
    learning_rate: float = Field(default=2e-3, gt=0, le=1)
    batch_size: int = Field(default=8, ge=1, le=512)
    max_steps: int | None = Field(default=None, ge=1, le=1_000_000)
    max_length: int = Field(default=512, ge=8, le=32768, description="tokens per example")
    seed: int = Field(default=0, ge=0)
    validation_split: float = Field(default=0.1, ge=0, lt=1)


class TrainingJobCreate(_Request):
    """``POST /v1/training/jobs``: fine-tune ``name`` on ``data`` (JSON lines)."""

    name: str = Field(min_length=1)
    # 64 MB of text is hundreds of thousands of examples, past what a LoRA needs.
    data: str = Field(
        min_length=1, max_length=64_000_000, description="the training file's JSON lines"
    )
    options: TrainingOptions = Field(default_factory=TrainingOptions)
    aliases: list[str] = Field(default_factory=list)


class TrainingProgress(_Response):
    """Where a run stands: optimizer ``step`` of ``total_steps``, the last batch's loss."""

    step: int
    total_steps: int
    loss: float | None = None
    epoch: float = 0.0


class TrainingJob(_Response):
    """One fine-tune. ``status``: ``queued`` -> ``running`` -> ``succeeded`` | ``failed``.

    On success ``version`` is the adapter version it published and ``eval_loss`` the
    held-out loss (None without a validation split); on failure ``error`` says why and
    nothing was published.
    """

    id: str
    tenant: str
    name: str
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: TrainingProgress | None = None
    eval_loss: float | None = None
    train_loss: float | None = None
    version: int | None = None
    error: str | None = None
    examples: int = 0
    created_at: float = 0.0
    finished_at: float | None = None
