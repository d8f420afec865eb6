"""The official ``openai`` client against the API over a real engine, sync and streaming.

One service per engine backend (``hf``, and ``vllm`` on vLLM's CPU build): the HTTP API
(uvicorn on a free port) over a real store (redis-server, ``file://`` blobs) and the
backend that :func:`open_engine` builds on the built-in ``tiny`` model, in place of Ray
Serve (``test_app.py`` covers Ray). Every request feature of issue 15 goes through
``openai.OpenAI`` as applications send it, and must behave the same on both engines.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from adapter_store import AdapterStore
from adapter_store import StoreSettings
from services._settings import ServiceSettings
from services.api import create_api
from services.client import Client
from services.engine import CacheHooks
from services.engine import EngineOptions
from services.engine import GenerationChunk
from services.engine import GenerationRequest
from services.engine import ReplicaEngine
from services.engine import load_base_model
from services.engine import open_engine
from tests.factories import make_peft_adapter
from tests.helpers import served

openai = pytest.importorskip("openai")

CHAT = [{"role": "user", "content": "Hi"}]
# A JSON schema and two tools, as an application would send them.
_SCHEMAS = json.loads((Path(__file__).parents[2] / "data" / "openai_schemas.json").read_text())
PERSON, WEATHER, CLOCK = _SCHEMAS["person"], _SCHEMAS["weather"], _SCHEMAS["clock"]


class EngineGateway:
    """The model replicas' role, in process: one engine, started on the server's event
    loop by the first request."""

    def __init__(self, engine: ReplicaEngine) -> None:
        self.engine = engine
        self.loop: asyncio.AbstractEventLoop | None = None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            await self.engine.start()
        async for chunk in self.engine.generate(request):
            yield chunk

    async def replica_stats(self) -> list[dict[str, Any]]:
        return [{"replica_id": "local", "residency": {}}]

    def close(self) -> None:
        if self.loop is None:
            asyncio.run(self.engine.aclose())
        else:
            asyncio.run_coroutine_threadsafe(self.engine.aclose(), self.loop).result(60)


@dataclass
class Service:
    url: str
    api_key: str


@pytest.fixture(scope="module", params=["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def service(
    request: pytest.FixtureRequest, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    import redis

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(f"openai-{request.param}")
    redis.Redis.from_url(redis_server.url).flushall()
    store = AdapterStore.from_settings(
        StoreSettings(redis_url=redis_server.url, blob_url=(root / "blobs").as_uri(), data_dir=root)
    )
    base = load_base_model("tiny", models_dir=root / "models", device="cpu")
    adapter_dir = make_peft_adapter(copy.deepcopy(base.model), root / "support", seed=1)
    options = EngineOptions(
        base_model="tiny",
        models_dir=root / "models",
        gpu_slots=2,
        max_lora_rank=8,
        max_batch_size=8,
        host_budget_bytes=1 << 26,
        dtype="float32",
    )
    engine = open_engine(request.param, options, CacheHooks(fetch_to_disk=store.fetch))
    store.register_manifest(engine.facts.manifest)
    gateway = EngineGateway(engine)
    settings = ServiceSettings(store=StoreSettings(data_dir=root), default_max_tokens=8)
    _, key = store.create_tenant("acme")
    try:
        with served(create_api(store, gateway, settings)) as url:
            try:
                with Client(url, key, max_retries=0) as sdk:
                    sdk.adapters.push(adapter_dir, "support")
                yield Service(url, key)
            finally:
                gateway.close()
    finally:
        store.close()


@pytest.fixture(scope="module")
def client(service: Service) -> Any:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=service.api_key, max_retries=0)


def chat(client: Any, **params: Any) -> Any:
    return client.chat.completions.create(
        **{"model": "support", "messages": CHAT, "max_tokens": 8, **params}
    )


def test_n_choices_each_seeded_like_a_single_request(client: Any) -> None:
    three = chat(client, n=3, temperature=1.0, seed=3)
    second = chat(client, temperature=1.0, seed=4)

    assert [c.index for c in three.choices] == [0, 1, 2]
    assert three.choices[1].message.content == second.choices[0].message.content
    assert three.usage.prompt_tokens == second.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * 8 or three.usage.completion_tokens > 8


def test_streaming_with_include_usage_ends_with_a_usage_chunk(client: Any) -> None:
    whole = chat(client, temperature=0)
    chunks = list(chat(client, temperature=0, stream=True, stream_options={"include_usage": True}))

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_bias_min_tokens_and_stop_token_ids(client: Any) -> None:
    # Byte 66 ("B") is forced by the bias; it ends the completion once min_tokens allow.
    reply = client.completions.create(
        model="support",
        prompt="Hello",
        max_tokens=10,
        temperature=0,
        logit_bias={"66": 100},
        extra_body={"min_tokens": 2, "stop_token_ids": [66]},
    )

    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 3 and "B" not in reply.choices[0].text


def test_penalties_change_greedy_output(client: Any) -> None:
    params = {"model": "support", "prompt": "Hello", "max_tokens": 24, "temperature": 0}
    plain = client.completions.create(**params)
    penalized = client.completions.create(
        **params,
        presence_penalty=2.0,
        frequency_penalty=2.0,
        extra_body={"repetition_penalty": 2.0, "ignore_eos": True},
    )

    assert penalized.choices[0].text != plain.choices[0].text
    assert penalized.usage.completion_tokens == 24


def test_echo_puts_the_prompt_first(client: Any) -> None:
    params = {"model": "support", "prompt": "Hello", "max_tokens": 4, "temperature": 0}
    plain = client.completions.create(**params).choices[0].text
    echoed = client.completions.create(**params, echo=True).choices[0].text
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(**params, echo=True, stream=True)
    )

    assert echoed == streamed == "Hello" + plain


def test_json_schema_output_validates_sync_and_streaming(client: Any) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    reply = chat(client, max_tokens=200, temperature=1.0, seed=1, response_format=response_format)
    stream = chat(
        client,
        max_tokens=200,
        temperature=1.0,
        seed=2,
        response_format=response_format,
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    for text in (reply.choices[0].message.content, streamed):
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_and_guided_extras(client: Any) -> None:
    obj = chat(client, max_tokens=300, temperature=0, response_format={"type": "json_object"})
    choice = chat(client, max_tokens=20, extra_body={"guided_choice": ["red", "green", "blue"]})
    regex = chat(client, max_tokens=20, extra_body={"guided_regex": "[0-9]{2}:[0-9]{2}"})

    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict)
    else:  # the budget ran out inside a string: still a prefix of an object
        assert obj.choices[0].message.content.startswith("{")
    assert choice.choices[0].message.content in {"red", "green", "blue"}
    text = regex.choices[0].message.content
    assert len(text) == 5 and text[2] == ":" and (text[:2] + text[3:]).isdigit()


def test_required_tool_calls_validate_and_tool_results_go_back(client: Any) -> None:
    reply = chat(client, max_tokens=200, tools=[WEATHER, CLOCK], tool_choice="required")
    message = reply.choices[0].message

    assert reply.choices[0].finish_reason == "tool_calls" and message.tool_calls
    for call in message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        schema = (WEATHER if call.function.name == "weather" else CLOCK)["function"]["parameters"]
        jsonschema.validate(json.loads(call.function.arguments), schema)

    follow_up = [
        *CHAT,
        message.model_dump(exclude_none=True),
        *({"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in message.tool_calls),
    ]
    answer = chat(client, messages=follow_up, tools=[WEATHER, CLOCK], tool_choice="none")
    assert answer.choices[0].message.content is not None


def test_a_named_tool_streams_argument_deltas(client: Any) -> None:
    named = {"type": "function", "function": {"name": "weather"}}
    stream = chat(client, max_tokens=200, tools=[WEATHER], tool_choice=named, stream=True)
    calls = [
        c.choices[0].delta.tool_calls for c in stream if c.choices and c.choices[0].delta.tool_calls
    ]

    first = calls[0][0]
    assert first.id and first.function.name == "weather" and first.index == 0
    arguments = "".join(piece[0].function.arguments or "" for piece in calls)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])


def test_model_cards_name_root_and_parent(client: Any) -> None:
    adapter = client.models.retrieve("support")
    by_version = client.models.retrieve("support@1")
    base = client.models.retrieve("tiny")

    assert (adapter.id, adapter.owned_by, adapter.root, adapter.parent) == (
        "support",
        "acme",
        "tiny",
        "tiny",
    )
    assert adapter.created > 0 and by_version.id == "support@1"
    assert (base.root, getattr(base, "parent", None)) == ("tiny", None)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("missing")


def test_the_responses_api_sync_and_streaming(client: Any) -> None:
    params = {
        "model": "support",
        "input": "Hi",
        "instructions": "Be brief",
        "max_output_tokens": 6,
        "temperature": 0,
    }
    response = client.responses.create(**params)
    events = list(client.responses.create(**params, stream=True))

    assert response.object == "response" and response.output_text
    assert response.usage.output_tokens <= 6
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == response.output_text
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_unknown_and_refused_parameters_are_400s_naming_them(client: Any) -> None:
    with pytest.raises(openai.BadRequestError, match="bogus"):
        chat(client, extra_body={"bogus": 1})
    with pytest.raises(openai.BadRequestError, match="best_of"):
        client.completions.create(model="support", prompt="x", n=1, best_of=3)
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model="support", input="x", previous_response_id="resp_1")
