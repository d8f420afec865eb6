"""Fixtures the services integration tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter_store import AdapterStore
from adapter_store import StoreSettings
from adapter_store import manifest_from_model
from tests.factories import tiny_llama


@pytest.fixture
def store(redis_url: str, tmp_path: Path) -> Iterator[AdapterStore]:
    """A store over the session redis-server and file:// blobs, with the ``tiny`` base
    model's manifest registered."""
    settings = StoreSettings(
        redis_url=redis_url, blob_url=(tmp_path / "blobs").as_uri(), data_dir=tmp_path
    )
    with AdapterStore.from_settings(settings) as store:
        store.register_manifest(manifest_from_model("tiny", tiny_llama()))
        yield store
