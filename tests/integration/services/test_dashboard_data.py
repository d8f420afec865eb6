"""``GET /dashboard/data`` over a real store (redis-server, file:// blobs) and scripted
replica reports: who sees what, the storage totals and the rankings. The page itself in
a real browser, over the whole service, is ``test_dashboard_browser.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from adapter_store import AdapterStore
from adapter_store import StoreSettings
from adapter_store import TenantLimits
from adapter_store import read_adapter_upload
from services._settings import ServiceSettings
from services.api import create_api
from services.api._dashboard import dashboard_router
from services.client import ReplicaStats
from tests.factories import make_peft_adapter
from tests.factories import tiny_llama
from tests.helpers import TENANT_REPLICA_FIELDS
from tests.helpers import asgi_http

ADMIN_KEY = "admin-key"
BASE_MODEL_BYTES = 1_000_000  # unquantized: one full fine-tuned copy
HELD_BYTES = 300_000  # what the replicas' NF4 base holds


def replica_report(replica_id: str, resident: list[str]) -> ReplicaStats:
    """What a replica reports to the board (the fields the dashboard reads)."""
    return ReplicaStats.model_validate(
        {
            "replica_id": replica_id,
            "residency": {
                "gpu": resident,
                "host": resident,
                "disk": [],
                "loading": [],
                "pinned": [],
            },
            "gpu_slots": 2,
            "engine": "hf",
            "quantization": "nf4",
            "base_model_bytes": HELD_BYTES,
            "base_model_full_bytes": BASE_MODEL_BYTES,
            "in_flight": 0,
            "queued": 0,
            "requests_served": 3,
            "tiers": {
                tier: {"hits": 2, "misses": 1, "hit_ratio": 2 / 3, "evictions": 0}
                for tier in ("gpu", "host", "disk")
            },
            "loads": {},
            "load_errors": {},
            "coalesced_loads": 0,
        }
    )


class Replicas:
    """Stands in for the model gateway: only the replicas' reports are read."""

    def __init__(self) -> None:
        self.reports: list[ReplicaStats] = []

    async def replica_stats(self) -> list[ReplicaStats]:
        return self.reports

    def generate(self, request: Any) -> Any:
        raise AssertionError("the dashboard generates nothing")


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    adapter = make_peft_adapter(tiny_llama(), tmp_path_factory.mktemp("adapter") / "a", seed=1)
    return {
        name: (adapter / name).read_bytes()
        for name in ("adapter_config.json", "adapter_model.safetensors")
    }


@pytest.fixture
def keys(store: AdapterStore, adapter_files: dict[str, bytes]) -> dict[str, str]:
    """acme: support (2 versions, 3 requests) and sales (1 request, trained); globex:
    bot (none)."""
    keys = {name: store.create_tenant(name)[1] for name in ("acme", "globex")}
    pushes = [("acme", "support", 1), ("acme", "support", 2), ("acme", "sales", 1)]
    pushes.append(("globex", "bot", 0))
    for tenant, name, requests in pushes:
        version = store.push(
            tenant,
            name,
            read_adapter_upload(adapter_files, store.limits),
            base_model="tiny",
            origin="trained" if name == "sales" else "pushed",
        )
        for _ in range(requests):
            store.record_usage(version)
    return keys


@pytest.fixture
def replicas() -> Replicas:
    replicas = Replicas()
    replicas.reports = [
        replica_report("r1", ["acme/support@2", "globex/bot@1"]),
        replica_report("r2", ["acme/sales@1"]),
    ]
    return replicas


