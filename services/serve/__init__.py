"""The Ray Serve application: deployments, request router, residency, stats and metrics.

::

    HTTP ──► IngressServer (the api's FastAPI app) ──► CacheAwareRequestRouter
         ──► ModelReplica × replicas (the engine) ──reports──► StatsBoard
    IngressServer ──► TrainerServer ──► a Ray task per training job

A Serve config names :func:`app_builder` (``import_path: services.serve:app_builder``)
and :class:`CacheAwareRequestRouter` (``services.serve:CacheAwareRequestRouter``).
Importing this package imports Ray and torch.
"""

from services.serve._app import MODEL_DEPLOYMENT
from services.serve._app import app_builder
from services.serve._app import build_app
from services.serve._ingress import IngressServer
from services.serve._ingress import ServeGateway
from services.serve._replica import ModelReplica
from services.serve._replica import engine_options
from services.serve._replica import stale_after_s
from services.serve._router import CacheAwareRequestRouter
from services.serve._stats_board import StatsBoard
from services.serve._trainer import ServeTrainingGateway
from services.serve._trainer import TrainerServer

__all__ = [
    "MODEL_DEPLOYMENT",
    "CacheAwareRequestRouter",
    "IngressServer",
    "ModelReplica",
    "ServeGateway",
    "ServeTrainingGateway",
    "StatsBoard",
    "TrainerServer",
    "app_builder",
    "build_app",
    "engine_options",
    "stale_after_s",
]
