"""The HTTP API: a FastAPI app built by :func:`create_api`, one router per resource.

Server side only (FastAPI, the adapter store, the engine's request types); Ray Serve
mounts it in :mod:`services.serve`, and tests serve it over ASGI with a fake
:class:`ModelGateway` (and an in-process :class:`TrainingGateway`). The error table (which exception answers with which status) is
:data:`ERROR_TABLE`.
"""

from services.api._app import create_api
from services.api._errors import ERROR_TABLE
from services.api._gateway import ModelGateway
from services.api._gateway import TrainingGateway

__all__ = ["ERROR_TABLE", "ModelGateway", "TrainingGateway", "create_api"]
