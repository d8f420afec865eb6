"""The whole service over real HTTP: Ray Serve, the ingress, two model replicas.

One module-scoped session: a local Ray, Serve's proxy on a free port, the real
application (built-in ``tiny`` base model, 2 replicas), a private redis-server and a
``file://`` blob store. Adapters are made with real PEFT against the same ``tiny`` model
the replicas serve. Requests go through the SDK and the official ``openai`` client.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.client import Client
from services.exceptions import BadRequestError
from services.exceptions import PermissionDeniedError
from services.exceptions import ResourceNotFoundError
from services.exceptions import UnauthorizedError
from tests.helpers import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ADMIN_KEY = "admin-test-key"
# The machine may be heavily loaded: generous waits, never asserted on.
READY_TIMEOUT_S = 300.0
PROMPT = "Hello there"


@dataclass
class Service:
    url: str
    store_root: Path
    adapter_dir: Path
    other_adapter_dir: Path
    redis_url: str


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    import ray
    from ray import serve

    from adapter_store import StoreSettings
    from adapter_store._redis_server import RedisServerProcess
    from adapter_store._redis_server import free_port
    from services._settings import ServiceSettings
    from services.engine import load_base_model
    from services.serve import build_app
    from tests.factories import make_peft_adapter

    root = tmp_path_factory.mktemp("service")
    models_dir = root / "models"
    tiny = copy.deepcopy(load_base_model("tiny", models_dir=models_dir, device="cpu").model)
    adapter_dir = make_peft_adapter(tiny, root / "support", seed=1, r=8, lora_alpha=32)
    other_dir = make_peft_adapter(tiny, root / "other", seed=2, r=4, lora_alpha=8)

    redis = RedisServerProcess(root / "redis", appendonly=False)
    redis.start()
    settings = ServiceSettings(
        store=StoreSettings(
            redis_url=redis.url,
            blob_url=(root / "blobs").as_uri(),
            data_dir=root / "data",
        ),
        models_dir=models_dir,
        replicas=2,
        num_cpus=0.5,
        ingress_num_cpus=0.25,
        num_gpus=0,
        training_num_cpus=0.5,
        torch_threads=1,
        gpu_slots=2,
        max_batch_size=4,
        default_max_tokens=4,
        routing_stats_period_s=0.5,
        stats_period_s=0.5,
        admin_key=ADMIN_KEY,
    )
    port = free_port()
    # As ``loramux up`` does: the router reads the URL from its process's environment.
    os.environ["LORAMUX_REDIS_URL"] = redis.url
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(settings), name=settings.app_name, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, READY_TIMEOUT_S)
        yield Service(url, root, adapter_dir, other_dir, redis.url)
    finally:
        serve.shutdown()
        ray.shutdown()
        redis.stop()
        del os.environ["LORAMUX_REDIS_URL"]


@pytest.fixture(scope="module")
def admin(service: Service) -> Iterator[Client]:
    with Client(service.url, ADMIN_KEY, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def keys(admin: Client) -> dict[str, str]:
    return {name: admin.tenants.create(name).api_key for name in ("acme", "globex")}


@pytest.fixture(scope="module")
def acme(service: Service, keys: dict[str, str]) -> Iterator[Client]:
    with Client(service.url, keys["acme"], max_retries=0, timeout=120) as client:
        client.adapters.push(service.adapter_dir, "support")
        yield client


@pytest.fixture(scope="module")
def globex(service: Service, keys: dict[str, str]) -> Iterator[Client]:
    with Client(service.url, keys["globex"], max_retries=0, timeout=120) as client:
        yield client


def test_health_counts_both_replicas(service: Service) -> None:
    wait_until(lambda: httpx.get(f"{service.url}/healthz").json()["replicas"] == 2, READY_TIMEOUT_S)
    body = httpx.get(f"{service.url}/healthz").json()

    assert body == {"status": "ok", "replicas": 2, "expected_replicas": 2}


def test_pushed_adapter_is_listed_and_versioned(acme: Client) -> None:
    adapter = acme.adapters.get("support")

    assert (adapter.tenant, adapter.name, adapter.versions) == ("acme", "support", [1])
    assert adapter.latest.key == "acme/support@1"
    assert adapter.latest.base_model == "tiny" and adapter.latest.rank == 8
    assert [a.name for a in acme.adapters.list()] == ["support"]
    assert {m.id for m in acme.models().data} == {"tiny", "support"}


def test_completion_with_adapter_and_base_model(acme: Client) -> None:
    params = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 2}
    tuned = acme.completions.create(model="support", **params)
    base = acme.completions.create(model="tiny", **params)

    for reply in (tuned, base):
        choice = reply.choices[0]
        assert choice.finish_reason in ("stop", "length")
        assert reply.usage.prompt_tokens == len(PROMPT.encode())  # byte-level tokenizer
        assert 1 <= reply.usage.completion_tokens <= 4
        assert len(choice.logprobs["token_logprobs"]) == reply.usage.completion_tokens
        assert all(len(top) <= 2 for top in choice.logprobs["top_logprobs"])
    # The adapter changes the model's distribution at the very first position.
    assert (
        tuned.choices[0].logprobs["top_logprobs"][0] != base.choices[0].logprobs["top_logprobs"][0]
    )


def test_streamed_completion_matches_the_plain_one(acme: Client) -> None:
    params = {"model": "support@1", "prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    plain = acme.completions.create(**params)
    chunks = list(
        acme.completions.create(stream=True, stream_options={"include_usage": True}, **params)
    )
    *text_chunks, usage_chunk = chunks

    assert "".join(c.choices[0].text for c in text_chunks) == plain.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    # As OpenAI: usage only when asked for, in a last chunk without choices.
    assert usage_chunk.choices == [] and usage_chunk.usage == plain.usage
    assert all(c.usage is None for c in text_chunks)


def test_stop_strings_and_seeds(acme: Client) -> None:
    params = {"model": "support", "prompt": PROMPT, "max_tokens": 4}
    plain = acme.completions.create(temperature=0, **params).choices[0].text
    stop = plain[1]
    stopped = acme.completions.create(temperature=0, stop=[stop], **params).choices[0]
    sampled = [
        acme.completions.create(temperature=1.0, seed=11, **params).choices[0].text
        for _ in range(2)
    ]

    assert stopped.text == plain[: plain.index(stop)]
    assert stopped.finish_reason == "stop"
    assert sampled[0] == sampled[1]


def test_chat_through_the_official_openai_client(service: Service, acme: Client) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=acme.api_key, max_retries=0)
    messages = [{"role": "user", "content": "Hi"}]

    reply = client.chat.completions.create(
        model="support", messages=messages, max_tokens=4, temperature=0, seed=7
    )
    stream = client.chat.completions.create(
        model="support", messages=messages, max_tokens=4, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    listed = client.models.list()

    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == streamed
    assert reply.usage.completion_tokens <= 4 and reply.usage.total_tokens > 4
    assert {model.id for model in listed} == {"tiny", "support"}


def test_chat_logprobs_in_openai_shape(service: Service, acme: Client) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=acme.api_key, max_retries=0)
    reply = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2,
        logprobs=True,
        top_logprobs=3,
    )

    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 3 for entry in content)


def test_tenants_see_only_their_own_adapters(acme: Client, globex: Client) -> None:
    with pytest.raises(ResourceNotFoundError):
        globex.adapters.get("support")
    with pytest.raises(ResourceNotFoundError):
        globex.completions.create(model="support", prompt=PROMPT)

    assert [a.name for a in globex.adapters.list()] == []
    assert {m.id for m in globex.models().data} == {"tiny"}


def test_error_statuses(service: Service, admin: Client, acme: Client) -> None:
    with pytest.raises(UnauthorizedError):
        Client(service.url, "lmx_not-a-key", max_retries=0).models()
    missing = httpx.get(f"{service.url}/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    with pytest.raises(PermissionDeniedError):
        acme.tenants.create("intruder")
    with pytest.raises(ResourceNotFoundError):
        acme.completions.create(model="no-such-adapter", prompt=PROMPT)
    # Refused by the replica's engine: the error crosses Ray and keeps its status.
    with pytest.raises(BadRequestError, match="max_tokens"):
        acme.completions.create(model="support", prompt=PROMPT, max_tokens=5000)
    with pytest.raises(BadRequestError, match="max_tokens"):
        acme.completions.create(model="support", prompt=PROMPT, max_tokens=5000, stream=True)
    with pytest.raises(BadRequestError, match="best_of"):
        acme.completions.create(model="support", prompt=PROMPT, n=2, best_of=3)
    response = httpx.post(
        f"{service.url}/v1/completions",
        headers={"Authorization": f"Bearer {acme.api_key}"},
        json={"model": "support", "prompt": PROMPT, "bogus": 1},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"


def test_malformed_upload_is_400_and_changes_nothing(service: Service, acme: Client) -> None:
    broken = service.store_root / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_bytes(
        (service.adapter_dir / "adapter_config.json").read_bytes()
    )
    (broken / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00not a header")

    with pytest.raises(BadRequestError):
        acme.adapters.push(broken, "support")
    with pytest.raises(BadRequestError):
        acme.adapters.push(broken, "fresh")

    assert acme.adapters.get("support").versions == [1]
    assert [a.name for a in acme.adapters.list()] == ["support"]


# The hostile uploads of issue 9: catastrophic regex, numeric overflow, header bombs,
# poisoned scaling and weights (tests/malformed.py writes each one).
HOSTILE = (
    "regex_bomb_target_modules",
    "alpha_400_digits",
    "header_many_huge_dims",
    "header_huge_dims",
    "scaling_above_limit",
    "rslora_scaling_above_limit",
    "huge_weights",
    "nan_weights",
)
# A fence against unbounded work, not a benchmark: validation takes milliseconds.
REFUSAL_BOUND_S = 2.0


def test_hostile_uploads_are_refused_fast_while_another_tenant_is_served(
    service: Service, keys: dict[str, str], acme: Client
) -> None:
    import threading
    import time

    from services.engine import load_base_model
    from tests.malformed import MALFORMED_CASES
    from tests.malformed import write_valid_adapter

    # The corpus edits a valid adapter: one for the service's own base model.
    tiny = load_base_model("tiny", models_dir=service.store_root / "models", device="cpu")
    valid = write_valid_adapter(copy.deepcopy(tiny.model), service.store_root / "valid")
    cases = [case for case in MALFORMED_CASES if case.id in HOSTILE]
    assert sorted(case.id for case in cases) == sorted(HOSTILE)
    stop = threading.Event()
    served: list[int] = []
    failed: list[BaseException] = []

    def other_tenant() -> None:
        with Client(service.url, keys["globex"], max_retries=0, timeout=120) as globex:
            while not stop.is_set():
                try:
                    reply = globex.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
                    served.append(reply.usage.completion_tokens)
                except BaseException as exc:
                    failed.append(exc)
                    return

    before = acme.adapters.get("support")
    worker = threading.Thread(target=other_tenant)
    worker.start()
    refusals: dict[str, float] = {}
    try:
        for case in cases:
            source = case.write(valid, service.store_root / "hostile" / case.id)
            started = time.monotonic()
            with pytest.raises(BadRequestError, match=re.escape(case.message)):
                acme.adapters.push(source, "support")
            refusals[case.id] = time.monotonic() - started
        wait_until(lambda: len(served) >= 3, READY_TIMEOUT_S)
    finally:
        stop.set()
        worker.join()

    assert failed == []
    assert max(refusals.values()) < REFUSAL_BOUND_S, refusals
    assert acme.adapters.get("support") == before  # nothing published or changed


def test_versions_aliases_download_and_delete(service: Service, acme: Client) -> None:
    second = acme.adapters.push(service.other_adapter_dir, "support")
    acme.adapters.alias("support", "prod", 1)
    by_alias = acme.completions.create(model="support:prod", prompt=PROMPT, max_tokens=1)
    downloaded = acme.adapters.download("support:prod", service.store_root / "pulled")

    assert second.version == 2 and second.rank == 4
    assert acme.adapters.get("support").aliases == {"latest": 2, "prod": 1}
    assert acme.adapters.get_version("support", 1).aliases == ["prod"]
    assert by_alias.usage.completion_tokens == 1
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (downloaded / name).read_bytes() == (service.adapter_dir / name).read_bytes()

    acme.adapters.delete("support", version=2)
    assert acme.adapters.get("support").versions == [1]
    with pytest.raises(ResourceNotFoundError):
        acme.completions.create(model="support@2", prompt=PROMPT)


def test_stats_show_residency_and_counters(admin: Client, acme: Client) -> None:
    acme.completions.create(model="support@1", prompt=PROMPT, max_tokens=1)

    def resident() -> bool:
        return any("acme/support@1" in r.residency.gpu for r in acme.stats().replicas)

    wait_until(resident, 60)
    mine = acme.stats()
    everything = admin.stats()

    assert len(mine.replicas) == 2 == len(everything.replicas)
    assert set(everything.tenants or {}) == {"acme", "globex"}
    # The counters sum every tenant's traffic: the admin key's alone.
    assert sum(r.tiers["gpu"].hits + r.tiers["gpu"].misses for r in everything.replicas if r.tiers)
    assert not any(r.tiers for r in mine.replicas)
    # The unquantized tiny base: it holds its full-precision size (plus rotary buffers).
    for replica in mine.replicas:
        assert (replica.engine, replica.quantization) == ("hf", "none")
        assert replica.base_model_bytes >= (replica.base_model_full_bytes or 0) > 0
    assert mine.adapters is not None and mine.adapters["support"].requests >= 1
    assert mine.tenant is not None and mine.tenant.adapters == 1
    assert all(
        key.startswith("acme/")
        for r in mine.replicas
        for keys in r.residency.model_dump().values()
        for key in keys
    )


def test_replicas_publish_their_residency_to_redis(service: Service, acme: Client) -> None:
    import redis

    from scheduler import ReplicaSnapshot
    from scheduler import replica_key
    from scheduler import snapshot_from_hash

    acme.completions.create(model="support@1", prompt=PROMPT, max_tokens=1)
    client = redis.Redis.from_url(service.redis_url)

    def snapshots() -> list[ReplicaSnapshot]:
        keys = client.keys(replica_key("loramux:", "*"))
        return [snapshot_from_hash(client.hgetall(key)) for key in keys]

    try:
        wait_until(lambda: any("acme/support@1" in s.gpu for s in snapshots()), 60)
        published = snapshots()
        assert len(published) == 2  # one hash per replica, kept alive by its refresh
        assert all(client.pttl(replica_key("loramux:", s.replica_id)) > 0 for s in published)
    finally:
        client.close()


def test_request_features_cross_ray_to_the_replicas(service: Service, acme: Client) -> None:
    import json

    import openai

    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key=acme.api_key, max_retries=0)
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"],
    }
    reply = client.chat.completions.create(
        model="support",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=40,
        n=2,
        seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    )
    stream = client.chat.completions.create(
        model="support",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        presence_penalty=1.0,
    )
    chunks = list(stream)

    assert [c.index for c in reply.choices] == [0, 1]
    assert all(0 <= json.loads(c.message.content)["n"] <= 9 for c in reply.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 4
    assert client.models.retrieve("support").root == "tiny"


def test_a_training_job_runs_as_a_ray_task_and_its_adapter_serves_at_once(
    acme: Client, globex: Client
) -> None:
    from services.client import TrainingOptions

    lines = [f'{{"prompt": "{i} plus 1?", "completion": " {i + 1}"}}' for i in range(6)]
    options = TrainingOptions(max_steps=3, batch_size=2, rank=4)

    job = acme.training.create("\n".join(lines), name="trained", options=options)
    done = acme.training.wait(job.id, poll_s=0.2, timeout_s=READY_TIMEOUT_S)
    reply = acme.completions.create(model="trained", prompt=PROMPT, max_tokens=2)

    assert done.status == "succeeded", done.error
    assert (done.version, done.progress.step if done.progress else None) == (1, 3)
    assert acme.adapters.get("trained").latest.rank == 4
    assert reply.usage.completion_tokens >= 1
    with pytest.raises(ResourceNotFoundError):
        globex.training.get(job.id)


def test_a_model_replica_killed_under_load_loses_no_request(
    service: Service, keys: dict[str, str], acme: Client
) -> None:
    """Last in the module: it SIGKILLs one of the two model replicas while six clients
    keep requesting (Serve then starts another). The clients do not retry
    (``max_retries=0``): every request must succeed because the service retried it."""
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import ray

    from services.serve import MODEL_DEPLOYMENT

    replicas = [
        ray.get_actor(actor["name"], namespace=actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if f"#{MODEL_DEPLOYMENT}#" in actor["name"]
    ]
    assert len(replicas) == 2
    victim = ray.get(replicas[0].__ray_call__.remote(lambda _: os.getpid()))
    stop = threading.Event()
    answered: list[int] = []

    def client_loop() -> None:
        with Client(service.url, keys["acme"], max_retries=0, timeout=120) as client:
            while not stop.is_set():
                reply = client.completions.create(model="support", prompt=PROMPT, max_tokens=16)
                answered.append(reply.usage.completion_tokens)

    with ThreadPoolExecutor(6) as pool:
        clients = [pool.submit(client_loop) for _ in range(6)]
        wait_until(lambda: len(answered) >= 12, READY_TIMEOUT_S)  # both replicas busy
        before = len(answered)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(answered) >= before + 60, READY_TIMEOUT_S)
        stop.set()
        for running in clients:
            running.result()  # a lost request raises here

    assert all(tokens >= 1 for tokens in answered)
