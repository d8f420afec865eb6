"""Training jobs: a bounded book of fine-tunes, run one at a time by an injected runner.

The book is where a job's status lives (queued, running with progress, succeeded with its
version, failed with the reason); the runner is how a job runs: a Ray task with
``num_gpus`` in the Serve application (:mod:`services.serve._trainer`), a thread in
tests. :func:`run_training` is the job's body either way: parse, load the base, train,
publish.

Bounds: at most ``max_pending`` jobs queued or running (a submit past it is refused with
a 503, never queued without limit), and the newest ``max_kept`` finished jobs remembered
(older ones are forgotten first). A job belongs to its tenant: another tenant's id is
"not found", as an adapter of another tenant is.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.client._models import TrainingJob
from services.client._models import TrainingJobCreate
from services.client._models import TrainingOptions
from services.exceptions import ResourceNotFoundError
from services.exceptions import ServiceUnavailableError
from services.training._data import parse_training_data
from services.training._train import ProgressSink
from services.training._train import train_adapter

if TYPE_CHECKING:
    from adapter_store import AdapterStore
    from services.engine import BaseModel

__all__ = [
    "TrainingJobs",
    "TrainingOutcome",
    "TrainingRequest",
    "TrainingRunner",
    "run_training",
]


@dataclass(frozen=True, slots=True)
class TrainingRequest:
    """One job as a runner receives it (plain data: it crosses to a Ray task)."""

    job_id: str
    tenant: str
    name: str
    data: str
    options: TrainingOptions
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TrainingOutcome:
    """What a finished job published and how it fit."""

    version: int
    steps: int
    train_loss: float
    eval_loss: float | None


TrainingRunner = Callable[[TrainingRequest, ProgressSink], Awaitable[TrainingOutcome]]


class TrainingJobs:
    """The book of one trainer's jobs (see the module docstring for its bounds)."""

    def __init__(
        self,
        runner: TrainingRunner,
        *,
        max_pending: int = 16,
        max_kept: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._runner = runner
        self._max_pending = max_pending
        self._max_kept = max_kept
        self._clock = clock
        self._jobs: OrderedDict[str, TrainingJob] = OrderedDict()
        self._pending: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._one_at_a_time = asyncio.Lock()

    async def submit(self, tenant: str, body: TrainingJobCreate, examples: int) -> TrainingJob:
        """Queue a job (on the running event loop) and return its record.

        Raises:
            ServiceUnavailableError: ``max_pending`` jobs are queued or running already.
        """
        if len(self._pending) >= self._max_pending:
            raise ServiceUnavailableError(
                f"{len(self._pending)} training jobs are queued or running, the most this "
                "service takes; retry once one has finished"
            )
        job = TrainingJob(
            id=f"train-{uuid.uuid4().hex[:16]}",
            tenant=tenant,
            name=body.name,
            status="queued",
            examples=examples,
            created_at=self._clock(),
        )
        self._remember(job)
        self._pending.add(job.id)
        request = TrainingRequest(
            job.id, tenant, body.name, body.data, body.options, tuple(body.aliases)
        )
        task = asyncio.get_running_loop().create_task(self._run(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def get(self, tenant: str, job_id: str) -> TrainingJob:
        """The job ``job_id`` of ``tenant``.

        Raises:
            ResourceNotFoundError: no such job of this tenant (or it was forgotten).
        """
        job = self._jobs.get(job_id)
        if job is None or job.tenant != tenant:
            raise ResourceNotFoundError(f"no training job {job_id!r} for tenant {tenant!r}")
        return job

    async def _run(self, request: TrainingRequest) -> None:
        try:
            async with self._one_at_a_time:
                self._update(request.job_id, status="running")
                outcome = await self._runner(
                    request, lambda p: self._update(request.job_id, progress=p)
                )
        except Exception as exc:
            self._update(
                request.job_id, status="failed", error=_reason(exc), finished_at=self._clock()
            )
        else:
            self._update(
                request.job_id,
                status="succeeded",
                version=outcome.version,
                train_loss=outcome.train_loss,
                eval_loss=outcome.eval_loss,
                finished_at=self._clock(),
            )
        finally:
            self._pending.discard(request.job_id)

    def _update(self, job_id: str, **changes: object) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            self._jobs[job_id] = job.model_copy(update=changes)

    def _remember(self, job: TrainingJob) -> None:
        self._jobs[job.id] = job
        finished = [i for i, j in self._jobs.items() if i not in self._pending and i != job.id]
        for job_id in finished[: max(0, len(self._jobs) - self._max_kept)]:
            del self._jobs[job_id]


def _reason(exc: BaseException) -> str:
    """The user-facing reason of a failed job: the root error's own message."""
    cause = getattr(exc, "cause", None)  # a RayTaskError carries the task's exception
    root = cause if isinstance(cause, BaseException) else exc
    return f"{type(root).__name__}: {root}"


def run_training(
    request: TrainingRequest,
    on_progress: ProgressSink,
    *,
    store: AdapterStore,
    base: BaseModel,
    base_model_id: str,
) -> TrainingOutcome:
    """The body of a job: train on ``base`` and publish the next version of the adapter.

    Raises:
        TrainingError: bad data or options (checked again: the runner may be remote);
            the store's errors on publishing (quota, conflict). Nothing is published on
            any error.
    """
    examples = parse_training_data(request.data.splitlines())
    with tempfile.TemporaryDirectory(prefix="loramux-train-") as scratch:
        out = Path(scratch) / "adapter"
        result = train_adapter(
            base.model,
            base.tokenizer,
            examples,
            request.options,
            out,
            base_model_id=base_model_id,
            on_progress=on_progress,
        )
        version = store.push(
            request.tenant,
            request.name,
            out,
            base_model=base_model_id,
            aliases=list(request.aliases),
            origin="trained",
        )
    return TrainingOutcome(
        version=version.version,
        steps=result.steps,
        train_loss=result.train_loss,
        eval_loss=result.eval_loss,
    )
