"""Translation between the OpenAI wire shapes and the engine's requests and chunks.

Pure functions, no I/O: the ingress validates a request here before anything is routed,
and renders the engine's chunks as OpenAI responses and stream events. docs/openai.md
lists every parameter and what loramux does with it.

Policy: parameters loramux does not implement are refused with a 400 naming them
(several prompts, ``best_of`` above ``n``, ``echo`` with ``logprobs``) rather than
silently ignored. Completions default ``max_tokens`` to 16, as OpenAI does; chat has no
such default, so a chat request without ``max_completion_tokens`` or ``max_tokens`` (or
a completion with an explicit ``null``) gets the service's ``default_max_tokens``.
Logprobs are the model's distribution's (before temperature and penalties), as OpenAI
and vLLM report them. At most one constraint shapes the output: ``response_format``,
a ``guided_*`` extra, or a tool choice that forces a call.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from typing import Literal

from pydantic import BaseModel

from adapter_store import AdapterVersion
from services.client._models import ChatCompletion
from services.client._models import ChatCompletionChoice
from services.client._models import ChatCompletionChunk
from services.client._models import ChatCompletionChunkChoice
from services.client._models import ChatCompletionRequest
from services.client._models import ChatMessage
from services.client._models import ChoiceDelta
from services.client._models import Completion
from services.client._models import CompletionChoice
from services.client._models import CompletionRequest
from services.client._models import FunctionCall
from services.client._models import NamedToolChoice
from services.client._models import ToolCall
from services.client._models import ToolCallDelta
from services.client._models import Usage
from services.engine import GenerationChunk
from services.engine import GenerationRequest
from services.engine import GenerationResult
from services.engine import Grammar
from services.engine import SamplingParams
from services.engine import TokenLogprob
from services.exceptions import BadRequestError

__all__ = [
    "ResponseIds",
    "ResponsePlan",
    "chat_completion",
    "chat_events",
    "completion",
    "completion_events",
    "generation_request",
    "response_plan",
]

ToolMode = Literal["none", "auto", "required", "named"]
_TOOL_CALL_TAG = ("<tool_call>", "</tool_call>")


class ResponseIds:
    """The ``id``, ``created`` and ``model`` every chunk of one response repeats."""

    def __init__(self, prefix: str, model: str) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def fields(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "model": self.model}


@dataclass(frozen=True)
class ResponsePlan:
    """How the engine's output becomes the response, read from the request alone.

    ``echo``: text put before each choice's (the prompt, for completions with ``echo``).
    ``tool_mode``: ``named`` forces ``function``; ``required`` forces one or more calls
    of ``tool_names``; ``auto`` reads calls out of the text when it is one.
    """

    n: int = 1
    echo: str = ""
    include_usage: bool = False
    tool_mode: ToolMode = "none"
    tool_names: tuple[str, ...] = ()
    function: str | None = None


def response_plan(body: CompletionRequest | ChatCompletionRequest) -> ResponsePlan:
    """The plan for ``body``.

    Raises:
        BadRequestError: a parameter combination loramux refuses, naming it.
    """
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    if body.stream_options is not None and not body.stream:
        raise BadRequestError("stream_options needs stream: true")
    if isinstance(body, CompletionRequest):
        if body.best_of is not None and body.best_of != body.n:
            raise BadRequestError(
                f"best_of is {body.best_of} and n is {body.n}; loramux returns every choice "
                "it generates (best_of must equal n), as vLLM's V1 engine does"
            )
        if body.echo and body.logprobs is not None:
            raise BadRequestError(
                "echo with logprobs asks for the prompt's logprobs, which loramux does not "
                "compute; send one of them"
            )
        echo = _single_prompt(body.prompt) if body.echo else ""
        return ResponsePlan(n=body.n, echo=echo, include_usage=include_usage)
    names = tuple(tool.function.name for tool in body.tools or ())
    choice = body.tool_choice
    if choice is not None and not names and choice != "none":
        raise BadRequestError("tool_choice needs tools: send the functions the model may call")
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise BadRequestError(
                f"tool_choice names {choice.function.name!r}, which is not in tools {list(names)}"
            )
        mode: ToolMode = "named"
    elif choice is None:
        mode = "auto" if names else "none"
    else:
        mode = choice
    function = choice.function.name if isinstance(choice, NamedToolChoice) else None
    return ResponsePlan(
        n=body.n,
        include_usage=include_usage,
        tool_mode=mode,
        tool_names=names,
        function=function,
    )


def generation_request(
    body: CompletionRequest | ChatCompletionRequest,
    adapter: AdapterVersion | None,
    *,
    default_max_tokens: int,
) -> GenerationRequest:
    """The engine request for a validated wire request.

    Raises:
        BadRequestError: a parameter loramux does not support, naming it.
        InvalidRequestError: a sampling value or grammar the engine refuses.
    """
    response_plan(body)  # refuses what the response could not carry, before routing
    tools: list[dict[str, Any]] = []
    if isinstance(body, ChatCompletionRequest):
        max_tokens = body.max_completion_tokens or body.max_tokens
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        if body.top_logprobs is not None and not body.logprobs:
            raise BadRequestError("top_logprobs needs logprobs: true")
        prompt, messages = None, [_message(m) for m in body.messages]
        tools = [tool.model_dump(exclude_none=True) for tool in body.tools or ()]
    else:
        prompt, messages = _single_prompt(body.prompt), None
        max_tokens, logprobs = body.max_tokens, body.logprobs
    sampling = SamplingParams(
        max_tokens=max_tokens or default_max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=() if body.stop is None else body.stop,
        seed=body.seed,
        logprobs=logprobs,
        ignore_eos=body.ignore_eos,
        n=body.n,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=body.logit_bias or {},
        min_tokens=body.min_tokens,
        stop_token_ids=body.stop_token_ids or (),
        grammar=_grammar(body),
    )
    return GenerationRequest(
        prompt=prompt, messages=messages, tools=tools, adapter=adapter, sampling=sampling
    )


def _single_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) != 1:
        raise BadRequestError(
            f"prompt is a list of {len(prompt)} prompts; send one prompt per request"
        )
    return prompt[0]


def _message(message: ChatMessage) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list):
        content = "".join(part.text for part in content)
    rendered: dict[str, Any] = {"role": message.role, "content": content}
    if message.tool_calls:
        rendered["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


def _grammar(body: CompletionRequest | ChatCompletionRequest) -> Grammar | None:
    """The one constraint on the output, or None; refuses two at once."""
    found: dict[str, Grammar] = {}
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        found["response_format"] = Grammar.json_object()
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise BadRequestError("response_format json_schema needs a 'json_schema' object")
        found["response_format"] = Grammar.json_schema(fmt.json_schema.schema_)
    if body.guided_json is not None:
        found["guided_json"] = Grammar.json_schema(body.guided_json)
    if body.guided_regex is not None:
        found["guided_regex"] = Grammar.regex(body.guided_regex)
    if body.guided_choice is not None:
        found["guided_choice"] = Grammar.choice(body.guided_choice)
    if isinstance(body, ChatCompletionRequest):
        tool_schema = _forced_tool_schema(body)
        if tool_schema is not None:
            found["tool_choice"] = Grammar.json_schema(tool_schema)
    if len(found) > 1:
        raise BadRequestError(
            f"{' and '.join(found)} each constrain the output; send only one of them"
        )
    return next(iter(found.values()), None)


def _forced_tool_schema(body: ChatCompletionRequest) -> dict[str, Any] | None:
    """The schema of the output when the request forces a call: the named function's
    arguments, or (``required``) a list of ``{"name", "arguments"}`` calls as vLLM does."""
    parameters = {
        tool.function.name: tool.function.parameters or {"type": "object"}
        for tool in body.tools or ()
    }
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        return parameters[choice.function.name]
    if choice != "required":
        return None
    calls: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": name}, "arguments": schema},
                    "required": ["name", "arguments"],
                }
                for name, schema in parameters.items()
            ]
        },
    }
    if body.parallel_tool_calls is False:
        calls["maxItems"] = 1
    return calls


class _UsageSum:
    """The request's usage: the prompt once, the completion tokens of every choice."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, chunk: GenerationChunk | GenerationResult) -> None:
        if chunk.usage is not None:
            self.prompt_tokens = chunk.usage.prompt_tokens
            self.completion_tokens += chunk.usage.completion_tokens

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )


