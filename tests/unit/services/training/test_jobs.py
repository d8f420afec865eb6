"""The job book: status from queued to done, one tenant's jobs only, bounded."""

from __future__ import annotations

import asyncio

import pytest

from services.client import TrainingJobCreate
from services.client import TrainingProgress
from services.exceptions import ResourceNotFoundError
from services.exceptions import ServiceUnavailableError
from services.training import TrainingDataError
from services.training import TrainingJobs
from services.training import TrainingOutcome
from services.training import TrainingRequest
from services.training._train import ProgressSink

BODY = TrainingJobCreate(name="bot", data='{"text": "hi"}\n')


class GatedRunner:
    """Runs a job only when the test opens its gate; reports one progress step first."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.seen: list[TrainingRequest] = []
        self.fail_with: Exception | None = None

    async def __call__(self, request: TrainingRequest, progress: ProgressSink) -> TrainingOutcome:
        self.seen.append(request)
        progress(TrainingProgress(step=1, total_steps=4, loss=2.5, epoch=0.25))
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return TrainingOutcome(version=3, steps=4, train_loss=1.5, eval_loss=1.25)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_job_goes_from_queued_through_running_to_its_published_version() -> None:
    runner = GatedRunner()
    jobs = TrainingJobs(runner, clock=lambda: 100.0)

    queued = await jobs.submit("acme", BODY.model_copy(update={"aliases": ["prod"]}), 1)
    await settle()
    running = await jobs.get("acme", queued.id)
    runner.gate.set()
    await settle()
    done = await jobs.get("acme", queued.id)

    assert queued.status == "queued" and queued.examples == 1
    assert running.status == "running" and running.progress is not None
    assert running.progress.step == 1 and running.progress.loss == 2.5
    assert (done.status, done.version, done.eval_loss, done.finished_at) == (
        "succeeded", 3, 1.25, 100.0
    )  # fmt: skip
    assert runner.seen[0].aliases == ("prod",) and runner.seen[0].tenant == "acme"


async def test_a_failed_job_says_why_with_the_root_error() -> None:
    runner = GatedRunner()
    runner.fail_with = TrainingDataError("line 3: not JSON")
    jobs = TrainingJobs(runner)

    job = await jobs.submit("acme", BODY, 1)
    runner.gate.set()
    await settle()
    failed = await jobs.get("acme", job.id)

    assert failed.status == "failed" and failed.version is None
    assert failed.error == "TrainingDataError: line 3: not JSON"


async def test_another_tenants_job_is_not_found() -> None:
    jobs = TrainingJobs(GatedRunner())
    job = await jobs.submit("acme", BODY, 1)

    with pytest.raises(ResourceNotFoundError, match="no training job"):
        await jobs.get("globex", job.id)


async def test_jobs_run_one_at_a_time_and_past_max_pending_a_submit_is_refused() -> None:
    runner = GatedRunner()
    jobs = TrainingJobs(runner, max_pending=2)
    first = await jobs.submit("acme", BODY, 1)
    second = await jobs.submit("acme", BODY, 1)
    await settle()

    with pytest.raises(ServiceUnavailableError, match="2 training jobs are queued or running"):
        await jobs.submit("acme", BODY, 1)
    assert [(await jobs.get("acme", j.id)).status for j in (first, second)] == [
        "running",
        "queued",
    ]
    runner.gate.set()
    await settle()
    assert (await jobs.submit("acme", BODY, 1)).status == "queued"


async def test_only_the_newest_finished_jobs_are_kept() -> None:
    runner = GatedRunner()
    runner.gate.set()
    jobs = TrainingJobs(runner, max_kept=3)
    ids = []
    for _ in range(5):
        ids.append((await jobs.submit("acme", BODY, 1)).id)
        await settle()

    with pytest.raises(ResourceNotFoundError):
        await jobs.get("acme", ids[0])
    assert [(await jobs.get("acme", i)).status for i in ids[-3:]] == ["succeeded"] * 3
