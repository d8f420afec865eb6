"""The SDK against scripted HTTP answers (httpx.MockTransport): no server, no network."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest

from services import AdapterInfo
from services import APIConnectionError
from services import APIStatusError
from services import AsyncClient
from services import BadRequestError
from services import ChatCompletion
from services import Client
from services import ConfigurationError
from services import InternalServerError
from services import InvalidAdapterPathError
from services import OverQuotaError
from services import PayloadTooLargeError
from services import PermissionDeniedError
from services import RateLimitError
from services import ResourceConflictError
from services import ResourceNotFoundError
from services import ServiceUnavailableError
from services import UnauthorizedError
from services.client import PEFT_FILES

Handler = Callable[[httpx.Request], httpx.Response]

VERSION = {
    "tenant": "acme",
    "name": "bot",
    "version": 3,
    "key": "acme/bot@3",
    "digest": "a" * 64,
    "config_digest": "b" * 64,
    "size_bytes": 1234,
    "rank": 8,
    "base_model": "tiny",
    "created_at": 1.5,
    "aliases": ["latest"],
}
ADAPTER = {
    "tenant": "acme",
    "name": "bot",
    "versions": [1, 2, 3],
    "aliases": {"latest": 3, "prod": 2},
    "latest": VERSION,
}
CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "bot@3",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def error(status: int, type: str, message: str = "it broke", **headers: str) -> httpx.Response:
    body = {"error": {"type": type, "message": message}}
    return httpx.Response(status, json=body, headers=headers)


class Server:
    """Answers from a script: each call pops the next answer (a response or an exception)."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No LORAMUX_* variables; returns a profile path that does not exist yet."""
    monkeypatch.delenv("LORAMUX_URL", raising=False)
    monkeypatch.delenv("LORAMUX_API_KEY", raising=False)
    return tmp_path / "profile.json"


def make_client(server: Server, sleeps: list[float], **options: Any) -> Client:
    options.setdefault("api_key", "sk-test")
    return Client(
        "http://loramux.test",
        transport=httpx.MockTransport(server),
        sleep=sleeps.append,
        **options,
    )


def make_async_client(server: Server, sleeps: list[float], **options: Any) -> AsyncClient:
    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    return AsyncClient(
        "http://loramux.test",
        "sk-test",
        transport=httpx.MockTransport(server),
        sleep=sleep,
        **options,
    )


def sse(*events: dict[str, Any] | str) -> httpx.Response:
    lines = []
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event)
        lines.append(f"data: {data}\n\n")
    return httpx.Response(
        200, content="".join(lines).encode(), headers={"content-type": "text/event-stream"}
    )


def chat_chunk(content: str | None, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "bot@3",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }


# --- configuration ------------------------------------------------------------------


def test_settings_come_from_arguments_then_environment_then_profile(
    monkeypatch: pytest.MonkeyPatch, no_env: Path
) -> None:
    no_env.write_text(json.dumps({"url": "http://profile:1/", "api_key": "sk-profile"}))

    from_profile = Client(profile_path=no_env)
    monkeypatch.setenv("LORAMUX_URL", "http://env:2")
    monkeypatch.setenv("LORAMUX_API_KEY", "sk-env")
    from_env = Client(profile_path=no_env)
    from_args = Client("http://args:3", "sk-args", profile_path=no_env)

    assert (from_profile.base_url, from_profile.api_key) == ("http://profile:1", "sk-profile")
    assert (from_env.base_url, from_env.api_key) == ("http://env:2", "sk-env")
    assert (from_args.base_url, from_args.api_key) == ("http://args:3", "sk-args")


def test_the_profile_key_never_goes_to_another_url(no_env: Path) -> None:
    no_env.write_text(json.dumps({"url": "http://profile:1", "api_key": "sk-profile"}))

    client = Client("http://elsewhere:9", profile_path=no_env)

    assert client.api_key is None


def test_without_settings_the_client_talks_to_localhost_without_a_key(no_env: Path) -> None:
    client = Client(profile_path=no_env)

    assert (client.base_url, client.api_key) == ("http://127.0.0.1:8000", None)


def test_a_malformed_profile_is_a_configuration_error_naming_it(no_env: Path) -> None:
    no_env.write_text("{not json")

    with pytest.raises(ConfigurationError, match=r"profile\.json"):
        Client(profile_path=no_env)


