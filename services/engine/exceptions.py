"""Errors raised by the replica engine.

The HTTP layer answers each class with the status on the right (the table is
:data:`services.api._errors.ERROR_TABLE`; a subclass not listed there gets its nearest
listed ancestor's)::

    EngineError                          500  base class; a failed forward pass, a
    │                                         crashed loop, a closed adapter cache
    ├── InvalidRequestError              400  bad sampling parameters, empty prompt, ...
    ├── AdapterLoadError                 503  a cold load failed (fetch, read or slot copy);
    │                                         only the requests for that adapter fail
    ├── AdapterMismatchError         400  the adapter does not fit the loaded base model
    │   └── AdapterOverflowError         400  the adapter drove this request's logits to
    │                                         inf/NaN; only that request fails
    ├── EngineOverloadedError            503  the request queue is full
    ├── BaseModelLoadError               503  the base model directory is missing,
    │                                         unloadable or unsupported
    └── RequestCancelledError            503  the engine shut down before the request ended

The adapter store's errors from a fetch (``NotFoundError`` 404, ``IntegrityError`` 502,
...) pass through the adapter cache unwrapped, with the store's statuses.
"""

from __future__ import annotations

__all__ = [
    "AdapterLoadError",
    "AdapterMismatchError",
    "AdapterOverflowError",
    "BaseModelLoadError",
    "EngineError",
    "EngineOverloadedError",
    "InvalidRequestError",
    "RequestCancelledError",
]


class EngineError(Exception):
    """Base class of every engine error."""


class InvalidRequestError(EngineError, ValueError):
    """A generation request has invalid parameters; the message names the field."""


class AdapterLoadError(EngineError):
    """Loading an adapter into a cache tier failed; the message names adapter and tier."""


class AdapterMismatchError(EngineError):
    """The adapter's modules or shapes do not fit the loaded base model."""


class AdapterOverflowError(AdapterMismatchError):
    """The request's logits were not finite (its adapter's weights or scaling overflow);
    the request ends with this error, its batch neighbours are unaffected."""


class EngineOverloadedError(EngineError):
    """The engine's request queue is full; retry later or add replicas."""


class BaseModelLoadError(EngineError):
    """The base model could not be loaded; the message names the path and the cause."""


class RequestCancelledError(EngineError):
    """The request was cancelled before it finished."""
