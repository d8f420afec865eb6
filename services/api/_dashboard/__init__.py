"""The built-in operator dashboard: ``GET /dashboard`` (see :mod:`._routes`)."""

from services.api._dashboard._routes import ASSETS
from services.api._dashboard._routes import ReplicaStatsSource
from services.api._dashboard._routes import dashboard_router

__all__ = ["ASSETS", "ReplicaStatsSource", "dashboard_router"]