def _total_usage(results: Sequence[GenerationResult]) -> Usage:
    total = _UsageSum()
    for result in results:
        total.add(result)
    return total.usage()


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


def completion(
    ids: ResponseIds, results: Sequence[GenerationResult], plan: ResponsePlan
) -> Completion:
    choices = [
        CompletionChoice(
            index=result.index,
            text=plan.echo + result.text,
            finish_reason=result.finish_reason,
            logprobs=_completion_logprobs(result.logprobs, 0),
        )
        for result in results
    ]
    return Completion(**ids.fields(), choices=choices, usage=_total_usage(results))


async def completion_events(
    ids: ResponseIds, plan: ResponsePlan, chunks: AsyncIterator[GenerationChunk]
) -> AsyncIterator[BaseModel]:
    """The stream events of a completion; ``text_offset`` counts each choice's text."""
    offsets = [0] * plan.n
    if plan.echo:
        for index in range(plan.n):
            yield Completion(
                **ids.fields(), choices=[CompletionChoice(index=index, text=plan.echo)]
            )
            offsets[index] = len(plan.echo)
    total = _UsageSum()
    async for chunk in chunks:
        total.add(chunk)
        choice = CompletionChoice(
            index=chunk.index,
            text=chunk.text,
            finish_reason=chunk.finish_reason,
            logprobs=_completion_logprobs(chunk.logprobs, offsets[chunk.index]),
        )
        offsets[chunk.index] += len(chunk.text)
        yield Completion(**ids.fields(), choices=[choice])
    if plan.include_usage:
        yield Completion(**ids.fields(), choices=[], usage=total.usage())


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


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_calls(text: str, plan: ResponsePlan) -> list[ToolCall] | None:
    """The calls ``text`` makes under ``plan``, or None when it is plain content.

    Named: the whole text is the arguments. Required and auto: a JSON list (or one
    object) of ``{"name", "arguments"}``, or Hermes-style ``<tool_call>`` blocks, naming
    only functions in the request's tools.
    """
    if plan.tool_mode == "named":
        assert plan.function is not None
        return [ToolCall(id=_call_id(), function=FunctionCall(name=plan.function, arguments=text))]
    if plan.tool_mode not in ("required", "auto"):
        return None
    stripped = text.strip()
    opening, closing = _TOOL_CALL_TAG
    if stripped.startswith(opening):
        blocks = [b.split(closing)[0] for b in stripped.split(opening)[1:]]
        stripped = "[" + ",".join(blocks) + "]"
    try:
        parsed = json.loads(stripped)
    except ValueError:
        return None
    calls = parsed if isinstance(parsed, list) else [parsed]
    if not calls or not all(
        isinstance(c, dict) and c.get("name") in plan.tool_names and "arguments" in c for c in calls
    ):
        return None
    return [
        ToolCall(
            id=_call_id(),
            function=FunctionCall(name=c["name"], arguments=json.dumps(c["arguments"])),
        )
        for c in calls
    ]


