"""The Trainer deployment: training jobs run as Ray tasks on the service's cluster.

:class:`TrainerServer` keeps the book of jobs (:class:`services.training.TrainingJobs`,
one replica, no resources of its own). Each job runs as a streaming Ray task that asks
for ``training_num_cpus`` and ``training_num_gpus`` (one GPU where the cluster has CUDA),
so training takes a GPU only while it runs and Ray places it wherever one is free. The
task loads the base model the service serves (full precision: an adapter trained there
serves unchanged on its quantized twin), trains, publishes through the store, and
streams its progress back as it goes.

Failure mode: a task that raises (bad data, quota, a crashed worker) fails its job with
the root error's message; nothing was published. Jobs are in this replica's memory: a
restart of the Trainer forgets them (a job running then may still publish its version).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import ray
from ray.exceptions import RayTaskError

from services._settings import ServiceSettings
from services.client import TrainingJob
from services.client import TrainingJobCreate
from services.client import TrainingProgress
from services.exceptions import LoramuxError
from services.training import ProgressSink
from services.training import TrainingJobs
from services.training import TrainingOutcome
from services.training import TrainingRequest

__all__ = ["ServeTrainingGateway", "TrainerServer"]


class TrainerServer:
    """The Trainer deployment's class: the job book, and the Ray task per job."""

    def __init__(self, settings: ServiceSettings) -> None:
        self._settings = settings
        self._jobs = TrainingJobs(self._run_on_ray, max_pending=settings.training_max_pending)

    async def submit(self, tenant: str, body: TrainingJobCreate, examples: int) -> TrainingJob:
        return await self._jobs.submit(tenant, body, examples)

    async def get(self, tenant: str, job_id: str) -> TrainingJob:
        return await self._jobs.get(tenant, job_id)

    async def _run_on_ray(
        self, request: TrainingRequest, on_progress: ProgressSink
    ) -> TrainingOutcome:
        task = _training_task.options(
            num_cpus=self._settings.training_num_cpus,
            num_gpus=self._settings.training_gpus(),
        )
        outcome: TrainingOutcome | None = None
        async for ref in task.remote(self._settings, request):
            item = await ref
            if isinstance(item, TrainingProgress):
                on_progress(item)
            else:
                outcome = item
        assert outcome is not None, "the task ends with its outcome or raises"
        return outcome


@ray.remote(num_returns="streaming")
def _training_task(
    settings: ServiceSettings, request: TrainingRequest
) -> Iterator[TrainingProgress | TrainingOutcome]:
    """Train in a thread and stream its progress, then the outcome (or raise its error)."""
    reports: queue.Queue[TrainingProgress | None] = queue.Queue()
    result: dict[str, Any] = {}

    def work() -> None:
        import torch

        from adapter_store import AdapterStore
        from services.engine import load_base_model
        from services.training import run_training

        try:
            base = load_base_model(
                settings.base_model_dir or "tiny",
                models_dir=settings.models_dir,
                name=settings.base_model_id,
                dtype=None if torch.cuda.is_available() else torch.float32,
            )
            with AdapterStore.from_settings(settings.store) as store:
                result["outcome"] = run_training(
                    request,
                    reports.put,
                    store=store,
                    base=base,
                    base_model_id=settings.base_model_id,
                )
        except BaseException as exc:  # re-raised below, in the task's own thread
            result["error"] = exc
        finally:
            reports.put(None)

    worker = threading.Thread(target=work, name=f"train-{request.job_id}", daemon=True)
    worker.start()
    while (report := reports.get()) is not None:
        yield report
    worker.join()
    if "error" in result:
        raise result["error"]
    yield result["outcome"]


class ServeTrainingGateway:
    """The API's :class:`~services.api.TrainingGateway` over the Trainer's handle."""

    def __init__(self, trainer: Any) -> None:  # a DeploymentHandle
        self._trainer = trainer

    async def submit(self, tenant: str, body: TrainingJobCreate, examples: int) -> TrainingJob:
        return await self._call("submit", tenant, body, examples)

    async def get(self, tenant: str, job_id: str) -> TrainingJob:
        return await self._call("get", tenant, job_id)

    async def _call(self, method: str, *args: Any) -> TrainingJob:
        try:
            return await getattr(self._trainer, method).remote(*args)
        except RayTaskError as exc:
            # The trainer's refusals (not found, too many jobs) answer as themselves.
            if isinstance(exc.cause, LoramuxError):
                raise exc.cause from None
            raise
