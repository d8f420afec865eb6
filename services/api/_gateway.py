"""How the API reaches the model replicas: the :class:`ModelGateway` seam."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from services.client import ReplicaStats
from services.engine import GenerationChunk, GenerationRequest

__all__ = ["ModelGateway"]


class ModelGateway(Protocol):
    """How the ingress reaches the model replicas (Ray Serve handles in production,
    :class:`services.serve.ServeGateway`; a scripted fake in tests)."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the request's chunks from a replica; closing the iterator cancels it."""
        ...

    async def replica_stats(self) -> list[ReplicaStats]:
        """The live replicas' latest statistics."""
        ...
