"""Every error the HTTP API can answer, in one table: exception class -> (status, type).

The ``type`` names are the SDK's (:mod:`services.exceptions`), so an error event inside a
stream, which has no status of its own, still becomes the right exception client-side.
Lookup walks the exception's MRO, so a subclass not listed gets its nearest listed
ancestor's answer (Ray re-raises a replica's exception as a subclass of it); anything
unlisted is a 500 whose message does not leak internals.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.exceptions import ReplicaUnavailableError
from starlette.exceptions import HTTPException

import adapter_store.exceptions as store_errors
import services.engine.exceptions as engine_errors
import services.exceptions as api_errors
import services.training.exceptions as training_errors
from services.api._admission import TenantRateLimitedError
from services.client._models import ErrorBody
from services.client._models import ErrorDetail

__all__ = ["ERROR_TABLE", "error_body", "install_error_handlers", "status_and_body", "status_of"]

logger = logging.getLogger(__name__)

_INVALID = (400, api_errors.BadRequestError.default_type)
_UNAVAILABLE = (503, api_errors.ServiceUnavailableError.default_type)
_INTERNAL = (500, api_errors.InternalServerError.default_type)
# Every 503 (Redis or S3 away, every replica busy or restarting) says when to try again:
# a supervised Redis is back within about a second, and clients (the SDK, the official
# openai client) honour the header with their own backoff on top.
UNAVAILABLE_RETRY_AFTER_S = 1

ERROR_TABLE: dict[type[BaseException], tuple[int, str]] = {
    # The adapter store.
    store_errors.AdapterStoreError: _INTERNAL,
    store_errors.InvalidAdapterError: _INVALID,
    store_errors.AdapterTooLargeError: (413, api_errors.PayloadTooLargeError.default_type),
    store_errors.InvalidNameError: _INVALID,
    store_errors.InvalidReferenceError: _INVALID,
    store_errors.InvalidManifestError: _INVALID,
    store_errors.NotFoundError: (404, api_errors.ResourceNotFoundError.default_type),
    store_errors.ConflictError: (409, api_errors.ResourceConflictError.default_type),
    store_errors.AuthenticationError: (401, api_errors.UnauthorizedError.default_type),
    store_errors.QuotaExceededError: (429, api_errors.OverQuotaError.default_type),
    store_errors.IntegrityError: (502, api_errors.InternalServerError.default_type),
    store_errors.BackendUnavailableError: _UNAVAILABLE,
    # The replica engine.
    engine_errors.EngineError: _INTERNAL,
    engine_errors.InvalidRequestError: _INVALID,
    engine_errors.AdapterMismatchError: _INVALID,
    engine_errors.AdapterLoadError: _UNAVAILABLE,
    engine_errors.EngineOverloadedError: _UNAVAILABLE,
    engine_errors.BaseModelLoadError: _UNAVAILABLE,
    engine_errors.RequestCancelledError: _UNAVAILABLE,
    # Fine-tuning.
    training_errors.TrainingError: _INTERNAL,
    training_errors.TrainingDataError: _INVALID,
    training_errors.TrainingOptionsError: _INVALID,
    # The API's own refusals, raised by the ingress as the SDK's classes.
    **{
        cls: (cls.status, cls.default_type)
        for cls in (
            api_errors.BadRequestError,
            api_errors.UnauthorizedError,
            api_errors.PermissionDeniedError,
            api_errors.ResourceNotFoundError,
            api_errors.PayloadTooLargeError,
            api_errors.RateLimitError,
            api_errors.ServiceUnavailableError,
            api_errors.ReplicaLostError,
        )
    },
    # Ray Serve: every replica is busy, or the model deployment is not running.
    BackPressureError: _UNAVAILABLE,
    DeploymentUnavailableError: _UNAVAILABLE,
    ReplicaUnavailableError: _UNAVAILABLE,
    RayActorError: _UNAVAILABLE,
    # Request bodies and query parameters that do not validate. A plain pydantic
    # ValidationError is deliberately absent: FastAPI raises RequestValidationError for
    # what the client sent, so a ValidationError is the server building a model from
    # its own data (a bug), a logged 500.
    RequestValidationError: _INVALID,
}


def _answer(exc: BaseException) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return _INTERNAL


def status_of(exc: BaseException) -> int:
    """The HTTP status the API answers ``exc`` with (500 for anything unlisted)."""
    return _answer(exc)[0]


def status_and_body(exc: BaseException) -> tuple[int, ErrorBody]:
    """The status and ``{"error": {"type", "message"}}`` body for ``exc``."""
    status, kind = _answer(exc)
    if status >= 500 and status != 503:
        logger.error("request failed", exc_info=exc)
    message = _message(exc) if (status, kind) != _INTERNAL else "internal error; see the logs"
    return status, ErrorBody(error=ErrorDetail(type=kind, message=message, code=_root_name(exc)))


def error_body(exc: BaseException) -> str:
    """The JSON of an error event inside a stream (``data: {"error": ...}``)."""
    return status_and_body(exc)[1].model_dump_json(exclude_none=True)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception, and Starlette's own 404/405, in the API's error shape."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        status, body = status_and_body(exc)
        headers = None
        if isinstance(exc, TenantRateLimitedError):
            headers = {"Retry-After": exc.retry_after_header}
        elif status == 503:
            headers = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)}
        return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)

    async def handle_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        kind = api_errors.error_for(exc.status_code, "http_error", "").type
        body = ErrorBody(error=ErrorDetail(type=kind, message=str(exc.detail)))
        return JSONResponse(body.model_dump(exclude_none=True), status_code=exc.status_code)

    app.add_exception_handler(HTTPException, handle_http)
    app.add_exception_handler(Exception, handle)
    for cls in ERROR_TABLE:
        app.add_exception_handler(cls, handle)


def _message(exc: BaseException) -> str:
    if isinstance(exc, RequestValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body') or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
    if isinstance(exc, api_errors.APIStatusError):
        return exc.message
    cause = _root(exc)
    return str(cause.args[0]) if cause.args else str(cause)


def _root(exc: BaseException) -> BaseException:
    """A Ray-wrapped exception's original (``RayTaskError.cause``), else ``exc``."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _root_name(exc: BaseException) -> str:
    return type(_root(exc)).__name__
