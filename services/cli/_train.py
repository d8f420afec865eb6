"""``loramux train``: fine-tune a LoRA adapter and publish it as the next version of NAME.

Two places to train, one result (an ordinary PEFT directory pushed as a new version):

- default: a job on the service's Ray cluster (``POST /v1/training/jobs``), its progress
  polled and drawn here; the service trains on the base model it serves;
- ``--local``: in this process (needs the ``[server]`` extra), on the service's base model
  when it is a built-in one or on ``--base-model DIR``, then pushed like ``loramux push``.

Failure mode: a malformed line or option is refused before any training, naming it; a
run that fails publishes nothing.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated

import typer
from pydantic import ValidationError

from services.cli._adapters import open_backend
from services.cli._common import DirectOption
from services.cli._common import fail
from services.cli._common import progress_task
from services.cli._common import size
from services.cli._common import transfer_bar
from services.cli._views import PushRequest
from services.client import TrainingJob
from services.client import TrainingOptions
from services.client import TrainingProgress

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.progress import TaskID

    from services.training import TrainingExample

__all__ = ["register"]

_POLL_S = 0.5


class _StepBar:
    """A rich bar of optimizer steps with the last loss."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def show(self, progress: TrainingProgress) -> None:
        loss = "-" if progress.loss is None else f"{progress.loss:.3f}"
        self._progress.update(
            self._task, completed=progress.step, total=progress.total_steps, loss=loss
        )


@contextlib.contextmanager
def _step_bar(description: str) -> Iterator[_StepBar]:
    from rich.progress import MofNCompleteColumn
    from rich.progress import TextColumn
    from rich.progress import TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    columns = (
        MofNCompleteColumn(),
        TextColumn("steps  loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with progress_task(description, *columns, transient=False, loss="-") as (bar, task):
        yield _StepBar(bar, task)


def train(
    data: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="Training data, JSON lines.")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Adapter name to publish.")],
    local: Annotated[
        bool,
        typer.Option(
            "--local", help="Train in this process (needs the [server] extra), then push."
        ),
    ] = False,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    alpha: Annotated[float, typer.Option(help="LoRA alpha (scale = alpha / rank).")] = 16.0,
    target_module: Annotated[
        list[str] | None,
        typer.Option(help="Module to adapt, repeatable (default: every linear layer)."),
    ] = None,
    epochs: Annotated[
        float | None,
        typer.Option(help="Passes over the examples (default: about 300 steps, 3 to 100)."),
    ] = None,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 2e-3,
    batch_size: Annotated[int, typer.Option(help="Examples per optimizer step.")] = 8,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many steps, whatever --epochs says.")
    ] = None,
    max_length: Annotated[int, typer.Option(help="Tokens kept per example.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed of the init, split and order.")] = 0,
    validation_split: Annotated[
        float, typer.Option(help="Share of examples held out for the eval loss.")
    ] = 0.1,
    alias: Annotated[
        list[str] | None, typer.Option("--alias", "-a", help="Alias to point at the result.")
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            help="With --local: the base model's local directory, when the service's "
            "base model is not a built-in one."
        ),
    ] = None,
    direct: DirectOption = False,
) -> None:
    """Fine-tune a LoRA adapter on DATA and publish it as the next version of NAME.

    DATA holds one JSON object per line: {"messages": [...]} (OpenAI's fine-tuning
    format), {"prompt": ..., "completion": ...} or {"text": ...}.
    """
    from services.training import TrainingDataError
    from services.training import parse_training_data

    try:
        options = TrainingOptions(
            rank=rank,
            alpha=alpha,
            target_modules=target_module or None,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            max_steps=max_steps,
            max_length=max_length,
            seed=seed,
            validation_split=validation_split,
        )
    except ValidationError as exc:
        raise fail(f"invalid option: {exc}") from None
    text = data.read_text(encoding="utf-8", errors="strict")
    try:
        examples = parse_training_data(text.splitlines())
    except TrainingDataError as exc:
        raise fail(f"{data}: {exc}; nothing was trained or published") from None
    if local:
        _train_here(examples, name, options, alias or [], base_model, direct)
    elif direct or base_model is not None:
        raise fail("--direct and --base-model need --local: the service trains on its own model")
    else:
        _train_on_service(text, name, options, alias or [], len(examples))


def _train_here(
    examples: list[TrainingExample],
    name: str,
    options: TrainingOptions,
    aliases: list[str],
    base_model: str | None,
    direct: bool,
) -> None:
    from services.engine import BaseModelLoadError
    from services.engine import load_base_model
    from services.engine import resolve_base_model
    from services.training import TrainingError
    from services.training import train_adapter

    with open_backend(direct) as backend:
        model_id = backend.base_model_id()
        try:
            directory = resolve_base_model(base_model or model_id)
            base = load_base_model(directory, name=model_id)
        except BaseModelLoadError as exc:
            raise fail(
                f"{exc}; the service serves {model_id!r}: pass --base-model with its local "
                "directory"
            ) from None
        with tempfile.TemporaryDirectory(prefix="loramux-train-") as scratch:
            out = Path(scratch) / name
            try:
                with _step_bar(f"train {name}") as bar:
                    result = train_adapter(
                        base.model,
                        base.tokenizer,
                        examples,
                        options,
                        out,
                        base_model_id=model_id,
                        on_progress=bar.show,
                    )
            except TrainingError as exc:
                raise fail(f"{exc}; nothing was published") from None
            with transfer_bar(f"push {name}") as transfer:
                request = PushRequest(
                    out, name, aliases, model_id if direct else None, origin="trained"
                )
                version = backend.push(request, transfer)
    typer.echo(_summary(result.steps, result.seconds, result.train_loss, result.eval_loss))
    typer.echo(f"pushed {version.key} ({size(version.size_bytes)}, rank {version.rank})")


def _train_on_service(
    text: str, name: str, options: TrainingOptions, aliases: list[str], examples: int
) -> None:
    from services.cli import _service

    client = _service.open_client()
    with _service.service_errors(client):
        job = client.training.create(text, name=name, options=options, aliases=aliases)
        typer.echo(f"training job {job.id}: {examples} examples, on the service")
        started = time.monotonic()
        with _step_bar(f"train {name}") as bar:
            job = client.training.wait(job.id, on_progress=bar.show, poll_s=_POLL_S)
    _finish(job, time.monotonic() - started)


def _finish(job: TrainingJob, seconds: float) -> None:
    if job.status != "succeeded":
        raise fail(f"training job {job.id} failed: {job.error}; nothing was published")
    steps = job.progress.total_steps if job.progress else 0
    typer.echo(_summary(steps, seconds, job.train_loss, job.eval_loss))
    typer.echo(f"pushed {job.tenant}/{job.name}@{job.version}")


def _summary(steps: int, seconds: float, train_loss: float | None, eval_loss: float | None) -> str:
    def loss(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    return (
        f"trained {steps} steps in {seconds:.0f} s: train loss {loss(train_loss)}, "
        f"eval loss {loss(eval_loss)}"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
