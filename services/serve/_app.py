"""The Ray Serve application: ingress, model deployment, stats board and trainer, wired.

::

    HTTP ──► IngressServer (FastAPI)  ──handle(multiplexed_model_id=adapter key)──►
             CacheAwareRequestRouter ──► ModelReplica × replicas ──reports──► StatsBoard
             IngressServer ──handle──► TrainerServer ──Ray task per job (num_gpus)──►

The model deployment routes with :class:`services.serve._router.CacheAwareRequestRouter`,
which reads each replica's ``record_routing_stats`` every ``routing_stats_period_s``
and, when ``LORAMUX_REDIS_URL`` is set in its process, follows the replicas' residency
events on Redis (``services.serve._residency``).
Each model replica asks for ``num_gpus`` and ``num_cpus`` of Ray's resources; the
ingress for ``ingress_num_cpus``; the board and the trainer for none (each training job
is a Ray task with ``training_num_cpus`` and ``training_num_gpus``).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.deployment import Application

from scheduler import batch_options
from services._settings import ServiceSettings
from services.serve._ingress import IngressServer
from services.serve._replica import ModelReplica
from services.serve._replica import stale_after_s
from services.serve._stats_board import StatsBoard
from services.serve._trainer import TrainerServer

__all__ = ["MODEL_DEPLOYMENT", "app_builder", "build_app"]

MODEL_DEPLOYMENT = "Model"
_ROUTER_CLASS = "services.serve:CacheAwareRequestRouter"
# The store settings' own variable (``StoreSettings.redis_url``).
REDIS_URL_ENV = "LORAMUX_REDIS_URL"


def build_app(
    settings: ServiceSettings,
    *,
    model_class: type[ModelReplica] = ModelReplica,
    cache_aware_routing: bool = True,
) -> Application:
    """The application for ``serve.run(build_app(settings), name=settings.app_name)``.

    ``model_class`` and ``cache_aware_routing=False`` (Ray Serve's default request
    router) let ``benchmarks/bench_serve_routing.py`` run the same deployment under Ray
    Serve's own multiplexed routing."""
    board = serve.deployment(
        StatsBoard, name="StatsBoard", num_replicas=1, ray_actor_options={"num_cpus": 0}
    ).bind(stale_after_s(settings))
    routing = {"request_router_config": router_config(settings)} if cache_aware_routing else {}
    model = serve.deployment(
        model_class,
        name=MODEL_DEPLOYMENT,
        **settings.model_scaling(),
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": settings.num_cpus,
            "num_gpus": settings.replica_num_gpus(),
        },
        **routing,
        # Loading the base model (and building ``tiny`` on first use) takes a while.
        health_check_timeout_s=120,
        graceful_shutdown_timeout_s=30,
    ).bind(settings, board)
    trainer = serve.deployment(
        TrainerServer, name="Trainer", num_replicas=1, ray_actor_options={"num_cpus": 0}
    ).bind(settings)
    ingress = serve.deployment(
        serve.ingress()(IngressServer),
        name="Ingress",
        num_replicas=settings.ingress_replicas,
        max_ongoing_requests=1024,
        ray_actor_options={"num_cpus": settings.ingress_num_cpus},
    )
    return ingress.bind(settings, model, board, trainer)


def router_config(settings: ServiceSettings) -> RequestRouterConfig:
    """How the model deployment routes. The Redis URL is not in it (a Serve config is
    shown in clear by ``serve status`` and the dashboard, and the URL may hold a
    password): the router reads it from ``LORAMUX_REDIS_URL`` in its own process, set by
    ``loramux up`` before Ray starts, or by the deployment's Secret."""
    kwargs: dict[str, Any] = {
        "policy": settings.routing_policy,
        "redis_url_env": REDIS_URL_ENV,
        "key_prefix": settings.store.key_prefix,
        "staleness_bound_s": settings.view_staleness_bound_s,
        "max_tracked_adapters": settings.router_max_tracked_adapters,
    }
    # holder_floor: a holder takes an adapter's requests while its batch has room.
    kwargs.update(batch_options(settings.routing_policy, settings.max_batch_size))
    return RequestRouterConfig(
        request_router_class=_ROUTER_CLASS,
        request_router_kwargs=kwargs,
        request_routing_stats_period_s=settings.routing_stats_period_s,
    )


def app_builder(args: dict[str, Any]) -> Application:
    """The application builder of a Serve config (``import_path:
    services.serve:app_builder``), for ``serve deploy`` and ``serve run``.

    ``args`` are :class:`ServiceSettings` fields (``replicas``, ``gpu_slots``...); the
    fields it leaves out, and the store's settings, come from the ``LORAMUX_*``
    environment (in a Serve config, ``runtime_env.env_vars``). The config's
    ``deployments`` options then override what the settings made of each deployment.

    Raises:
        pydantic.ValidationError: an unknown field or a bad value, named.
    """
    return build_app(ServiceSettings(**args))