def test_the_api_key_is_sent_as_a_bearer_token(sleeps: list[float], no_env: Path) -> None:
    server = Server(httpx.Response(200, json=ADAPTER))
    keyless = Server(httpx.Response(200, json=ADAPTER))

    make_client(server, sleeps).adapters.get("bot")
    make_client(keyless, sleeps, api_key=None, profile_path=no_env).adapters.get("bot")

    assert server.requests[0].headers["authorization"] == "Bearer sk-test"
    assert "authorization" not in keyless.requests[0].headers


# --- adapters -----------------------------------------------------------------------


def test_get_parses_the_adapter(sleeps: list[float]) -> None:
    server = Server(httpx.Response(200, json=ADAPTER))

    adapter = make_client(server, sleeps).adapters.get("bot")

    assert isinstance(adapter, AdapterInfo)
    assert adapter.aliases == {"latest": 3, "prod": 2}
    assert adapter.latest.key == "acme/bot@3"
    assert (server.requests[0].method, server.requests[0].url.path) == ("GET", "/v1/adapters/bot")


def test_alias_delete_and_get_version_call_their_endpoints(sleeps: list[float]) -> None:
    server = Server(
        httpx.Response(200, json=ADAPTER),
        httpx.Response(200, json={"name": "bot", "version": 2, "deleted": True}),
        httpx.Response(200, json={"name": "bot", "version": None, "deleted": True}),
        httpx.Response(200, json=VERSION),
        httpx.Response(200, json=ADAPTER),
    )
    client = make_client(server, sleeps)

    client.adapters.alias("bot", "prod", 3)
    deleted_version = client.adapters.delete("bot", version=2)
    deleted_all = client.adapters.delete("bot")
    version = client.adapters.get_version("bot", 3)
    client.adapters.remove_alias("bot", "prod")

    calls = [(request.method, request.url.path) for request in server.requests]
    assert calls == [
        ("PUT", "/v1/adapters/bot/aliases/prod"),
        ("DELETE", "/v1/adapters/bot/versions/2"),
        ("DELETE", "/v1/adapters/bot"),
        ("GET", "/v1/adapters/bot/versions/3"),
        ("DELETE", "/v1/adapters/bot/aliases/prod"),
    ]
    assert json.loads(server.requests[0].content) == {"version": 3}
    assert (deleted_version.version, deleted_all.version) == (2, None)
    assert version.version == 3


def test_a_path_segment_cannot_escape_into_another_endpoint(sleeps: list[float]) -> None:
    server = Server(httpx.Response(200, json=ADAPTER))

    make_client(server, sleeps).adapters.get("bot/../../v1/tenants")

    assert server.requests[0].url.raw_path == b"/v1/adapters/bot%2F..%2F..%2Fv1%2Ftenants"


