"""The ``loramux`` command line.

Commands live in the package's private modules, each with a ``register(app)`` function, so the light
install (client only) imports nothing heavy until a server-side command runs.
"""

from __future__ import annotations

import typer

from services.cli import _adapters
from services.cli import _generate
from services.cli import _sim
from services.cli import _store
from services.cli import _train
from services.cli import _up

__all__ = ["app", "main"]

app = typer.Typer(
    name="loramux",
    help="Multi-tenant LoRA adapter storage and cache-aware scheduling.",
    no_args_is_help=True,
    add_completion=False,
)

# Each module adds its commands to the app; heavy imports stay inside the commands.
for _module in (_adapters, _generate, _store, _sim, _train, _up):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
