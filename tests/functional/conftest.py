"""The functional tier: real code over in-memory fakes, no servers (as s3transfer's
functional tests sit between unit and integration). Every test here is marked
``functional``; run the tier alone with ``pytest -m functional``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter_store import AdapterStore
from adapter_store import LocalBlobStore
from tests.factories import TinyBase
from tests.factories import build_store
from tests.fakes import InMemoryMetadataStore

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.functional)


@pytest.fixture
def metadata() -> InMemoryMetadataStore:
    return InMemoryMetadataStore()


@pytest.fixture
def store(
    metadata: InMemoryMetadataStore, tmp_path: Path, tiny_base: TinyBase
) -> Iterator[AdapterStore]:
    """The AdapterStore facade over the in-memory metadata and a file:// blob store,
    with the tiny base registered and the tenant ``acme``."""
    blobs = LocalBlobStore(tmp_path / "blobs")
    with build_store(metadata, blobs, tiny_base.manifest, cache_dir=tmp_path / "cache") as built:
        yield built