def test_list_follows_the_cursor_across_pages(sleeps: list[float]) -> None:
    def page(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        pages = {None: (["a", "b"], "c1"), "c1": (["c", "d"], "c2"), "c2": (["e"], None)}
        names, next_cursor = pages[cursor]
        data = [dict(ADAPTER, name=name) for name in names]
        return httpx.Response(200, json={"data": data, "next_cursor": next_cursor})

    server = Server(page)

    names = [adapter.name for adapter in make_client(server, sleeps).adapters.list(limit=2)]

    assert names == ["a", "b", "c", "d", "e"]
    assert [request.url.params.get("cursor") for request in server.requests] == [None, "c1", "c2"]
    assert {request.url.params["limit"] for request in server.requests} == {"2"}


@pytest.fixture(scope="module")
def peft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.factories import make_peft_adapter
    from tests.factories import tiny_llama

    return make_peft_adapter(tiny_llama(), tmp_path_factory.mktemp("adapter"))


def multipart_parts(request: httpx.Request) -> list[tuple[str, str | None, bytes]]:
    """(field name, file name, content) of each part of a multipart request."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    return [
        (part.get_param("name", header="content-disposition"), part.get_filename(),
         part.get_payload(decode=True))
        for part in message.iter_parts()
    ]  # fmt: skip


def test_push_uploads_the_peft_files_with_progress(sleeps: list[float], peft_dir: Path) -> None:
    server = Server(httpx.Response(201, json=VERSION))
    progress: list[tuple[int, int]] = []

    version = make_client(server, sleeps).adapters.push(
        peft_dir, "bot", on_progress=lambda sent, total: progress.append((sent, total))
    )

    parts = multipart_parts(server.requests[0])
    assert parts == [
        ("name", None, b"bot"),
        ("origin", None, b"pushed"),
        *[("files", name, (peft_dir / name).read_bytes()) for name in PEFT_FILES],
    ]
    total = sum((peft_dir / name).stat().st_size for name in PEFT_FILES)
    assert progress[-1] == (total, total)
    assert [sent for sent, _ in progress] == sorted(sent for sent, _ in progress)
    assert version.key == "acme/bot@3"


def test_push_sends_the_whole_upload_again_after_a_503(sleeps: list[float], peft_dir: Path) -> None:
    server = Server(error(503, "service_unavailable"), httpx.Response(201, json=VERSION))

    make_client(server, sleeps).adapters.push(peft_dir, "bot")

    assert len(server.requests) == 2
    assert multipart_parts(server.requests[1]) == multipart_parts(server.requests[0])


def test_push_uploads_an_archive_as_is(sleeps: list[float], tmp_path: Path) -> None:
    archive = tmp_path / "bot.tar.gz"
    archive.write_bytes(b"\x1f\x8b archive bytes")
    server = Server(httpx.Response(201, json=VERSION))

    make_client(server, sleeps).adapters.push(archive, "bot")

    assert multipart_parts(server.requests[0])[2] == ("archive", "bot.tar.gz", archive.read_bytes())


def test_push_of_a_pickle_adapter_fails_before_upload_and_says_how_to_fix(
    sleeps: list[float], tmp_path: Path
) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    server = Server(httpx.Response(201, json=VERSION))

    with pytest.raises(InvalidAdapterPathError, match="safe_serialization=True"):
        make_client(server, sleeps).adapters.push(tmp_path, "bot")
    assert server.requests == []


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_download_extracts_only_the_peft_files_into_dest(
    sleeps: list[float], tmp_path: Path
) -> None:
    files = {"adapter_config.json": b"{}", "adapter_model.safetensors": b"weights"}
    archive = tar_gz({**files, "../../escaped.txt": b"x"})
    server = Server(httpx.Response(200, content=archive))

    dest = make_client(server, sleeps).adapters.download("bot:prod", tmp_path / "out")

    assert server.requests[0].url.raw_path == b"/v1/adapters/bot:prod/download"
    assert {path.name: path.read_bytes() for path in dest.iterdir()} == files
    assert not list(tmp_path.rglob("escaped.txt"))


# --- errors and retries -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [
        (400, "invalid_request", BadRequestError),
        (401, "authentication_error", UnauthorizedError),
        (403, "permission_denied", PermissionDeniedError),
        (404, "not_found", ResourceNotFoundError),
        (409, "conflict", ResourceConflictError),
        (413, "payload_too_large", PayloadTooLargeError),
        (429, "rate_limited", RateLimitError),
        (429, "quota_exceeded", OverQuotaError),
        (500, "internal_error", InternalServerError),
        (502, "integrity_error", InternalServerError),
        (418, "teapot", APIStatusError),
    ],
)
def test_error_answers_raise_the_class_of_their_status(
    sleeps: list[float], status: int, error_type: str, expected: type[APIStatusError]
) -> None:
    server = Server(error(status, error_type, "adapter 'bot' has no version 9"))

    with pytest.raises(expected) as raised:
        make_client(server, sleeps).adapters.get_version("bot", 9)

    assert type(raised.value) is expected
    assert (raised.value.status, raised.value.type) == (status, error_type)
    assert raised.value.message == "adapter 'bot' has no version 9"
    assert len(server.requests) == 1 and sleeps == []


def test_an_error_without_a_json_body_keeps_its_text(sleeps: list[float]) -> None:
    server = Server(httpx.Response(502, text="<html>bad gateway</html>"))

    with pytest.raises(InternalServerError, match="bad gateway"):
        make_client(server, sleeps).adapters.get("bot")


def test_503_is_retried_with_exponential_backoff(sleeps: list[float]) -> None:
    server = Server(
        error(503, "service_unavailable"),
        error(503, "service_unavailable"),
        httpx.Response(200, json=ADAPTER),
    )

    adapter = make_client(server, sleeps, backoff_s=0.5).adapters.get("bot")

    assert adapter.name == "bot"
    assert sleeps == [0.5, 1.0]


def test_retry_after_sets_the_wait_up_to_the_cap(sleeps: list[float]) -> None:
    server = Server(
        error(503, "service_unavailable", **{"Retry-After": "2"}),
        error(503, "service_unavailable", **{"Retry-After": "600"}),
        httpx.Response(200, json=ADAPTER),
    )

    make_client(server, sleeps, max_backoff_s=8.0).adapters.get("bot")

    assert sleeps == [2.0, 8.0]


def test_503_after_the_last_retry_raises_service_unavailable(sleeps: list[float]) -> None:
    server = Server(error(503, "service_unavailable", "redis did not answer"))

    with pytest.raises(ServiceUnavailableError, match="redis did not answer"):
        make_client(server, sleeps, max_retries=2, backoff_s=1.0).adapters.get("bot")

    assert len(server.requests) == 3
    assert sleeps == [1.0, 2.0]


def test_a_refused_connection_is_retried_even_for_a_post(sleeps: list[float]) -> None:
    server = Server(httpx.ConnectError("refused"), httpx.Response(200, json=CHAT))

    reply = make_client(server, sleeps).chat.create(
        model="bot", messages=[{"role": "user", "content": "hi"}]
    )

    assert reply.choices[0].message.content == "hello"
    assert len(server.requests) == 2


def test_a_post_that_may_have_reached_the_server_is_not_sent_twice(sleeps: list[float]) -> None:
    server = Server(httpx.ReadError("connection reset"), httpx.Response(200, json=CHAT))

    with pytest.raises(APIConnectionError, match="connection reset"):
        make_client(server, sleeps).chat.create(
            model="bot", messages=[{"role": "user", "content": "hi"}]
        )

    assert len(server.requests) == 1


def test_a_get_is_retried_after_a_reset(sleeps: list[float]) -> None:
    server = Server(httpx.ReadError("connection reset"), httpx.Response(200, json=ADAPTER))

    assert make_client(server, sleeps).adapters.get("bot").name == "bot"
    assert len(server.requests) == 2


def test_an_unreachable_server_raises_a_connection_error(sleeps: list[float]) -> None:
    server = Server(httpx.ConnectError("refused"))

    with pytest.raises(APIConnectionError, match="refused"):
        make_client(server, sleeps, max_retries=1).health()

    assert len(server.requests) == 2


# --- completions --------------------------------------------------------------------


def test_chat_sends_only_the_parameters_given(sleeps: list[float]) -> None:
    server = Server(httpx.Response(200, json=CHAT))

    reply = make_client(server, sleeps).chat.create(
        model="bot@3", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )

    assert isinstance(reply, ChatCompletion)
    assert reply.usage is not None and reply.usage.total_tokens == 4
    assert server.requests[0].url.path == "/v1/chat/completions"
    assert json.loads(server.requests[0].content) == {
        "model": "bot@3",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stream": False,
    }


def test_an_unknown_parameter_fails_before_sending(sleeps: list[float]) -> None:
    server = Server(httpx.Response(200, json=CHAT))

    with pytest.raises(pydantic.ValidationError, match="max_tokenz"):
        make_client(server, sleeps).completions.create(model="bot", prompt="hi", max_tokenz=5)

    assert server.requests == []


def test_completion_streams_chunks_until_done(sleeps: list[float]) -> None:
    chunk = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "bot",
        "choices": [{"index": 0, "text": "he", "finish_reason": None}],
    }
    last = dict(chunk, choices=[{"index": 0, "text": "llo", "finish_reason": "length"}])
    body = (
        ": keep-alive comment\n\n"
        f"data: {json.dumps(chunk)}\n\n"
        f"event: completion\ndata: {json.dumps(last)}\n\n"
        "data: [DONE]\n\n"
    )
    server = Server(httpx.Response(200, content=body.encode()))

    chunks = list(
        make_client(server, sleeps).completions.create(model="bot", prompt="x", stream=True)
    )

    assert [choice.text for c in chunks for choice in c.choices] == ["he", "llo"]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert json.loads(server.requests[0].content)["stream"] is True
    assert server.requests[0].headers["accept"] == "text/event-stream"


def test_an_event_split_over_data_lines_is_joined(sleeps: list[float]) -> None:
    text = json.dumps(chat_chunk("hi"), indent=1)
    body = "".join(f"data: {line}\n" for line in text.splitlines()) + "\ndata: [DONE]\n\n"
    server = Server(httpx.Response(200, content=body.encode()))

    chunks = list(
        make_client(server, sleeps).chat.create(
            model="bot", messages=[{"role": "user", "content": "x"}], stream=True
        )
    )

    assert [chunk.choices[0].delta.content for chunk in chunks] == ["hi"]


def test_a_stream_cut_before_done_is_a_connection_error(sleeps: list[float]) -> None:
    server = Server(sse(chat_chunk("he")))
    stream = make_client(server, sleeps).chat.create(
        model="bot", messages=[{"role": "user", "content": "x"}], stream=True
    )

    assert next(stream).choices[0].delta.content == "he"
    with pytest.raises(APIConnectionError, match=r"\[DONE\]"):
        next(stream)


def test_an_error_event_in_a_stream_raises_its_class(sleeps: list[float]) -> None:
    server = Server(
        sse(chat_chunk("he"), {"error": {"type": "service_unavailable", "message": "replica died"}})
    )
    stream = make_client(server, sleeps).chat.create(
        model="bot", messages=[{"role": "user", "content": "x"}], stream=True
    )

    with pytest.raises(ServiceUnavailableError, match="replica died"):
        list(stream)


def test_a_stream_refused_with_503_is_retried_before_it_starts(sleeps: list[float]) -> None:
    server = Server(error(503, "service_unavailable"), sse(chat_chunk("ok"), "[DONE]"))

    stream = make_client(server, sleeps).chat.create(
        model="bot", messages=[{"role": "user", "content": "x"}], stream=True
    )

    assert [chunk.choices[0].delta.content for chunk in stream] == ["ok"]
    assert len(server.requests) == 2 and sleeps == [0.5]


def test_a_stream_error_status_raises_at_create(sleeps: list[float]) -> None:
    server = Server(error(404, "not_found", "no adapter 'nope'"))

    with pytest.raises(ResourceNotFoundError, match="nope"):
        make_client(server, sleeps).chat.create(
            model="nope", messages=[{"role": "user", "content": "x"}], stream=True
        )


def test_tenant_creation_returns_the_key(sleeps: list[float]) -> None:
    server = Server(httpx.Response(201, json={"name": "acme", "api_key": "sk-new"}))

    created = make_client(server, sleeps).tenants.create("acme")

    assert created.api_key == "sk-new"
    assert json.loads(server.requests[0].content) == {"name": "acme"}


# --- the async twin -----------------------------------------------------------------


async def test_async_client_retries_and_parses(sleeps: list[float]) -> None:
    server = Server(error(503, "service_unavailable"), httpx.Response(200, json=ADAPTER))

    async with make_async_client(server, sleeps) as client:
        adapter = await client.adapters.get("bot")

    assert adapter.latest.version == 3
    assert sleeps == [0.5]


async def test_async_client_streams_chat(sleeps: list[float]) -> None:
    server = Server(sse(chat_chunk("he"), chat_chunk("llo", "stop"), "[DONE]"))

    async with make_async_client(server, sleeps) as client:
        stream = await client.chat.create(
            model="bot", messages=[{"role": "user", "content": "x"}], stream=True
        )
        pieces = [chunk.choices[0].delta.content async for chunk in stream]

    assert pieces == ["he", "llo"]


async def test_async_client_lists_every_page(sleeps: list[float]) -> None:
    server = Server(
        httpx.Response(200, json={"data": [ADAPTER], "next_cursor": "c1"}),
        httpx.Response(200, json={"data": [dict(ADAPTER, name="two")], "next_cursor": None}),
    )

    async with make_async_client(server, sleeps) as client:
        names = [adapter.name async for adapter in client.adapters.list()]

    assert names == ["bot", "two"]


async def test_async_client_pushes_and_downloads(
    sleeps: list[float], peft_dir: Path, tmp_path: Path
) -> None:
    files = {name: (peft_dir / name).read_bytes() for name in PEFT_FILES}
    server = Server(httpx.Response(201, json=VERSION), httpx.Response(200, content=tar_gz(files)))

    async with make_async_client(server, sleeps) as client:
        pushed = await client.adapters.push(peft_dir, "bot")
        dest = await client.adapters.download(pushed.key.split("/")[1], tmp_path / "out")

    assert [part[2] for part in multipart_parts(server.requests[0])[2:]] == list(files.values())
    assert {path.name: path.read_bytes() for path in dest.iterdir()} == files


# --- tenant administration ----------------------------------------------------------

USAGE = {"tenant": "acme", "adapters": 2, "bytes": 99, "max_adapters": 5, "max_bytes": None}


def test_tenant_keys_and_quotas_call_the_admin_endpoints(sleeps: list[float]) -> None:
    server = Server(
        httpx.Response(201, json={"name": "acme", "api_key": "sk-second"}),
        httpx.Response(200, json={"tenant": "acme", "revoked": True}),
        httpx.Response(200, json=USAGE),
        httpx.Response(200, json=USAGE),
    )
    tenants = make_client(server, sleeps, api_key="admin").tenants

    key = tenants.add_key("acme")
    revoked = tenants.revoke_key("sk-first")
    quota = tenants.set_quota("acme", max_adapters=5)
    usage = tenants.usage("acme")

    sent = [(r.method, r.url.path, r.content) for r in server.requests]
    assert sent == [
        ("POST", "/v1/tenants/acme/keys", b""),
        ("POST", "/v1/keys/revoke", b'{"api_key":"sk-first"}'),
        # The quota left out is sent as null: it becomes unlimited, as documented.
        ("PUT", "/v1/tenants/acme/quota", b'{"max_adapters":5,"max_bytes":null}'),
        ("GET", "/v1/tenants/acme/usage", b""),
    ]
    assert all(r.headers["authorization"] == "Bearer admin" for r in server.requests)
    assert key == "sk-second" and revoked.tenant == "acme"
    assert quota == usage
    assert (usage.adapters, usage.max_adapters, usage.max_bytes) == (2, 5, None)


def test_a_negative_quota_fails_before_sending(sleeps: list[float]) -> None:
    server = Server(httpx.Response(200, json=USAGE))

    with pytest.raises(pydantic.ValidationError, match="max_bytes"):
        make_client(server, sleeps).tenants.set_quota("acme", max_bytes=-1)

    assert server.requests == []


def test_tenant_admin_without_the_admin_key_is_permission_denied(sleeps: list[float]) -> None:
    server = Server(error(403, "permission_denied", "this endpoint needs the admin key"))

    with pytest.raises(PermissionDeniedError, match="admin key"):
        make_client(server, sleeps).tenants.usage("acme")


async def test_async_client_manages_keys_and_quotas(sleeps: list[float]) -> None:
    server = Server(
        httpx.Response(201, json={"name": "acme", "api_key": "sk-second"}),
        httpx.Response(200, json={"tenant": "acme", "revoked": True}),
        httpx.Response(200, json=USAGE),
        httpx.Response(200, json=USAGE),
    )

    async with make_async_client(server, sleeps) as client:
        key = await client.tenants.add_key("acme")
        revoked = await client.tenants.revoke_key(key)
        quota = await client.tenants.set_quota("acme", max_adapters=5, max_bytes=None)
        usage = await client.tenants.usage("acme")

    assert (key, revoked.revoked, quota.max_adapters, usage.bytes) == ("sk-second", True, 5, 99)
    assert [r.url.path for r in server.requests] == [
        "/v1/tenants/acme/keys",
        "/v1/keys/revoke",
        "/v1/tenants/acme/quota",
        "/v1/tenants/acme/usage",
    ]


def test_download_reports_progress_against_the_content_length(
    sleeps: list[float], tmp_path: Path
) -> None:
    archive = tar_gz({"adapter_config.json": b"{}", "adapter_model.safetensors": b"w"})
    server = Server(httpx.Response(200, content=archive))
    seen: list[tuple[int, int]] = []

    make_client(server, sleeps).adapters.download(
        "bot", tmp_path, on_progress=lambda done, total: seen.append((done, total))
    )

    assert seen and seen[-1] == (len(archive), len(archive))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
