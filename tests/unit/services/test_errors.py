"""The one table from exceptions to HTTP answers."""

from __future__ import annotations

import pytest

import adapter_store.exceptions as store_errors
import services.engine.exceptions as engine_errors
from services.api._errors import status_and_body
from services.exceptions import error_for

STORE_STATUS = {
    store_errors.InvalidAdapterError: 400,
    store_errors.UnsafeFormatError: 400,
    store_errors.MalformedWeightsError: 400,
    store_errors.InvalidConfigError: 400,
    store_errors.UnsupportedPatternError: 400,
    store_errors.ValidationBudgetExceededError: 400,
    store_errors.UnsupportedFeatureError: 400,
    store_errors.IncompatibleAdapterError: 400,
    store_errors.AdapterTooLargeError: 413,
    store_errors.InvalidNameError: 400,
    store_errors.InvalidReferenceError: 400,
    store_errors.InvalidManifestError: 400,
    store_errors.AdapterNotFoundError: 404,
    store_errors.TenantNotFoundError: 404,
    store_errors.ManifestNotFoundError: 404,
    store_errors.ConflictError: 409,
    store_errors.AuthenticationError: 401,
    store_errors.QuotaExceededError: 429,
    store_errors.IntegrityError: 502,
    store_errors.BackendUnavailableError: 503,
    store_errors.BlobCollectedError: 503,
    store_errors.LocalDiskError: 503,
}
ENGINE_STATUS = {
    engine_errors.InvalidRequestError: 400,
    engine_errors.AdapterMismatchError: 400,
    engine_errors.AdapterOverflowError: 400,
    engine_errors.AdapterLoadError: 503,
    engine_errors.EngineOverloadedError: 503,
    engine_errors.RequestCancelledError: 503,
    engine_errors.EngineError: 500,
}


@pytest.mark.parametrize(
    ("cls", "status"), [*STORE_STATUS.items(), *ENGINE_STATUS.items()], ids=lambda v: str(v)
)
def test_each_error_answers_with_its_documented_status(cls: type[Exception], status: int) -> None:
    got, body = status_and_body(cls("what went wrong"))

    assert got == status
    assert body.error.code == cls.__name__
    # In a stream (no status) the SDK raises the same class as for the status.
    in_stream = error_for(None, body.error.type, "")
    assert type(in_stream) is type(error_for(status, body.error.type, ""))


def test_every_store_error_is_in_the_table() -> None:
    leaves = [
        getattr(store_errors, name)
        for name in store_errors.__all__
        if name not in ("AdapterStoreError", "NotFoundError")
    ]

    assert sorted(cls.__name__ for cls in leaves) == sorted(c.__name__ for c in STORE_STATUS)


def test_client_facing_messages_are_kept_and_internal_ones_hidden() -> None:
    _, quota = status_and_body(store_errors.QuotaExceededError("tenant acme holds 3 of 3"))
    status, crash = status_and_body(RuntimeError("secret internals"))

    assert quota.error.message == "tenant acme holds 3 of 3"
    assert quota.error.type == "quota_exceeded"
    assert status == 500 and "secret" not in crash.error.message


def test_an_error_a_replica_raised_maps_like_the_original() -> None:
    from ray.exceptions import RayTaskError

    original = engine_errors.EngineOverloadedError("1024 requests are waiting")
    wrapped = RayTaskError("generate", "Traceback ...", original).as_instanceof_cause()

    status, body = status_and_body(wrapped)

    assert status == 503
    assert body.error.message == "1024 requests are waiting"
    assert body.error.code == "EngineOverloadedError"


def test_a_server_side_validation_error_is_a_logged_500_not_the_clients_fault(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    from services.client._models import Health

    with pytest.raises(ValidationError) as server_bug:
        Health.model_validate({"status": None})
    request = RequestValidationError(
        [{"loc": ("body", "max_tokens"), "msg": "must be >= 1", "type": "greater_than_equal"}]
    )

    with caplog.at_level("ERROR", logger="services.api._errors"):
        server_status, server_body = status_and_body(server_bug.value)
    client_status, client_body = status_and_body(request)

    assert (server_status, server_body.error.type) == (500, "internal_error")
    assert "status" not in server_body.error.message
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert client_status == 400
    assert client_body.error.message == "max_tokens: must be >= 1"
