"""How the API reaches the model replicas and the trainer: the :class:`ModelGateway` and
:class:`TrainingGateway` seams."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from services.client import ReplicaStats
from services.client import TrainingJob
from services.client import TrainingJobCreate
from services.engine import GenerationChunk
from services.engine import GenerationRequest

__all__ = ["ModelGateway", "TrainingGateway"]


class ModelGateway(Protocol):
    """How the ingress reaches the model replicas (Ray Serve handles in production,
    :class:`services.serve.ServeGateway`; a scripted fake in tests)."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the request's chunks from a replica; closing the iterator cancels it."""
        ...

    async def replica_stats(self) -> list[ReplicaStats]:
        """The live replicas' latest statistics."""
        ...


class TrainingGateway(Protocol):
    """How the ingress reaches the trainer (the Trainer deployment's handle in
    production, :class:`services.serve.ServeTrainingGateway`; an in-process
    :class:`services.training.TrainingJobs` in tests)."""

    async def submit(self, tenant: str, body: TrainingJobCreate, examples: int) -> TrainingJob:
        """Queue a fine-tune of ``body.name`` for ``tenant``; its record, status queued."""
        ...

    async def get(self, tenant: str, job_id: str) -> TrainingJob:
        """``tenant``'s job ``job_id``; ResourceNotFoundError for another tenant's."""
        ...
