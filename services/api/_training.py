"""Training jobs: ``POST /v1/training/jobs`` and ``GET /v1/training/jobs/{id}``.

The data is checked here, line by line, before a job exists: a malformed file is a 400
naming its line in milliseconds, not a failed job minutes later. The job itself runs on
the trainer (:class:`services.api._gateway.TrainingGateway`) and publishes the adapter's
next version when it succeeds.
"""

from __future__ import annotations

from fastapi import APIRouter

from adapter_store import validate_alias
from adapter_store import validate_name
from services.api._auth import ApiContext
from services.api._auth import Context
from services.api._auth import Tenant
from services.api._gateway import TrainingGateway
from services.client import TrainingJob
from services.client import TrainingJobCreate
from services.exceptions import ServiceUnavailableError
from services.training import parse_training_data

__all__ = ["router"]

router = APIRouter()


def _trainer(context: ApiContext) -> TrainingGateway:
    if context.trainer is None:
        raise ServiceUnavailableError(
            "this service runs no trainer; train with `loramux train --local` and push"
        )
    return context.trainer


@router.post("/v1/training/jobs", status_code=202)
async def create_training_job(
    context: Context, tenant: Tenant, body: TrainingJobCreate
) -> TrainingJob:
    trainer = _trainer(context)
    validate_name(body.name, "adapter name")
    for alias in body.aliases:
        validate_alias(alias)
    examples = parse_training_data(body.data.splitlines())
    return await trainer.submit(tenant, body, len(examples))


@router.get("/v1/training/jobs/{job_id}")
async def get_training_job(context: Context, tenant: Tenant, job_id: str) -> TrainingJob:
    return await _trainer(context).get(tenant, job_id)
