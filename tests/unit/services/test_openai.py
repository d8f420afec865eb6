"""Translating OpenAI wire requests to engine requests and engine chunks back."""

from __future__ import annotations

import json
from typing import get_args

import pytest

from adapter_store import AdapterVersion
from services import engine
from services.api._openai import ResponseIds
from services.api._openai import ResponsePlan
from services.api._openai import chat_completion
from services.api._openai import chat_events
from services.api._openai import completion
from services.api._openai import completion_events
from services.api._openai import generation_request
from services.client import _models as _api_models
from services.client._models import ChatCompletionRequest
from services.client._models import CompletionRequest
from services.engine import GenerationChunk
from services.engine import GenerationResult
from services.engine import InvalidRequestError
from services.engine import TokenLogprob
from services.engine import TopLogprob
from services.engine import Usage
from services.exceptions import BadRequestError

ADAPTER = AdapterVersion("acme", "bot", 2, "0" * 64, "1" * 64, 10, 8, "tiny")


def test_completion_request_carries_sampling_and_the_adapter() -> None:
    body = CompletionRequest(
        model="bot", prompt=["Hi"], max_tokens=5, temperature=0, stop="\n", seed=3, logprobs=2
    )

    request = generation_request(body, ADAPTER, default_max_tokens=99)

    assert (request.prompt, request.messages, request.adapter) == ("Hi", None, ADAPTER)
    s = request.sampling
    assert (s.max_tokens, s.temperature, s.stop, s.seed, s.logprobs) == (5, 0, ("\n",), 3, 2)


def test_chat_request_uses_the_default_and_top_logprobs() -> None:
    body = ChatCompletionRequest(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        logprobs=True,
        top_logprobs=3,
    )

    request = generation_request(body, None, default_max_tokens=7)

    assert request.messages == ({"role": "user", "content": "Hi"},)
    assert (request.sampling.max_tokens, request.sampling.logprobs) == (7, 3)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (CompletionRequest(model="m", prompt="x", n=2, best_of=3), "best_of"),
        (CompletionRequest(model="m", prompt=["a", "b"]), "one prompt"),
        (CompletionRequest(model="m", prompt="x", echo=True, logprobs=1), "echo"),
        (
            ChatCompletionRequest(
                model="m", messages=[{"role": "user", "content": "x"}], top_logprobs=2
            ),
            "logprobs: true",
        ),
    ],
)
def test_unsupported_parameters_are_refused_by_name(body, match: str) -> None:
    with pytest.raises(BadRequestError, match=match):
        generation_request(body, None, default_max_tokens=4)


def test_engine_limits_surface_as_invalid_requests() -> None:
    body = CompletionRequest(model="m", prompt="x", top_p=1.0, seed=-1)

    with pytest.raises(InvalidRequestError, match="seed"):
        generation_request(body, None, default_max_tokens=4)


LOGPROBS = (
    TokenLogprob(65, "A", -0.5, (TopLogprob(65, "A", -0.5), TopLogprob(66, "B", -1.5))),
    TokenLogprob(67, "Cd", -0.25, (TopLogprob(67, "Cd", -0.25),)),
)
RESULT = GenerationResult("r", "ACd", (65, 67), "length", Usage(3, 2), LOGPROBS)


def test_completion_logprobs_use_the_legacy_parallel_lists() -> None:
    reply = completion(ResponseIds("cmpl", "bot"), [RESULT], ResponsePlan())

    assert reply.choices[0].text == "ACd"
    assert reply.choices[0].logprobs == {
        "tokens": ["A", "Cd"],
        "token_logprobs": [-0.5, -0.25],
        "top_logprobs": [{"A": -0.5, "B": -1.5}, {"Cd": -0.25}],
        "text_offset": [0, 1],
    }
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (3, 5)


async def _events(stream) -> list:
    return [event async for event in stream]


async def _chunks(*chunks: GenerationChunk):
    for chunk in chunks:
        yield chunk


