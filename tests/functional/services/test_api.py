"""The HTTP API over the store (in-memory metadata, file:// blobs) and a scripted gateway.

The gateway stands in for the model replicas, so these tests pin what the API does with
what replicas answer (errors before and after the first token, stats) without Ray; the
whole service with Ray is ``test_app.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter_store import AdapterStore
from adapter_store import LocalBlobStore
from adapter_store import StoreSettings
from adapter_store import manifest_from_model
from services._settings import LimitSettings
from services._settings import ServiceSettings
from services.api import create_api
from services.client import PEFT_FILES
from services.client import AsyncClient
from services.client import ReplicaStats
from services.client import ResidentKeys
from services.engine import EngineOverloadedError
from services.engine import GenerationChunk
from services.engine import InvalidRequestError
from services.engine import Usage
from services.exceptions import BadRequestError
from services.exceptions import OverQuotaError
from services.exceptions import PayloadTooLargeError
from services.exceptions import PermissionDeniedError
from services.exceptions import ReplicaLostError
from services.exceptions import ResourceConflictError
from services.exceptions import ResourceNotFoundError
from services.exceptions import ServiceUnavailableError
from services.exceptions import UnauthorizedError
from tests.factories import make_peft_adapter
from tests.factories import tiny_llama
from tests.fakes import InMemoryMetadataStore
from tests.fakes import ScriptedGateway
from tests.helpers import TENANT_REPLICA_FIELDS
from tests.helpers import asgi_http

ADMIN_KEY = "admin-key"
DONE = GenerationChunk("r", "!", (33,), finish_reason="stop", usage=Usage(2, 2))


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_peft_adapter(tiny_llama(), tmp_path_factory.mktemp("adapter") / "a", seed=1)


@pytest.fixture
def gateway() -> ScriptedGateway:
    return ScriptedGateway()


@pytest.fixture
def api(store: AdapterStore, gateway: ScriptedGateway, tmp_path: Path) -> Any:
    settings = ServiceSettings(
        store=StoreSettings(data_dir=tmp_path), admin_key=ADMIN_KEY, replicas=2
    )
    return create_api(store, gateway, settings)


def client(api: Any, key: str | None) -> AsyncClient:
    return AsyncClient(
        "http://loramux.test", key, transport=httpx.ASGITransport(app=api), max_retries=0
    )


@pytest.fixture
async def acme(api: Any, store: AdapterStore) -> AsyncIterator[AsyncClient]:
    _, key = store.create_tenant("acme")
    async with client(api, key) as acme:
        yield acme


async def test_an_error_before_the_first_token_answers_with_its_status(
    acme: AsyncClient, gateway: ScriptedGateway
) -> None:
    gateway.script = [InvalidRequestError("max_tokens: the prompt has 900 tokens")]

    with pytest.raises(BadRequestError, match="900 tokens"):
        await acme.completions.create(model="tiny", prompt="x", stream=True)


def lost() -> ReplicaLostError:
    return ReplicaLostError("the model replica serving acme/bot@1 died (ActorDiedError)")


async def test_a_whole_answer_survives_its_replica_dying_midway(
    acme: AsyncClient, gateway: ScriptedGateway
) -> None:
    # The client receives nothing until the answer is whole, so even a death after
    # tokens is retried: the client sees one clean answer, not the lost half.
    gateway.attempts = [[GenerationChunk("r", "half", (1,)), lost()], [lost()]]
    gateway.script = [GenerationChunk("r", "A", (65,)), DONE]

    answer = await acme.completions.create(model="tiny", prompt="x")

    assert answer.choices[0].text == "A!"
    assert len(gateway.requests) == 3


async def test_a_stream_whose_replica_dies_before_any_token_is_retried(
    acme: AsyncClient, gateway: ScriptedGateway
) -> None:
    gateway.attempts = [[lost()]]
    gateway.script = [GenerationChunk("r", "A", (65,)), DONE]

    stream = await acme.completions.create(model="tiny", prompt="x", stream=True)
    text = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])

    assert text == "A!"
    assert len(gateway.requests) == 2


async def test_a_stream_whose_replica_dies_after_tokens_ends_with_a_replica_lost_event(
    acme: AsyncClient, gateway: ScriptedGateway
) -> None:
    gateway.script = [GenerationChunk("r", "A", (65,)), lost()]
    stream = await acme.completions.create(model="tiny", prompt="x", stream=True)
    received = []

    with pytest.raises(ReplicaLostError, match="had sent 1 chunks, so it was not retried"):
        async for chunk in stream:
            received.append(chunk.choices[0].text)

    assert received == ["A"]
    assert len(gateway.requests) == 1  # its client saw "A": never sent again


async def test_replica_deaths_are_retried_a_bounded_number_of_times(
    acme: AsyncClient, gateway: ScriptedGateway
) -> None:
    gateway.script = [lost()]

    with pytest.raises(ReplicaLostError, match="tried 3 times") as refused:
        await acme.completions.create(model="tiny", prompt="x")

    assert refused.value.status == 503
    assert len(gateway.requests) == 3  # the first try and LORAMUX_REPLICA_RETRIES=2


async def test_an_error_after_the_first_token_ends_the_stream_with_an_error_event(
    acme: AsyncClient, gateway: ScriptedGateway
) -> None:
    gateway.script = [GenerationChunk("r", "A", (65,)), EngineOverloadedError("queue full")]
    stream = await acme.chat.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received = []

    with pytest.raises(ServiceUnavailableError, match="queue full"):
        async for chunk in stream:
            received.append(chunk.choices[0].delta)

    assert [delta.content for delta in received] == ["", "A"]
    assert received[0].role == "assistant"


async def test_the_base_model_runs_without_an_adapter(
    acme: AsyncClient, gateway: ScriptedGateway
) -> None:
    gateway.script = [GenerationChunk("r", "Hi", (72, 105)), DONE]

    reply = await acme.completions.create(model="tiny", prompt="x")
    chat = await acme.chat.create(model="tiny", messages=[{"role": "user", "content": "x"}])

    assert reply.choices[0].text == "Hi!" and reply.choices[0].finish_reason == "stop"
    assert chat.choices[0].message.content == "Hi!"
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (2, 4)
    assert [r.adapter for r in gateway.requests] == [None, None]
    # OpenAI's defaults: 16 tokens for completions; chat has none, so the service's.
    assert [r.sampling.max_tokens for r in gateway.requests] == [16, 128]


async def test_requests_carry_the_exact_version_and_count_usage(
    acme: AsyncClient, gateway: ScriptedGateway, store: AdapterStore, adapter_dir: Path
) -> None:
    await acme.adapters.push(adapter_dir, "bot")
    await acme.adapters.push(adapter_dir, "bot")
    await acme.adapters.alias("bot", "prod", 1)
    gateway.script = [DONE]

    await acme.completions.create(model="bot:prod", prompt="x")
    await acme.completions.create(model="bot", prompt="x")

    assert [r.adapter.key for r in gateway.requests] == ["acme/bot@1", "acme/bot@2"]
    assert store.get_adapter("acme", "bot").request_count == 2


async def test_tenant_admin_keys_and_quotas(
    api: Any, acme: AsyncClient, store: AdapterStore, adapter_dir: Path
) -> None:
    async with client(api, ADMIN_KEY) as admin:
        created = await admin.tenants.create("globex")
        with pytest.raises(ResourceConflictError):
            await admin.tenants.create("globex")
        http = admin._http
        second = (await http.post("/v1/tenants/globex/keys")).json()["api_key"]
        revoked = await http.post("/v1/keys/revoke", json={"api_key": created.api_key})
        quota = await http.put("/v1/tenants/globex/quota", json={"max_adapters": 1})

    assert revoked.json() == {"tenant": "globex", "revoked": True}
    assert quota.json()["max_adapters"] == 1
    async with client(api, created.api_key) as old, client(api, second) as globex:
        with pytest.raises(UnauthorizedError):
            await old.models()
        await globex.adapters.push(adapter_dir, "one")
        with pytest.raises(OverQuotaError):
            await globex.adapters.push(adapter_dir, "two")
    with pytest.raises(PermissionDeniedError):
        await acme.tenants.create("intruder")


async def test_adapter_listing_is_paged(acme: AsyncClient, adapter_dir: Path) -> None:
    for name in ("a1", "a2", "a3"):
        await acme.adapters.push(adapter_dir, name)

    first = await acme.adapters.list_page(limit=2)
    rest = await acme.adapters.list_page(cursor=first.next_cursor, limit=2)

    assert [a.name for a in first.data] == ["a1", "a2"] and first.next_cursor
    assert [a.name for a in rest.data] == ["a3"] and rest.next_cursor is None


async def test_an_upload_without_the_adapter_parts_is_refused(acme: AsyncClient) -> None:
    response = await acme._http.post(
        "/v1/adapters", data={"name": "x"}, files=[("other", ("a.txt", b"hi"))]
    )

    assert response.status_code == 400
    assert "'archive' part" in response.json()["error"]["message"]


REPLICA_REPORT = ReplicaStats.model_validate(
    {
        "replica_id": "r1",
        "residency": {"gpu": ["acme/bot@1", "globex/x@1"], "host": ["globex/y@2"]},
        "gpu_slots": 4,
        "engine": "hf",
        "quantization": "nf4",
        "base_model_bytes": 1000,
        "base_model_full_bytes": 3600,
        "in_flight": 2,
        "queued": 1,
        "requests_served": 40,
        "tiers": {"gpu": {"hits": 30, "misses": 10, "hit_ratio": 0.75, "evictions": 3}},
        "loads": {"from_none": {"count": 10, "mean_s": 0.1, "p50_s": 0.1, "p99_s": 0.2}},
        "load_errors": {"gpu": 1},
        "coalesced_loads": 2,
    }
)


async def test_health_needs_a_live_replica_and_stats_hide_other_tenants(
    api: Any, acme: AsyncClient, gateway: ScriptedGateway
) -> None:
    with pytest.raises(ServiceUnavailableError, match="0 of 2"):
        await acme.health()
    gateway.replicas = [REPLICA_REPORT]

    health = await acme.health()
    stats = await acme.stats()
    async with client(api, ADMIN_KEY) as admin:
        everything = await admin.stats()

    assert (health.status, health.replicas, health.expected_replicas) == ("ok", 1, 2)
    # Only configuration and the tenant's own residency: every counter sums all
    # tenants' traffic.
    assert stats.replicas == [
        ReplicaStats(
            replica_id="r1",
            gpu_slots=4,
            engine="hf",
            quantization="nf4",
            base_model_bytes=1000,
            base_model_full_bytes=3600,
            residency=ResidentKeys(gpu=["acme/bot@1"]),
        )
    ]
    assert stats.tenant is not None and stats.tenant.tenant == "acme"
    assert stats.tenants is None
    assert everything.replicas == [REPLICA_REPORT]
    assert list(everything.tenants or {}) == ["acme"]
    assert everything.tenant is None and everything.adapters is None
    # Request limits: a tenant sees its own, the admin every tenant's.
    assert stats.limits is not None and stats.limits.effective.max_in_flight == 64
    assert stats.limits.own.max_in_flight is None  # the service default applies
    assert list(everything.tenant_limits or {}) == ["acme"]


async def test_a_tenant_stats_answer_carries_no_counter_field(
    api: Any, store: AdapterStore, gateway: ScriptedGateway
) -> None:
    gateway.replicas = [REPLICA_REPORT]
    _, key = store.create_tenant("initech")
    async with asgi_http(api) as raw:
        answer = (await raw.get("/v1/stats", headers={"Authorization": f"Bearer {key}"})).json()

    assert set(answer["replicas"][0]) == TENANT_REPLICA_FIELDS
    assert set(answer) == {"replicas", "tenant", "limits", "adapters"}


async def test_models_show_the_base_models_quantization_from_its_manifest(
    acme: AsyncClient, store: AdapterStore, adapter_dir: Path
) -> None:
    await acme.adapters.push(adapter_dir, "bot")
    unquantized = (await acme.models()).data
    # A replica holding the base in NF4 registers its manifest so; the modules are the
    # same, so the adapter pushed against the 16-bit manifest still serves.
    manifest = store.get_manifest("tiny")
    store.register_manifest(manifest_from_model("tiny", tiny_llama(), quantization="nf4"))

    quantized = (await acme.models()).data

    assert manifest.quantization == "none"
    assert [(m.id, m.quantization) for m in unquantized] == [("tiny", "none"), ("bot", None)]
    assert [(m.id, m.quantization) for m in quantized] == [("tiny", "nf4"), ("bot", None)]
    assert store.get_manifest("tiny").modules == manifest.modules


async def test_stats_authenticate_the_key_before_asking_the_replicas(
    api: Any, gateway: ScriptedGateway
) -> None:
    async with client(api, "not-a-key") as stranger:
        with pytest.raises(UnauthorizedError):
            await stranger.stats()

    assert gateway.stats_calls == 0


async def test_a_chunked_upload_without_content_length_is_411(
    acme: AsyncClient, store: AdapterStore, adapter_dir: Path
) -> None:
    files = [("files", (name, (adapter_dir / name).read_bytes())) for name in PEFT_FILES]
    sized = acme._http.build_request("POST", "/v1/adapters", data={"name": "bot"}, files=files)
    body = sized.read()

    async def chunked() -> AsyncIterator[bytes]:
        yield body

    refused = await acme._http.post(
        "/v1/adapters", content=chunked(), headers={"Content-Type": sized.headers["Content-Type"]}
    )

    assert "content-length" not in refused.request.headers
    assert refused.status_code == 411
    assert "Content-Length" in refused.json()["error"]["message"]
    assert store.list_adapters("acme").items == ()
    # The same body with its size is accepted.
    assert (await acme._http.send(sized)).status_code == 201


async def test_an_upload_above_the_size_cap_is_413(
    tmp_path: Path, gateway: ScriptedGateway, adapter_dir: Path
) -> None:
    settings = StoreSettings(data_dir=tmp_path, max_adapter_bytes=1000)
    blobs = LocalBlobStore(tmp_path / "blobs")
    with AdapterStore(InMemoryMetadataStore(), blobs, limits=settings.adapter_limits) as store:
        _, key = store.create_tenant("acme")
        api = create_api(store, gateway, ServiceSettings(store=settings))
        async with client(api, key) as acme:
            with pytest.raises(PayloadTooLargeError, match="1000"):
                await acme.adapters.push(adapter_dir, "big")

        assert store.list_adapters("acme").items == ()


async def test_deleting_an_adapter_removes_every_version(
    acme: AsyncClient, adapter_dir: Path
) -> None:
    await acme.adapters.push(adapter_dir, "gone")
    await acme.adapters.push(adapter_dir, "gone")

    deleted = await acme.adapters.delete("gone")

    assert (deleted.name, deleted.version, deleted.deleted) == ("gone", None, True)
    with pytest.raises(ResourceNotFoundError):
        await acme.adapters.get("gone")
    with pytest.raises(ResourceNotFoundError):
        await acme.completions.create(model="gone@1", prompt="x")


async def test_another_tenants_adapter_is_not_found_on_every_route(
    api: Any,
    acme: AsyncClient,
    gateway: ScriptedGateway,
    store: AdapterStore,
    adapter_dir: Path,
    tmp_path: Path,
) -> None:
    await acme.adapters.push(adapter_dir, "bot")
    await acme.adapters.push(adapter_dir, "bot")
    await acme.adapters.alias("bot", "prod", 1)
    before = await acme.adapters.get("bot")
    _, key = store.create_tenant("globex")
    gateway.script = [DONE]
    chat = [{"role": "user", "content": "x"}]

    async with client(api, key) as globex:
        attempts: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("get", lambda: globex.adapters.get("bot")),
            ("get_version", lambda: globex.adapters.get_version("bot", 1)),
            ("download", lambda: globex.adapters.download("bot@1", tmp_path / "stolen")),
            ("set alias", lambda: globex.adapters.alias("bot", "mine", 1)),
            ("remove alias", lambda: globex.adapters.remove_alias("bot", "prod")),
            ("delete version", lambda: globex.adapters.delete("bot", version=1)),
            ("delete", lambda: globex.adapters.delete("bot")),
        ]
        for ref in ("bot", "bot@1", "bot:prod"):
            attempts += [
                (f"completions {ref}", partial(globex.completions.create, model=ref, prompt="x")),
                (f"chat {ref}", partial(globex.chat.create, model=ref, messages=chat)),
            ]
        refused = []
        for route, attempt in attempts:
            try:
                await attempt()
            except ResourceNotFoundError:
                refused.append(route)

    assert refused == [route for route, _ in attempts]
    assert await acme.adapters.get("bot") == before
    assert gateway.requests == []
    assert store.get_adapter("acme", "bot").request_count == 0
    assert not (tmp_path / "stolen").exists()  # a refused download creates nothing


@pytest.fixture
def limited(store: AdapterStore, gateway: ScriptedGateway, tmp_path: Path) -> Any:
    """``limited(**limits)``: an API with these request limits, and tenant acme's key."""

    def build(**limits: Any) -> tuple[Any, str]:
        settings = ServiceSettings(
            store=StoreSettings(data_dir=tmp_path),
            admin_key=ADMIN_KEY,
            limits=LimitSettings(**limits),
        )
        return create_api(store, gateway, settings), store.create_tenant("acme")[1]

    return build


