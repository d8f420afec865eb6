"""Hub ids as base models, against a local fake of the hub cache: nothing is downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.engine import BaseModelLoadError
from services.engine import ensure_tiny_model
from services.engine import load_base_model
from services.engine import resolve_base_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(models_dir: Path, repo_id: str, model_dir: Path) -> Path:
    """Lay ``model_dir`` out as the hub client caches a snapshot of ``repo_id``."""
    repo = models_dir / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_cached_hub_id_resolves_to_its_snapshot_and_loads(tmp_path: Path) -> None:
    tiny = ensure_tiny_model(tmp_path / "built")
    snapshot = fake_hub_cache(tmp_path / "models", "acme-labs/tiny-copy", tiny)

    resolved = resolve_base_model("acme-labs/tiny-copy", tmp_path / "models")
    base = load_base_model(resolved, name="acme-labs/tiny-copy", device="cpu")

    assert resolved == snapshot
    assert base.name == "acme-labs/tiny-copy" and base.tokenizer.eos_token == "<|eos|>"


def test_an_uncached_hub_id_offline_is_refused_naming_it_and_the_fixes(tmp_path: Path) -> None:
    with pytest.raises(BaseModelLoadError, match=r"'acme-labs/absent' is not in .*HF_HUB_OFFLINE"):
        resolve_base_model("acme-labs/absent", tmp_path / "models")


def test_a_local_directory_wins_over_a_hub_id_of_the_same_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = ensure_tiny_model(tmp_path / "built")
    shutil.copytree(tiny, tmp_path / "org" / "model")
    monkeypatch.chdir(tmp_path)

    assert resolve_base_model("org/model", tmp_path / "models") == Path("org/model")