async def test_stream_chunks_continue_the_text_offset_and_usage_comes_last() -> None:
    chunks = _chunks(
        GenerationChunk("r", "A", (65,), LOGPROBS[:1]),
        GenerationChunk("r", "Cd", (67,), LOGPROBS[1:], "length", Usage(3, 2)),
    )
    plan = ResponsePlan(include_usage=True)

    events = await _events(completion_events(ResponseIds("cmpl", "bot"), plan, chunks))

    assert [e.choices[0].logprobs["text_offset"] for e in events[:2]] == [[0], [1]]
    assert events[1].choices[0].finish_reason == "length" and events[1].usage is None
    assert events[2].choices == [] and events[2].usage.total_tokens == 5


async def test_chat_logprobs_use_the_content_list() -> None:
    ids = ResponseIds("chatcmpl", "bot")
    reply = chat_completion(ids, [RESULT], ResponsePlan())
    events = await _events(
        chat_events(ids, ResponsePlan(), _chunks(GenerationChunk("r", "A", (65,), LOGPROBS[:1])))
    )

    content = reply.choices[0].logprobs["content"]
    assert [entry["token"] for entry in content] == ["A", "Cd"]
    assert content[0]["top_logprobs"][1] == {"token": "B", "logprob": -1.5, "bytes": [66]}
    assert events[0].choices[0].delta.role == "assistant"
    assert events[1].choices[0].delta.content == "A" and events[1].usage is None
    assert reply.id == events[1].id and reply.created == events[1].created


def test_the_wire_and_the_engine_agree_on_finish_reasons() -> None:
    # Two declarations, so that the wire models import without torch; they must not drift.
    assert set(get_args(_api_models.FinishReason)) == set(get_args(engine.FinishReason))


CHAT = [{"role": "user", "content": "x"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "clock"}}


def test_sampling_extras_reach_the_engine() -> None:
    body = CompletionRequest(
        model="m",
        prompt="x",
        n=3,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        repetition_penalty=1.2,
        logit_bias={"7": 5, "9": -100},
        min_tokens=2,
        stop_token_ids=[3],
        top_k=4,
    )

    s = generation_request(body, None, default_max_tokens=4).sampling

    assert (s.n, s.presence_penalty, s.frequency_penalty, s.repetition_penalty) == (
        3,
        0.5,
        -0.25,
        1.2,
    )
    assert (s.logit_bias, s.min_tokens, s.stop_token_ids, s.top_k) == (
        ((7, 5.0), (9, -100.0)),
        2,
        (3,),
        4,
    )


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        ({"response_format": {"type": "json_object"}}, "json_object"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"type": "integer"}},
                }
            },
            "json_schema",
        ),
        ({"guided_regex": "[ab]+"}, "regex"),
        ({"guided_choice": ["yes", "no"]}, "choice"),
        ({"tools": [WEATHER], "tool_choice": "required"}, "json_schema"),
        ({"response_format": {"type": "text"}}, None),
        ({"tools": [WEATHER]}, None),
    ],
)
def test_one_constraint_becomes_the_grammar(extra: dict, kind: str | None) -> None:
    body = ChatCompletionRequest(model="m", messages=CHAT, **extra)

    grammar = generation_request(body, None, default_max_tokens=4).sampling.grammar

    assert (grammar.kind if grammar else None) == kind


def test_a_named_tool_choice_constrains_to_its_arguments_schema() -> None:
    body = ChatCompletionRequest(
        model="m",
        messages=CHAT,
        tools=[WEATHER, CLOCK],
        tool_choice={"type": "function", "function": {"name": "weather"}},
    )

    request = generation_request(body, None, default_max_tokens=4)

    assert json.loads(request.sampling.grammar.source) == WEATHER["function"]["parameters"]
    assert [t["function"]["name"] for t in request.tools] == ["weather", "clock"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"guided_regex": "a", "guided_choice": ["a"]}, "only one"),
        ({"tool_choice": "required"}, "needs tools"),
        ({"tools": [CLOCK], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "'x'"),
        ({"stream_options": {"include_usage": True}}, "stream: true"),
    ],
)
def test_conflicting_chat_parameters_are_refused(extra: dict, match: str) -> None:
    body = ChatCompletionRequest(model="m", messages=CHAT, **extra)

    with pytest.raises(BadRequestError, match=match):
        generation_request(body, None, default_max_tokens=4)


