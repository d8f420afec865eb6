"""The ingress's admission of tenants' requests, over the in-memory metadata store
(whose admission the contract test holds equal to Redis's)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from adapter_store import AdapterStore
from adapter_store import LocalBlobStore
from adapter_store import TenantLimits
from services._settings import LimitSettings
from services.api._admission import TenantAdmission
from services.api._admission import TenantRateLimitedError
from services.exceptions import BadRequestError
from tests.fakes import InMemoryMetadataStore
from tests.helpers import Clock


@pytest.fixture
def meta() -> InMemoryMetadataStore:
    store = InMemoryMetadataStore()
    for name in ("acme", "beta"):
        store.create_tenant(name, now=1.0, max_adapters=None, max_bytes=None)
    return store


def test_a_tenants_burst_is_refused_with_retry_after_and_another_tenant_is_unaffected(
    meta: InMemoryMetadataStore,
) -> None:
    settings = LimitSettings(tenant_requests_per_s=2.0, tenant_max_in_flight=None)
    admission = TenantAdmission(meta, settings, clock=Clock())
    for _ in range(2):
        with admission.admitted("acme", 10):
            pass
    limited = pytest.raises(TenantRateLimitedError, match="requests_per_s limit")
    with limited as refused, admission.admitted("acme", 10):
        pass
    assert refused.value.status == 429 and refused.value.retry_after_header == "1"
    with admission.admitted("beta", 10):
        pass


def test_a_tenants_own_limits_override_the_defaults(meta: InMemoryMetadataStore) -> None:
    admission = TenantAdmission(meta, LimitSettings(tenant_max_in_flight=5), clock=Clock())
    meta.set_limits("acme", TenantLimits(max_in_flight=1))
    assert admission.limits_of("acme").max_in_flight == 1
    assert admission.limits_of("beta").max_in_flight == 5
    with (
        admission.admitted("acme", 1),
        pytest.raises(TenantRateLimitedError, match="max_in_flight limit \\(1\\)"),
        admission.admitted("acme", 1),
    ):
        pass
    with admission.admitted("acme", 1):  # released on the way out
        pass


def test_a_request_above_a_minute_of_tokens_is_a_400(meta: InMemoryMetadataStore) -> None:
    admission = TenantAdmission(meta, LimitSettings(tenant_tokens_per_min=100), clock=Clock())
    with (
        pytest.raises(BadRequestError, match="tokens_per_min of 100"),
        admission.admitted("acme", 101),
    ):
        pass


def test_held_leases_are_renewed_and_released_on_error(meta: InMemoryMetadataStore) -> None:
    clock = Clock()
    settings = LimitSettings(tenant_max_in_flight=1, lease_ttl_s=30.0)
    admission = TenantAdmission(meta, settings, clock=clock)
    with admission.admitted("acme", 1):
        clock.now += 25.0
        assert admission.renew() == 1
        clock.now += 25.0  # past the first ttl: the renewed lease still holds the slot
        with pytest.raises(TenantRateLimitedError), admission.admitted("acme", 1):
            pass
    with pytest.raises(RuntimeError), admission.admitted("acme", 1):
        raise RuntimeError("the replica failed")
    assert admission.renew() == 0
    with admission.admitted("acme", 1):
        pass


def test_the_app_renews_held_leases_while_it_runs(meta: InMemoryMetadataStore) -> None:
    """A request streaming past the lease ttl keeps its slot: the app's lifespan runs the
    renewal every third of the ttl (real time here: a 1.2 s ttl)."""
    from fastapi.testclient import TestClient

    from services._settings import ServiceSettings
    from services.api import create_api

    store = AdapterStore(meta, LocalBlobStore(Path(tempfile.mkdtemp())))
    settings = ServiceSettings(limits=LimitSettings(tenant_max_in_flight=1, lease_ttl_s=1.2))
    with TestClient(create_api(store, gateway=None, settings=settings)) as client:  # type: ignore[arg-type]
        admission = client.app.state.context.admission  # type: ignore[attr-defined]
        with admission.admitted("acme", 1):
            time.sleep(2.6)  # over two ttls: held only if the renewal ran
            with pytest.raises(TenantRateLimitedError), admission.admitted("acme", 1):
                pass
    with admission.admitted("acme", 1):  # released: the slot is free again
        pass