def _may_become_tool_call(text: str) -> bool:
    """Whether the text so far could still be the start of tool calls (held back)."""
    stripped = text.lstrip()
    opening = _TOOL_CALL_TAG[0]
    return stripped[:1] in ("", "[", "{") or opening.startswith(stripped[: len(opening)])


def _finish_reason(result_reason: str, calls: list[ToolCall] | None, plan: ResponsePlan) -> Any:
    # OpenAI answers a forced named call with "stop", any other call with "tool_calls".
    return "tool_calls" if calls and plan.tool_mode != "named" else result_reason


def chat_completion(
    ids: ResponseIds, results: Sequence[GenerationResult], plan: ResponsePlan
) -> ChatCompletion:
    choices = []
    for result in results:
        calls = tool_calls(result.text, plan) if result.finish_reason == "stop" else None
        message = (
            ChatMessage(role="assistant", tool_calls=calls)
            if calls
            else ChatMessage(role="assistant", content=result.text)
        )
        choices.append(
            ChatCompletionChoice(
                index=result.index,
                message=message,
                finish_reason=_finish_reason(result.finish_reason, calls, plan),
                logprobs=_chat_logprobs(result.logprobs),
            )
        )
    return ChatCompletion(**ids.fields(), choices=choices, usage=_total_usage(results))


