"""Redis goes away under the API and comes back: 503 with Retry-After while it is
down, served again as soon as it answers (a real redis-server, killed and restarted on
its port and files)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from adapter_store import RedisMetadataStore
from adapter_store import StoreSettings
from adapter_store import open_blob_store
from adapter_store._redis_server import RedisServerProcess
from services._settings import ServiceSettings
from services.api import create_api
from tests.factories import TinyBase
from tests.factories import build_store
from tests.fakes import ScriptedGateway
from tests.helpers import asgi_http


@pytest.fixture
def server(own_redis_server: RedisServerProcess) -> RedisServerProcess:
    return own_redis_server


async def test_the_api_answers_503_with_retry_after_while_redis_is_down_then_serves(
    server: RedisServerProcess, tmp_path: Path, tiny_base: TinyBase
) -> None:
    metadata = RedisMetadataStore.from_url(server.url, key_prefix="t:", attempts=1)
    store = build_store(metadata, open_blob_store((tmp_path / "b").as_uri()), tiny_base.manifest)
    _, key = store.create_tenant("globex")
    settings = ServiceSettings(store=StoreSettings(data_dir=tmp_path), admin_key="admin")
    api = create_api(store, ScriptedGateway(), settings)
    headers = {"Authorization": f"Bearer {key}"}
    async with asgi_http(api) as http:
        assert (await http.get("/v1/models", headers=headers)).status_code == 200

        server.kill()
        down = await http.get("/v1/models", headers=headers)
        assert down.status_code == 503
        assert down.headers["Retry-After"] == "1"
        assert "Redis" in down.json()["error"]["message"]

        restarted = RedisServerProcess(server.data_dir, port=server.port, appendonly=True)
        restarted.start()
        try:
            back_at = time.monotonic()
            status = 503
            while status == 503 and time.monotonic() - back_at < 5.0:
                status = (await http.get("/v1/models", headers=headers)).status_code
            assert status == 200  # the same key and tenant, from the append-only file
        finally:
            restarted.stop()