@pytest.fixture
async def get(store: AdapterStore, replicas: Replicas, tmp_path: Path) -> AsyncIterator[Any]:
    settings = ServiceSettings(store=StoreSettings(data_dir=tmp_path), admin_key=ADMIN_KEY)
    api = create_api(store, replicas, settings)
    async with asgi_http(api) as http:

        async def get(key: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return await http.get("/dashboard/data", headers=headers)

        yield get


async def test_the_admin_key_sees_every_tenant_and_the_storage_saving(
    get: Any, keys: dict[str, str], store: AdapterStore
) -> None:
    data = (await get(ADMIN_KEY)).json()
    stored = sum(store.get_usage(tenant).bytes for tenant in ("acme", "globex"))

    assert (data["scope"], data["tenant"]) == ("all", None)
    # The base's bytes are what it holds; full copies are counted unquantized.
    assert data["base_model"] == {
        "id": "tiny",
        "bytes": HELD_BYTES,
        "full_bytes": BASE_MODEL_BYTES,
        "quantization": "nf4",
        "engine": "hf",
    }
    assert data["storage"] == {
        "tenants": 2,
        "adapters": 3,
        "trained": 1,
        "versions": 4,
        "bytes": stored,
        "full_copies_bytes": 3 * BASE_MODEL_BYTES,
        "saved_bytes": 3 * BASE_MODEL_BYTES - stored,
    }
    assert [(r["adapter"], r["requests"], r["origin"]) for r in data["top_adapters"]] == [
        ("acme/support", 3, "pushed"),
        ("acme/sales", 1, "trained"),
        ("globex/bot", 0, "pushed"),
    ]
    assert [(row["tenant"], row["requests"]) for row in data["top_tenants"]] == [
        ("acme", 4),
        ("globex", 0),
    ]
    assert data["replicas"][0]["residency"]["gpu"] == ["acme/support@2", "globex/bot@1"]


async def test_each_tenant_row_carries_its_effective_limits_and_whether_they_are_its_own(
    get: Any, keys: dict[str, str], store: AdapterStore
) -> None:
    store.set_limits("globex", TenantLimits(requests_per_s=2.0, max_in_flight=3))
    defaults = ServiceSettings().limits

    rows = {row["tenant"]: row for row in (await get(ADMIN_KEY)).json()["top_tenants"]}
    own = (await get(keys["globex"])).json()["top_tenants"]

    assert rows["acme"]["limits"] == {
        "requests_per_s": defaults.tenant_requests_per_s,
        "tokens_per_min": defaults.tenant_tokens_per_min,
        "max_in_flight": defaults.tenant_max_in_flight,
    }
    assert rows["globex"]["limits"] == {
        "requests_per_s": 2.0,
        "tokens_per_min": defaults.tenant_tokens_per_min,  # not set: the default
        "max_in_flight": 3,
    }
    assert (rows["acme"]["own_limits"], rows["globex"]["own_limits"]) == (False, True)
    assert [(row["tenant"], row["limits"]) for row in own] == [("globex", rows["globex"]["limits"])]


async def test_a_tenant_key_sees_only_its_own_adapters(get: Any, keys: dict[str, str]) -> None:
    data = (await get(keys["globex"])).json()

    assert (data["scope"], data["tenant"]) == ("tenant", "globex")
    assert [r["residency"]["gpu"] for r in data["replicas"]] == [["globex/bot@1"], []]
    assert [row["adapter"] for row in data["top_adapters"]] == ["globex/bot"]
    assert [row["tenant"] for row in data["top_tenants"]] == ["globex"]
    assert (data["storage"]["adapters"], data["storage"]["versions"]) == (1, 1)
    # As in /v1/stats: the replicas' counters sum every tenant's traffic, so a tenant
    # sees none of them, only the configuration.
    assert set(data["replicas"][0]) == TENANT_REPLICA_FIELDS


async def test_no_key_or_an_unknown_one_is_refused(get: Any, keys: dict[str, str]) -> None:
    missing, unknown = await get(None), await get("not-a-key")

    assert (missing.status_code, unknown.status_code) == (401, 401)


async def test_the_saving_is_unknown_until_a_replica_reports(
    get: Any, keys: dict[str, str], replicas: Replicas
) -> None:
    replicas.reports = []
    data = (await get(ADMIN_KEY)).json()

    assert data["base_model"]["bytes"] is None
    assert data["storage"]["full_copies_bytes"] is None
    assert data["storage"]["saved_bytes"] is None
    assert data["storage"]["adapters"] == 3


async def test_the_store_summary_is_reused_within_its_ttl(
    store: AdapterStore, replicas: Replicas, keys: dict[str, str], adapter_files: dict[str, bytes]
) -> None:
    now = [0.0]
    settings = ServiceSettings(store=StoreSettings(data_dir=Path("unused")), admin_key=ADMIN_KEY)
    app = FastAPI()
    app.include_router(
        dashboard_router(store, replicas, settings, summary_ttl_s=5.0, clock=lambda: now[0])
    )
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def adapters() -> int:
        async with asgi_http(app) as http:
            return (await http.get("/dashboard/data", headers=headers)).json()["storage"][
                "adapters"
            ]

    before = await adapters()
    store.push("globex", "new", read_adapter_upload(adapter_files, store.limits), base_model="tiny")
    now[0] = 4.9
    cached = await adapters()
    now[0] = 5.0
    fresh = await adapters()

    assert (before, cached, fresh) == (3, 3, 4)
