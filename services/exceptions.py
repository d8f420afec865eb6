"""Errors of the loramux service API, as the SDK raises them.

The server answers every error with ``{"error": {"type", "message"}}`` and one status
code; the SDK raises the class for that status (shown on the right)::

    LoramuxError                              base class, never raised directly
    ├── APIConnectionError                    no answer: connection refused, reset,
    │                                         timed out (after the retries)
    ├── ConfigurationError                    the profile file is unreadable or malformed
    ├── InvalidAdapterPathError               push: the local path is not a PEFT adapter
    └── APIStatusError                        the server answered with an error status
        ├── BadRequestError              400  invalid input; the message names the field
        ├── UnauthorizedError            401  missing, unknown or revoked API key
        ├── PermissionDeniedError        403  the key may not do this (admin only, ...)
        ├── ResourceNotFoundError        404  no such adapter, version, alias or tenant
        ├── ResourceConflictError        409  exists already, reserved alias, ...
        ├── PayloadTooLargeError         413  adapter above the size or rank cap
        ├── RateLimitError               429  too many requests; retry later
        │   └── OverQuotaError           429  the tenant's adapter count or byte quota
        ├── InternalServerError          5xx  a server fault (other than 503)
        └── ServiceUnavailableError      503  overloaded or a backend is down (after the
            │                                 SDK's retries)
            └── ReplicaLostError         503  the replica serving a stream died after it
                                              had sent tokens; send the request again

Names never repeat another package's: the adapter store's ``NotFoundError``,
``ConflictError``, ``AuthenticationError`` and ``QuotaExceededError`` are what the
server raises; the API answers them with the statuses above, and the SDK raises these.

An error event inside a stream has no status of its own: its ``type`` picks the class.
"""

from __future__ import annotations

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "BadRequestError",
    "ConfigurationError",
    "InternalServerError",
    "InvalidAdapterPathError",
    "LoramuxError",
    "OverQuotaError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ReplicaLostError",
    "ResourceConflictError",
    "ResourceNotFoundError",
    "ServiceUnavailableError",
    "UnauthorizedError",
]


class LoramuxError(Exception):
    """Base class of every error the SDK raises."""


class APIConnectionError(LoramuxError):
    """The server could not be reached or did not answer, also after the retries."""


class ConfigurationError(LoramuxError):
    """The SDK's configuration (the profile file) cannot be read or is malformed."""


class InvalidAdapterPathError(LoramuxError, ValueError):
    """The path given to ``adapters.push`` is not a PEFT adapter directory or archive."""


class APIStatusError(LoramuxError):
    """The server answered with an error status.

    ``status`` is the HTTP status (for an error inside a stream: the class's own),
    ``type`` the error's stable machine name, ``message`` the server's explanation.
    A subclass names its status and type in its header:
    ``class BadRequestError(APIStatusError, status=400, type="invalid_request")``.
    """

    status: int = 0
    default_type: str = "api_error"

    def __init_subclass__(cls, *, status: int | None = None, type: str | None = None) -> None:
        super().__init_subclass__()
        if status is not None:
            cls.status = status
        if type is not None:
            cls.default_type = type

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = self.status if status is None else status
        self.type = type or self.default_type

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}"


class BadRequestError(APIStatusError, status=400, type="invalid_request"): ...


class UnauthorizedError(APIStatusError, status=401, type="authentication_error"): ...


class PermissionDeniedError(APIStatusError, status=403, type="permission_denied"): ...


class ResourceNotFoundError(APIStatusError, status=404, type="not_found"): ...


class ResourceConflictError(APIStatusError, status=409, type="conflict"): ...


class PayloadTooLargeError(APIStatusError, status=413, type="payload_too_large"): ...


class RateLimitError(APIStatusError, status=429, type="rate_limited"): ...


class OverQuotaError(RateLimitError, type="quota_exceeded"): ...


class InternalServerError(APIStatusError, status=500, type="internal_error"): ...


class ServiceUnavailableError(APIStatusError, status=503, type="service_unavailable"): ...


class ReplicaLostError(ServiceUnavailableError, type="replica_lost"):
    """The model replica serving the request died. The service retries a request that
    has sent nothing yet on another replica; a stream that had sent tokens ends with
    this error, since its client has already seen part of the answer."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    cls.status: cls
    for cls in (
        BadRequestError,
        UnauthorizedError,
        PermissionDeniedError,
        ResourceNotFoundError,
        ResourceConflictError,
        PayloadTooLargeError,
        RateLimitError,
        InternalServerError,
        ServiceUnavailableError,
    )
}
_BY_TYPE: dict[str, type[APIStatusError]] = {
    cls.default_type: cls for cls in (*_BY_STATUS.values(), OverQuotaError, ReplicaLostError)
}


def error_for(status: int | None, type: str, message: str) -> APIStatusError:
    """The exception for an error answer: by ``status``, refined or (in a stream) by ``type``.

    An unknown 4xx is a plain :class:`APIStatusError`; any other 5xx an
    :class:`InternalServerError`.
    """
    by_type = _BY_TYPE.get(type)
    if status is None:
        cls = by_type or APIStatusError
    elif by_type is not None and by_type.status == status:
        cls = by_type  # OverQuotaError shares 429 with RateLimitError
    elif status in _BY_STATUS:
        cls = _BY_STATUS[status]
    else:
        cls = InternalServerError if status >= 500 else APIStatusError
    return cls(message, status=status, type=type)
