"""Errors raised by the replica engine.

::

    EngineError                          base class
    ├── InvalidRequestError              400  bad sampling parameters, empty prompt, ...
    ├── AdapterLoadError                 a cold load failed (fetch, read or slot copy);
    │                                    only the requests for that adapter fail
    ├── AdapterIncompatibleError         the adapter does not fit the loaded base model
    ├── EngineOverloadedError            503  the request queue is full
    ├── BaseModelLoadError               the base model directory is missing or unloadable
    └── RequestCancelledError            the client went away; the request left the batch
"""

from __future__ import annotations

__all__ = [
    "AdapterIncompatibleError",
    "AdapterLoadError",
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


class AdapterIncompatibleError(EngineError):
    """The adapter's modules or shapes do not fit the loaded base model."""


class EngineOverloadedError(EngineError):
    """The engine's request queue is full; retry later or add replicas."""


class BaseModelLoadError(EngineError):
    """The base model could not be loaded; the message names the path and the cause."""


class RequestCancelledError(EngineError):
    """The request was cancelled before it finished."""
