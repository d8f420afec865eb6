"""What each server-side package exports: a change to a public surface is deliberate.

The names are pinned in ``public_surface.json``; ``services``' light surface (the SDK,
wire models and errors) is pinned there too, and
``tests/unit/services/test_light_import.py`` checks it stays light.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

# The pinned surface, package by package (``services`` is the light SDK surface).
PUBLIC: dict[str, list[str]] = json.loads(
    (Path(__file__).with_name("public_surface.json")).read_text()
)


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_package_exports_exactly_its_public_surface(package: str) -> None:
    module = importlib.import_module(package)

    assert sorted(module.__all__) == PUBLIC[package]
    assert len(module.__all__) == len(set(module.__all__)), "a name is exported twice"
    assert all(hasattr(module, name) for name in module.__all__)


# ``services`` re-exports its public SDK package, ``services.client``.
@pytest.mark.parametrize("package", sorted(set(PUBLIC) - {"services"}))
def test_exported_objects_live_in_private_modules_or_exceptions(package: str) -> None:
    module = importlib.import_module(package)

    for name in module.__all__:
        origin = getattr(getattr(module, name), "__module__", None)
        if origin is None or not origin.startswith(package + "."):
            continue  # constants and aliases of builtin types carry no module
        leaf = origin.removeprefix(package + ".").split(".")[0]
        assert leaf.startswith("_") or leaf == "exceptions", f"{name} comes from {origin}"
