"""``python -m services.cli``: the ``loramux`` command."""

from services.cli import main

main()
