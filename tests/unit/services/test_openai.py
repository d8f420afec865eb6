"""Translating OpenAI wire requests to engine requests and engine chunks back."""

from __future__ import annotations

from typing import get_args

import pytest

from adapter_store import AdapterVersion
from services import engine
from services.api._openai import (
    ResponseIds,
    chat_chunk,
    chat_completion,
    completion,
    completion_chunk,
    generation_request,
)
from services.client import _models as _api_models
from services.client._models import ChatCompletionRequest, CompletionRequest
from services.engine import (
    GenerationChunk,
    GenerationResult,
    InvalidRequestError,
    TokenLogprob,
    TopLogprob,
    Usage,
)
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
        (CompletionRequest(model="m", prompt="x", n=2), "n=1"),
        (CompletionRequest(model="m", prompt=["a", "b"]), "one prompt"),
        (CompletionRequest(model="m", prompt="x", echo=True), "echo"),
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
    reply = completion(ResponseIds("cmpl", "bot"), RESULT)

    assert reply.choices[0].text == "ACd"
    assert reply.choices[0].logprobs == {
        "tokens": ["A", "Cd"],
        "token_logprobs": [-0.5, -0.25],
        "top_logprobs": [{"A": -0.5, "B": -1.5}, {"Cd": -0.25}],
        "text_offset": [0, 1],
    }
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (3, 5)


def test_stream_chunks_continue_the_text_offset() -> None:
    chunk = GenerationChunk("r", "Cd", (67,), LOGPROBS[1:], "length", Usage(3, 2))

    event = completion_chunk(ResponseIds("cmpl", "bot"), chunk, text_offset=1)

    assert event.choices[0].logprobs["text_offset"] == [1]
    assert event.choices[0].finish_reason == "length" and event.usage.completion_tokens == 2


def test_chat_logprobs_use_the_content_list() -> None:
    ids = ResponseIds("chatcmpl", "bot")
    reply = chat_completion(ids, RESULT)
    event = chat_chunk(ids, GenerationChunk("r", "A", (65,), LOGPROBS[:1]))

    content = reply.choices[0].logprobs["content"]
    assert [entry["token"] for entry in content] == ["A", "Cd"]
    assert content[0]["top_logprobs"][1] == {"token": "B", "logprob": -1.5, "bytes": [66]}
    assert event.choices[0].delta.content == "A" and event.usage is None
    assert reply.id == event.id and reply.created == event.created


def test_the_wire_and_the_engine_agree_on_finish_reasons() -> None:
    # Two declarations, so that the wire models import without torch; they must not drift.
    assert set(get_args(_api_models.FinishReason)) == set(get_args(engine.FinishReason))
