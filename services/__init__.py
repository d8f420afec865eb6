"""The loramux service: Ray Serve application, replica engine, Python SDK and CLI.

Importing ``services`` stays light (httpx and pydantic, no torch, no Ray): it exports
the SDK (:class:`Client`, :class:`AsyncClient`), the API's wire models and its errors.
The engine lives in ``services.engine`` and the Ray application in private modules
imported on use.
"""

from services._api_models import *  # noqa: F403
from services._api_models import __all__ as _api_models_all
from services.client import AsyncClient, Client, ProgressCallback
from services.exceptions import *  # noqa: F403
from services.exceptions import __all__ as _exceptions_all

__all__ = [
    "AsyncClient",
    "Client",
    "ProgressCallback",
    *_api_models_all,
    *_exceptions_all,
]