async def test_a_request_above_a_limit_is_refused_naming_the_setting_before_any_replica(
    limited: Any, gateway: ScriptedGateway
) -> None:
    api, key = limited(max_tokens_limit=100, max_body_bytes=2048)
    gateway.script = [DONE]
    async with client(api, key) as acme:
        with pytest.raises(BadRequestError, match="LORAMUX_MAX_TOKENS_LIMIT"):
            await acme.completions.create(model="tiny", prompt="x", max_tokens=101)
        with pytest.raises(PayloadTooLargeError, match="LORAMUX_MAX_BODY_BYTES"):
            await acme.completions.create(model="tiny", prompt="x" * 4096)
        await acme.completions.create(model="tiny", prompt="x", max_tokens=100)

    assert len(gateway.requests) == 1


async def test_a_tenant_over_its_rate_gets_429_with_retry_after_and_others_are_admitted(
    limited: Any, store: AdapterStore, gateway: ScriptedGateway
) -> None:
    api, acme_key = limited(tenant_requests_per_s=0.1)
    _, beta_key = store.create_tenant("beta")
    gateway.script = [DONE]
    body = {"model": "tiny", "prompt": "x", "max_tokens": 4}
    async with asgi_http(api) as http:

        def post(key: str) -> Awaitable[httpx.Response]:
            return http.post(
                "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )

        first, second, other = await post(acme_key), await post(acme_key), await post(beta_key)

    assert (first.status_code, other.status_code) == (200, 200)
    assert second.status_code == 429
    assert "requests_per_s limit" in second.json()["error"]["message"]
    assert 1 <= int(second.headers["Retry-After"]) <= 10
    assert len(gateway.requests) == 2


async def test_the_in_flight_lease_is_released_when_a_request_ends_or_fails(
    limited: Any, gateway: ScriptedGateway
) -> None:
    api, key = limited(tenant_max_in_flight=1)
    async with client(api, key) as acme:
        gateway.script = [InvalidRequestError("the prompt is too long")]
        with pytest.raises(BadRequestError, match="too long"):
            await acme.completions.create(model="tiny", prompt="x")
        gateway.script = [DONE]
        for _ in range(3):
            await acme.completions.create(model="tiny", prompt="x")
        stream = await acme.completions.create(model="tiny", prompt="x", stream=True)
        assert [chunk.choices[0].text async for chunk in stream] == ["!"]
        await acme.completions.create(model="tiny", prompt="x")

    assert len(gateway.requests) == 6