def test_tool_results_and_assistant_calls_pass_to_the_engine() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}
    messages = [
        *CHAT,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
    ]
    body = ChatCompletionRequest(model="m", messages=messages, tools=[CLOCK])

    request = generation_request(body, None, default_max_tokens=4)

    assert request.messages[1]["tool_calls"] == [call]
    assert request.messages[2] == {"role": "tool", "content": "12:00", "tool_call_id": "call_1"}


def _result(text: str, index: int = 0, reason: str = "stop") -> GenerationResult:
    return GenerationResult("r", text, (1,), reason, Usage(3, 1), index=index)


def test_required_calls_are_parsed_into_tool_calls_with_ids() -> None:
    plan = ResponsePlan(tool_mode="required", tool_names=("weather", "clock"))
    text = (
        '[{"name": "weather", "arguments": {"city": "Oslo"}}, {"name": "clock", "arguments": {}}]'
    )

    reply = chat_completion(ResponseIds("chatcmpl", "m"), [_result(text)], plan)

    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("weather", {"city": "Oslo"}),
        ("clock", {}),
    ]
    assert len({c.id for c in message.tool_calls}) == 2


def test_auto_reads_hermes_calls_and_leaves_plain_text_alone() -> None:
    plan = ResponsePlan(tool_mode="auto", tool_names=("clock",))
    called = '<tool_call>{"name": "clock", "arguments": {}}</tool_call>'
    ids = ResponseIds("chatcmpl", "m")

    reply = chat_completion(ids, [_result(called), _result("[not json", 1)], plan)

    assert reply.choices[0].message.tool_calls[0].function.name == "clock"
    assert reply.choices[1].message.content == "[not json"
    assert reply.choices[1].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 2)


async def test_a_named_call_streams_its_arguments_as_deltas() -> None:
    plan = ResponsePlan(tool_mode="named", tool_names=("weather",), function="weather")
    chunks = _chunks(
        GenerationChunk("r", '{"city": ', (1,)),
        GenerationChunk("r", '"Oslo"}', (2,), finish_reason="stop", usage=Usage(3, 2)),
    )

    events = await _events(chat_events(ResponseIds("chatcmpl", "m"), plan, chunks))

    first, second = (e.choices[0].delta.tool_calls[0] for e in events[1:])
    assert (first.id is not None, first.function.name, second.id) == (True, "weather", None)
    assert first.function.arguments + second.function.arguments == '{"city": "Oslo"}'
    assert events[-1].choices[0].finish_reason == "stop"


async def test_n_choices_stream_interleaved_with_their_own_index() -> None:
    plan = ResponsePlan(n=2, tool_mode="auto", tool_names=("clock",))
    chunks = _chunks(
        GenerationChunk("r", "[", (1,), index=0),
        GenerationChunk("r", "hi", (2,), index=1),
        GenerationChunk("r", "]", (3,), index=0, finish_reason="stop", usage=Usage(3, 2)),
        GenerationChunk("r", "!", (4,), index=1, finish_reason="length", usage=Usage(3, 2)),
    )

    events = await _events(chat_events(ResponseIds("chatcmpl", "m"), plan, chunks))

    by_index: dict[int, str] = {0: "", 1: ""}
    for event in events:
        by_index[event.choices[0].index] += event.choices[0].delta.content or ""
    # Choice 0 looked like a tool call until it ended as "[]", not a call: sent as text.
    assert by_index == {0: "[]", 1: "hi!"}
    assert [e.choices[0].index for e in events[:2]] == [0, 1]
