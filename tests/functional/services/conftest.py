"""Fixtures of the API and CLI tests: the store over in-memory metadata and file://
blobs, with the ``tiny`` base model's manifest registered (no tenant yet), the scripted
gateway standing in for the model replicas, and the API served over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter_store import AdapterStore
from adapter_store import LocalBlobStore
from adapter_store import StoreSettings
from adapter_store import manifest_from_model
from services._settings import ServiceSettings
from services.api import TrainingGateway
from services.api import create_api
from tests.factories import tiny_llama
from tests.fakes import InMemoryMetadataStore
from tests.fakes import ScriptedGateway
from tests.helpers import served

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
    with served(create_api(store, gateway, settings, trainer=trainer)) as url:
        yield url
