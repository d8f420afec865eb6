"""Fixtures of the API and CLI tests: the store over in-memory metadata and file://
blobs, with the ``tiny`` base model's manifest registered (no tenant yet)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter_store import AdapterStore, LocalBlobStore, manifest_from_model
from tests.factories import tiny_llama
from tests.fakes import InMemoryMetadataStore


@pytest.fixture
def store(metadata: InMemoryMetadataStore, tmp_path: Path) -> Iterator[AdapterStore]:
    with AdapterStore(metadata, LocalBlobStore(tmp_path / "blobs")) as built:
        built.register_manifest(manifest_from_model("tiny", tiny_llama()))
        yield built
