"""The ``loramux`` command line.

Commands live in sibling modules, each with a ``register(app)`` function, so the light
install (client only) imports nothing heavy until a server-side command runs.
"""

from __future__ import annotations

import importlib

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="loramux",
    help="Multi-tenant LoRA adapter storage and cache-aware scheduling.",
    no_args_is_help=True,
    add_completion=False,
)

# Each module adds its commands to the app; heavy imports stay inside the commands.
_COMMAND_MODULES = (
    "services._cli_adapters",
    "services._cli_generate",
    "services._cli_store",
    "services._cli_sim",
    "services._cli_up",
)

for _module in _COMMAND_MODULES:
    try:
        importlib.import_module(_module).register(app)
    except ModuleNotFoundError as exc:  # a command group not built yet
        if exc.name != _module:
            raise


def main() -> None:
    app()
