"""``loramux generate``, ``chat`` and ``stats``: the running service, through the SDK.

They use the SDK's connection settings (``LORAMUX_URL`` / ``LORAMUX_API_KEY`` or the
profile of ``loramux up``). Tokens are printed as they stream in.

Failure mode: an error answer (also one inside a stream, after some tokens were
printed) is one ``error:`` line on stderr and exit status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Annotated
from typing import Any

import typer

from services.cli._service import open_client
from services.cli._service import service_errors
from services.client import ReplicaStats
from services.client import TierCounters

__all__ = ["register"]

_MaxTokens = Annotated[int, typer.Option(min=1, help="Most tokens to generate.")]
_Temperature = Annotated[
    float, typer.Option(min=0.0, max=2.0, help="Sampling temperature (0: greedy).")
]
_Stream = Annotated[bool, typer.Option(help="Print tokens as they are generated.")]
_EXIT_WORDS = frozenset({"exit", "quit", "/exit", "/quit"})


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def generate(
    model: Annotated[str, typer.Argument(help="Adapter (name, name@3, name:prod) or base model.")],
    prompt: Annotated[str, typer.Argument(help="The text to complete.")],
    max_tokens: _MaxTokens = 64,
    temperature: _Temperature = 1.0,
    stream: _Stream = True,
) -> None:
    """Complete PROMPT with MODEL and print the text."""
    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    with service_errors(open_client()) as client:
        if stream:
            for chunk in client.completions.create(
                model=model, prompt=prompt, stream=True, **params
            ):
                _write(chunk.choices[0].text)
        else:
            _write(client.completions.create(model=model, prompt=prompt, **params).choices[0].text)
    _write("\n")


def _user_turns(message: str | None) -> Iterator[str]:
    """``--message`` alone, else stdin line by line (with a prompt on a terminal)."""
    if message is not None:
        yield message
        return
    interactive = sys.stdin.isatty()
    if interactive:
        typer.echo("chat: one message per line; Ctrl-D or 'exit' ends it.", err=True)
    while True:
        if interactive:
            typer.secho("you> ", nl=False, bold=True)
        line = sys.stdin.readline()
        if not line or line.strip() in _EXIT_WORDS:
            return
        if line.strip():
            yield line.strip()


def chat(
    model: Annotated[str, typer.Argument(help="Adapter (name, name@3, name:prod) or base model.")],
    message: Annotated[
        str | None,
        typer.Option("--message", "-m", help="Send one message and exit (no REPL)."),
    ] = None,
    system: Annotated[str | None, typer.Option(help="A system message to start with.")] = None,
    max_tokens: _MaxTokens = 256,
    temperature: _Temperature = 1.0,
) -> None:
    """Chat with MODEL: a REPL on a terminal (each line a message), or one --message.

    The conversation is kept, so each answer sees the earlier turns; replies stream.
    """
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    with service_errors(open_client()) as client:
        for turn in _user_turns(message):
            history.append({"role": "user", "content": turn})
            reply: list[str] = []
            for chunk in client.chat.create(
                model=model,
                messages=history,
                stream=True,
                max_tokens=max_tokens,
                temperature=temperature,
            ):
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    reply.append(piece)
                    _write(piece)
            _write("\n")
            history.append({"role": "assistant", "content": "".join(reply)})


def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Per replica: the base's quantization and memory, adapters resident on GPU / host /
    disk, hit ratios, load."""
    from rich.console import Console
    from rich.table import Table

    with service_errors(open_client()) as client:
        answer = client.stats()
    if as_json:
        typer.echo(answer.model_dump_json(indent=2, exclude_none=True))
        return
    table = Table(
        "replica",
        "base",
        "gpu",
        "host",
        "disk",
        "loading",
        "in flight",
        "queued",
        "served",
        "gpu hit",
        "host hit",
        "disk hit",
        title="replicas",
    )
    for replica in answer.replicas:
        resident, tiers = replica.residency, replica.tiers or {}
        counters = (replica.in_flight, replica.queued, replica.requests_served)
        table.add_row(
            replica.replica_id,
            _base(replica),
            f"{len(resident.gpu)}/{replica.gpu_slots}",
            *(str(len(keys)) for keys in (resident.host, resident.disk, resident.loading)),
            *("-" if count is None else str(count) for count in counters),
            *(_ratio(tiers.get(tier)) for tier in ("gpu", "host", "disk")),
        )
    Console().print(table)


def _base(replica: ReplicaStats) -> str:
    """The engine, the base's quantization and the bytes its weights hold, e.g.
    ``hf nf4 9.3 MB``."""
    held = replica.quantization or "-"
    if replica.base_model_bytes is not None:
        held = f"{held} {replica.base_model_bytes / 1e6:.1f} MB"
    return f"{replica.engine or '-'} {held}"


def _ratio(tier: TierCounters | None) -> str:
    return "-" if tier is None else f"{tier.hit_ratio:.0%} of {tier.hits + tier.misses}"


def register(app: typer.Typer) -> None:
    """Add ``generate``, ``chat`` and ``stats`` to ``app``."""
    for command in (generate, chat, stats):
        app.command(command.__name__)(command)