class _ChoiceStream:
    """One choice's stream state: content goes out as it comes; tool calls are sent
    when known (a named call's arguments as they come, other calls once parsed)."""

    def __init__(self, plan: ResponsePlan) -> None:
        self._plan = plan
        self._held = ""  # text that may turn out to be tool calls
        self._holding = plan.tool_mode in ("required", "auto")
        self._named_id: str | None = None

    def push(self, chunk: GenerationChunk) -> ChoiceDelta | None:
        """The delta for ``chunk`` (None: nothing to send yet)."""
        plan = self._plan
        if plan.tool_mode == "named":
            return self._named_delta(chunk.text)
        if self._holding:
            self._held += chunk.text
            if chunk.finish_reason is None and (
                plan.tool_mode == "required" or _may_become_tool_call(self._held)
            ):
                return None
            self._holding = False
            calls = tool_calls(self._held, plan) if chunk.finish_reason == "stop" else None
            if calls:
                return ChoiceDelta(
                    tool_calls=[
                        ToolCallDelta(
                            index=n,
                            id=call.id,
                            type="function",
                            function={
                                "name": call.function.name,
                                "arguments": call.function.arguments,
                            },
                        )
                        for n, call in enumerate(calls)
                    ]
                )
            return ChoiceDelta(content=self._held)
        return ChoiceDelta(content=chunk.text)

    def _named_delta(self, text: str) -> ChoiceDelta:
        first = self._named_id is None
        if first:
            self._named_id = _call_id()
        function = (
            {"name": self._plan.function, "arguments": text} if first else {"arguments": text}
        )
        return ChoiceDelta(
            tool_calls=[
                ToolCallDelta(
                    index=0,
                    id=self._named_id if first else None,
                    type="function" if first else None,
                    function=function,
                )
            ]
        )


async def chat_events(
    ids: ResponseIds, plan: ResponsePlan, chunks: AsyncIterator[GenerationChunk]
) -> AsyncIterator[BaseModel]:
    """The stream events of a chat completion: each choice opens with the assistant
    role, and with ``include_usage`` a last event carries the usage and no choices."""
    streams = [_ChoiceStream(plan) for _ in range(plan.n)]
    for index in range(plan.n):
        opening = ChoiceDelta(role="assistant", content="")
        yield ChatCompletionChunk(
            **ids.fields(), choices=[ChatCompletionChunkChoice(index=index, delta=opening)]
        )
    total = _UsageSum()
    async for chunk in chunks:
        total.add(chunk)
        delta = streams[chunk.index].push(chunk)
        if delta is None:
            continue
        reason = chunk.finish_reason
        if reason is not None:
            reason = _finish_reason(reason, delta.tool_calls, plan)
        choice = ChatCompletionChunkChoice(
            index=chunk.index,
            delta=delta,
            finish_reason=reason,
            logprobs=_chat_logprobs(chunk.logprobs),
        )
        yield ChatCompletionChunk(**ids.fields(), choices=[choice])
    if plan.include_usage:
        yield ChatCompletionChunk(**ids.fields(), choices=[], usage=total.usage())
