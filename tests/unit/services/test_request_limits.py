"""The ingress request limits: pure checks naming their setting, and the body-size
middleware (declared and chunked bodies) in front of a tiny ASGI app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from services._settings import LimitSettings
from services.api._request_limits import BodySizeLimit
from services.api._request_limits import LimitExceededError
from services.api._request_limits import check_generation
from services.client._models import ChatCompletionRequest
from services.client._models import CompletionRequest

LIMITS = LimitSettings(
    max_body_bytes=2048,
    max_prompt_bytes=100,
    max_tokens_limit=50,
    max_stop_sequences=2,
    max_stop_bytes=8,
    max_messages=3,
    max_n=2,
)


def completion(**fields: object) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi", **fields})


@pytest.mark.parametrize(
    ("fields", "setting"),
    [
        ({"n": 3}, "max_n"),
        ({"max_tokens": 51}, "max_tokens_limit"),
        ({"stop": ["a", "b", "c"]}, "max_stop_sequences"),
        ({"stop": "é" * 5}, "max_stop_bytes"),
        ({"prompt": "x" * 101}, "max_prompt_bytes"),
        ({"prompt": ["é" * 51]}, "max_prompt_bytes"),
    ],
)
def test_each_refusal_names_its_limit_and_setting(fields: dict[str, object], setting: str) -> None:
    body = completion(**fields)
    with pytest.raises(LimitExceededError, match=f"LORAMUX_{setting.upper()}") as caught:
        check_generation(body, body.max_tokens or 16, LIMITS)
    assert caught.value.limit == setting
    assert caught.value.status == 400


def test_chat_counts_messages_and_their_bytes() -> None:
    def chat(*contents: str) -> ChatCompletionRequest:
        messages = [{"role": "user", "content": c} for c in contents]
        return ChatCompletionRequest.model_validate({"model": "m", "messages": messages})

    with pytest.raises(LimitExceededError, match="number of messages is 4"):
        check_generation(chat("a", "b", "c", "d"), 16, LIMITS)
    with pytest.raises(LimitExceededError, match="size in bytes is 101"):
        check_generation(chat("x" * 60, "y" * 41), 16, LIMITS)
    assert check_generation(chat("x" * 60, "y" * 40), 16, LIMITS) == 25 + 16


def test_the_token_estimate_is_prompt_bytes_over_four_plus_max_tokens() -> None:
    assert check_generation(completion(prompt="abcde", max_tokens=7), 7, LIMITS) == 2 + 7
    assert check_generation(completion(prompt=""), 16, LIMITS) == 16


async def _echo_size(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


def _client() -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/gen", _echo_size, methods=["POST"]),
                            Route("/other", _echo_size, methods=["POST"])])  # fmt: skip
    guarded = BodySizeLimit(app, limits=LIMITS, paths={"/gen"})
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://t")


def test_body_limit_refuses_declared_and_chunked_bodies_and_spares_other_paths() -> None:
    async def chunked(total: int) -> AsyncIterator[bytes]:
        for _ in range(total // 512):
            yield b"x" * 512

    async def run() -> list[tuple[int, str]]:
        async with _client() as client:
            answers = [
                await client.post("/gen", content=b"x" * 2048),
                await client.post("/gen", content=b"x" * 2049),
                await client.post("/gen", content=chunked(2048)),
                await client.post("/gen", content=chunked(4096)),
                await client.post("/other", content=b"x" * 4096),
            ]
        return [(r.status_code, r.text) for r in answers]

    answers = asyncio.run(run())
    assert [status for status, _ in answers] == [200, 413, 200, 413, 200]
    assert answers[0][1] == answers[2][1] == "2048"
    assert "LORAMUX_MAX_BODY_BYTES" in answers[1][1] and '"payload_too_large"' in answers[3][1]
