"""Fixtures of the API and CLI tests: the store over in-memory metadata and file://
blobs, with the ``tiny`` base model's manifest registered (no tenant yet), the scripted
gateway standing in for the model replicas, and the API served over HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from adapter_store import AdapterStore, LocalBlobStore, StoreSettings, manifest_from_model
from services._settings import ServiceSettings
from services.api import TrainingGateway, create_api
from tests.factories import tiny_llama
from tests.fakes import InMemoryMetadataStore, ScriptedGateway

ADMIN_KEY = "admin-key"


@pytest.fixture
def store(metadata: InMemoryMetadataStore, tmp_path: Path) -> Iterator[AdapterStore]:
    with AdapterStore(metadata, LocalBlobStore(tmp_path / "blobs")) as built:
        built.register_manifest(manifest_from_model("tiny", tiny_llama()))
        yield built


@pytest.fixture
def gateway() -> ScriptedGateway:
    return ScriptedGateway()


@pytest.fixture
def trainer() -> TrainingGateway | None:
    """No trainer: a module that tests training overrides this."""
    return None


@pytest.fixture
def service_url(
    store: AdapterStore,
    gateway: ScriptedGateway,
    trainer: TrainingGateway | None,
    tmp_path: Path,
) -> Iterator[str]:
    """The API served over HTTP on 127.0.0.1 (a free port) until the test ends."""
    settings = ServiceSettings(store=StoreSettings(data_dir=tmp_path), admin_key=ADMIN_KEY)
    api = create_api(store, gateway, settings, trainer=trainer)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(api, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
