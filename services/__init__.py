"""The loramux service: Ray Serve application, replica engine, Python SDK and CLI.

Importing ``services`` stays light (httpx and pydantic, no torch, no Ray): it exports
the SDK (:class:`Client`, :class:`AsyncClient`), the API's wire models and its errors.
Its rooms, each imported on use:

- ``services.client``: the SDK and the wire models (light);
- ``services.cli``: the ``loramux`` command;
- ``services.api``: the FastAPI app (one router per resource) and its error table;
- ``services.serve``: the Ray Serve deployments, request router, residency and metrics;
- ``services.engine``: the replica engine (torch).
"""

from services.client import AsyncClient
from services.client import Client
from services.client import ProgressCallback
from services.client._models import *  # noqa: F403
from services.client._models import __all__ as _api_models_all
from services.client._stats import *  # noqa: F403
from services.client._stats import __all__ as _stats_all
from services.exceptions import *  # noqa: F403
from services.exceptions import __all__ as _exceptions_all

__all__ = [
    "AsyncClient",
    "Client",
    "ProgressCallback",
    *_api_models_all,
    *_stats_all,
    *_exceptions_all,
]
