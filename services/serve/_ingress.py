"""The Ray Serve ingress: the HTTP API over the store and the model deployment.

:class:`IngressServer` is the ingress deployment's class (wrapped by ``serve.ingress()``
in :mod:`services.serve._app`); :class:`ServeGateway` is the API's
:class:`~services.api.ModelGateway` over the model deployment's handle, routed by
adapter key (``multiplexed_model_id``), and the stats board's.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import FastAPI
from ray.exceptions import RayActorError

from adapter_store import AdapterStore
from services._settings import ServiceSettings
from services.api import create_api
from services.client import ReplicaStats
from services.engine import GenerationChunk
from services.engine import GenerationRequest
from services.exceptions import ReplicaLostError
from services.serve._heap import start_heap_trimmer
from services.serve._trainer import ServeTrainingGateway

__all__ = ["IngressServer", "ServeGateway"]


class ServeGateway:
    """The model deployment behind Ray Serve handles, routed by adapter key."""

    def __init__(self, model: Any, board: Any) -> None:  # DeploymentHandles
        self._model = model
        self._board = board

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """The request's chunks from the replica Ray Serve routes it to.

        Raises:
            ReplicaLostError: that replica died (its actor is dead or unreachable); Ray
                Serve has then dropped it from this handle's replicas, so the API's retry
                goes elsewhere.
        """
        key = request.adapter.key if request.adapter is not None else ""
        response = self._model.options(stream=True, multiplexed_model_id=key).generate.remote(
            request
        )
        finished = False
        try:
            async for chunk in response:
                yield chunk
            finished = True
        except RayActorError as exc:
            raise ReplicaLostError(
                f"the model replica serving {key or 'the base model'} died ({type(exc).__name__})"
            ) from exc
        finally:
            if not finished:
                response.cancel()  # the client went away: free the batch row

    async def replica_stats(self) -> list[ReplicaStats]:
        return await self._board.snapshot.remote()


class IngressServer:
    """The ingress deployment: the API over the store and the model deployment.

    Wrapped by ``serve.ingress()`` in :mod:`services.serve._app`; Ray Serve calls
    :meth:`__serve_build_asgi_app__` after the constructor.
    """

    def __init__(
        self, settings: ServiceSettings, model: Any, board: Any, trainer: Any = None
    ) -> None:
        self._settings = settings
        self._store = AdapterStore.from_settings(settings.store)
        self._gateway = ServeGateway(model, board)
        self._trainer = None if trainer is None else ServeTrainingGateway(trainer)
        start_heap_trimmer()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self._store, self._gateway, self._settings, trainer=self._trainer)

    def __del__(self) -> None:
        self._store.close()
