"""Translation between the OpenAI wire shapes and the engine's requests and chunks.

Pure functions, no I/O: the ingress validates a request here before anything is routed,
and renders the engine's chunks as OpenAI responses and stream events.

Policy: parameters loramux does not implement are refused with a 400 naming them
(``n`` above 1, several prompts, ``echo``) rather than silently ignored. Completions
default ``max_tokens`` to 16, as OpenAI does; chat has no such default, so a chat request
without ``max_completion_tokens`` or ``max_tokens`` (or a completion with an explicit
``null``) gets the service's ``default_max_tokens``. Logprobs are the model's
distribution's (before temperature), as OpenAI and vLLM report them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from adapter_store import AdapterVersion
from services.client._models import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    ChatMessage,
    ChoiceDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Usage,
)
from services.engine import (
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TokenLogprob,
)
from services.exceptions import BadRequestError

__all__ = [
    "ResponseIds",
    "chat_chunk",
    "chat_completion",
    "chat_first_chunk",
    "completion",
    "completion_chunk",
    "generation_request",
]


class ResponseIds:
    """The ``id``, ``created`` and ``model`` every chunk of one response repeats."""

    def __init__(self, prefix: str, model: str) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def fields(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "model": self.model}


def generation_request(
    body: CompletionRequest | ChatCompletionRequest,
    adapter: AdapterVersion | None,
    *,
    default_max_tokens: int,
) -> GenerationRequest:
    """The engine request for a validated wire request.

    Raises:
        BadRequestError: a parameter loramux does not support, naming it.
        InvalidRequestError: a sampling value the engine refuses (from SamplingParams).
    """
    if body.n != 1:
        raise BadRequestError(f"n is {body.n}; loramux generates one choice per request (n=1)")
    if isinstance(body, ChatCompletionRequest):
        max_tokens = body.max_completion_tokens or body.max_tokens
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        if body.top_logprobs is not None and not body.logprobs:
            raise BadRequestError("top_logprobs needs logprobs: true")
        prompt, messages = None, [m.model_dump() for m in body.messages]
    else:
        if body.echo:
            raise BadRequestError("echo is not supported; send echo: false")
        prompt, messages = _single_prompt(body.prompt), None
        max_tokens, logprobs = body.max_tokens, body.logprobs
    sampling = SamplingParams(
        max_tokens=max_tokens or default_max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=() if body.stop is None else body.stop,
        seed=body.seed,
        logprobs=logprobs,
    )
    return GenerationRequest(prompt=prompt, messages=messages, adapter=adapter, sampling=sampling)


def _single_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) != 1:
        raise BadRequestError(
            f"prompt is a list of {len(prompt)} prompts; send one prompt per request"
        )
    return prompt[0]


def _usage(result: GenerationResult | GenerationChunk) -> Usage | None:
    if result.usage is None:
        return None
    u = result.usage
    return Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
    )


# --- completions --------------------------------------------------------------------


def _completion_logprobs(
    logprobs: Sequence[TokenLogprob] | None, offset: int
) -> dict[str, Any] | None:
    """OpenAI's legacy shape: parallel lists, ``text_offset`` counted in characters."""
    if logprobs is None:
        return None
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{t.token: t.logprob for t in lp.top_logprobs} for lp in logprobs],
        "text_offset": offsets,
    }


def completion(ids: ResponseIds, result: GenerationResult) -> Completion:
    choice = CompletionChoice(
        index=0,
        text=result.text,
        finish_reason=result.finish_reason,
        logprobs=_completion_logprobs(result.logprobs, 0),
    )
    return Completion(**ids.fields(), choices=[choice], usage=_usage(result))


def completion_chunk(ids: ResponseIds, chunk: GenerationChunk, text_offset: int) -> Completion:
    """One stream event; ``text_offset`` is the length of the text streamed before it."""
    choice = CompletionChoice(
        index=0,
        text=chunk.text,
        finish_reason=chunk.finish_reason,
        logprobs=_completion_logprobs(chunk.logprobs, text_offset),
    )
    return Completion(**ids.fields(), choices=[choice], usage=_usage(chunk))


# --- chat ---------------------------------------------------------------------------


def _chat_logprobs(logprobs: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {
                **entry(lp.token, lp.logprob),
                "top_logprobs": [entry(t.token, t.logprob) for t in lp.top_logprobs],
            }
            for lp in logprobs
        ]
    }


def chat_completion(ids: ResponseIds, result: GenerationResult) -> ChatCompletion:
    choice = ChatCompletionChoice(
        index=0,
        message=ChatMessage(role="assistant", content=result.text),
        finish_reason=result.finish_reason,
        logprobs=_chat_logprobs(result.logprobs),
    )
    return ChatCompletion(**ids.fields(), choices=[choice], usage=_usage(result))


def chat_first_chunk(ids: ResponseIds) -> ChatCompletionChunk:
    """The stream's opening event: the assistant role, no content yet (as OpenAI)."""
    choice = ChatCompletionChunkChoice(index=0, delta=ChoiceDelta(role="assistant", content=""))
    return ChatCompletionChunk(**ids.fields(), choices=[choice])


def chat_chunk(ids: ResponseIds, chunk: GenerationChunk) -> ChatCompletionChunk:
    choice = ChatCompletionChunkChoice(
        index=0,
        delta=ChoiceDelta(content=chunk.text),
        finish_reason=chunk.finish_reason,
        logprobs=_chat_logprobs(chunk.logprobs),
    )
    return ChatCompletionChunk(**ids.fields(), choices=[choice], usage=_usage(chunk))
