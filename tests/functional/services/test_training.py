"""``loramux train`` and ``/v1/training/jobs`` through the real API and CLI.

The trainer is the real job book with its jobs run in a thread (the Serve application
runs them as Ray tasks: ``tests/integration/services/test_app.py``), the base model the
real built-in ``tiny``, the adapter trained by PEFT and published through the store.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from adapter_store import AdapterStore
from services.client import Client
from services.client import TrainingOptions
from services.engine import BaseModel
from services.engine import load_base_model
from services.exceptions import BadRequestError
from services.exceptions import ResourceNotFoundError
from services.training import ProgressSink
from services.training import TrainingJobs
from services.training import TrainingOutcome
from services.training import TrainingRequest
from services.training import run_training
from tests.functional.services.test_cli_service import Cli
from tests.functional.services.test_cli_service import make_cli

LINES = [json.dumps({"prompt": f"{i} plus 1?", "completion": f" {i + 1}"}) for i in range(6)]
QUICK = ["--max-steps", "4", "--batch-size", "2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> BaseModel:
    return load_base_model("tiny", models_dir=tmp_path_factory.mktemp("models"), device="cpu")


@pytest.fixture
def trainer(store: AdapterStore, base: BaseModel) -> TrainingJobs:
    async def in_a_thread(request: TrainingRequest, progress: ProgressSink) -> TrainingOutcome:
        loop = asyncio.get_running_loop()

        def report(p) -> None:
            loop.call_soon_threadsafe(progress, p)

        return await asyncio.to_thread(
            run_training, request, report, store=store, base=base, base_model_id="tiny"
        )

    return TrainingJobs(in_a_thread)


@pytest.fixture
def acme_key(store: AdapterStore) -> str:
    return store.create_tenant("acme")[1]


@pytest.fixture
def acme(service_url: str, acme_key: str, tmp_path: Path) -> Cli:
    return make_cli(service_url, tmp_path / "home", LORAMUX_API_KEY=acme_key)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    return path


def test_train_runs_a_job_on_the_service_and_publishes_the_next_version(
    acme: Cli, data: Path, store: AdapterStore
) -> None:
    result = acme("train", data, "--name", "bot", "--alias", "prod", *QUICK)

    assert "training job train-" in result.output and "6 examples" in result.output
    assert "trained 4 steps" in result.output and "eval loss" in result.output
    assert "pushed acme/bot@1" in result.output
    published = store.resolve("acme", "bot:prod")
    assert published.version == 1 and published.base_model == "tiny"
    assert published.origin == "trained"
    listing = acme("ls").output
    assert "bot" in listing and "trained" in listing


def test_the_sdk_job_reports_progress_and_the_held_out_loss(
    service_url: str, acme_key: str, data: Path
) -> None:
    options = TrainingOptions(max_steps=3, batch_size=2, validation_split=0.5)
    seen = []
    with Client(service_url, acme_key, max_retries=0) as client:
        job = client.training.create(data, name="bot", options=options)
        done = client.training.wait(job.id, on_progress=seen.append, poll_s=0.05)

    assert job.status == "queued" and job.examples == 6
    assert done.status == "succeeded" and done.version == 1
    assert done.eval_loss is not None and done.eval_loss > 0
    assert done.progress is not None and done.progress.total_steps == 3
    assert seen and seen[-1].step == 3


def test_a_bad_line_is_refused_before_any_job_and_nothing_is_published(
    acme: Cli, service_url: str, acme_key: str, tmp_path: Path, store: AdapterStore
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([LINES[0], '{"prompt": "no completion"}', LINES[1]]))

    result = acme("train", bad, "--name", "bot", ok=False)
    with (
        Client(service_url, acme_key, max_retries=0) as client,
        pytest.raises(BadRequestError, match="line 2: keys"),
    ):
        client.training.create(bad.read_text(), name="bot")

    assert result.output.startswith("error: ") and "line 2" in result.output
    assert "nothing was trained or published" in result.output
    assert store.list_adapters("acme").items == ()


def test_a_job_is_seen_by_its_own_tenant_only(
    service_url: str, acme_key: str, store: AdapterStore, data: Path
) -> None:
    _, other_key = store.create_tenant("globex")
    with Client(service_url, acme_key, max_retries=0) as acme:
        job = acme.training.create(data, name="bot", options=TrainingOptions(max_steps=1))
        acme.training.wait(job.id, poll_s=0.05)
    with (
        Client(service_url, other_key, max_retries=0) as globex,
        pytest.raises(ResourceNotFoundError, match="no training job"),
    ):
        globex.training.get(job.id)


def test_a_trained_adapter_pulls_back_as_a_peft_directory_peft_loads(
    acme: Cli, tmp_path: Path, base: BaseModel
) -> None:
    from peft import PeftModel

    text = tmp_path / "text.jsonl"
    text.write_text(
        "\n".join(json.dumps({"text": f"Story {i}: once upon a time."}) for i in range(4))
    )
    acme("train", text, "--name", "storyteller", *QUICK)

    out = tmp_path / "pulled"
    assert "pulled acme/storyteller@1" in acme("pull", "storyteller", out).output
    tuned = PeftModel.from_pretrained(base.model, str(out))
    try:
        assert tuned.peft_config["default"].r == 8
    finally:
        tuned.unload()


def test_train_local_trains_here_and_pushes_through_the_service(
    acme: Cli, data: Path, store: AdapterStore
) -> None:
    result = acme("train", data, "--name", "bot", "--local", *QUICK)

    assert "trained 4 steps" in result.output and "pushed acme/bot@1" in result.output
    assert store.resolve("acme", "bot").base_model == "tiny"
    assert store.resolve("acme", "bot").origin == "trained"


@pytest.mark.parametrize("trainer", [None])
def test_without_a_trainer_the_service_says_to_train_locally(
    service_url: str, acme_key: str
) -> None:
    answer = httpx.post(
        f"{service_url}/v1/training/jobs",
        json={"name": "bot", "data": LINES[0]},
        headers={"Authorization": f"Bearer {acme_key}"},
    )

    assert answer.status_code == 503 and "--local" in answer.text
