"""StoreSettings: LORAMUX_ environment variables, embedded defaults, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from adapter_store._settings import StoreSettings


def test_defaults_put_everything_under_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LORAMUX_DATA_DIR", str(tmp_path))
    settings = StoreSettings()
    assert settings.redis_url is None
    assert settings.resolved_blob_url == (tmp_path / "blobs").as_uri()
    assert settings.resolved_cache_dir == tmp_path / "cache"
    assert settings.embedded_redis_dir == tmp_path / "redis"
    assert (settings.key_prefix, settings.tenant, settings.base_model) == (
        "loramux:",
        "default",
        "tiny",
    )


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAMUX_REDIS_URL", "redis://db:6379/2")
    monkeypatch.setenv("LORAMUX_BLOB_URL", "s3://bucket/prefix")
    monkeypatch.setenv("LORAMUX_MAX_RANK", "64")
    monkeypatch.setenv("LORAMUX_DATA_DIR", "~/x")
    settings = StoreSettings()
    assert settings.redis_url == "redis://db:6379/2"
    assert settings.resolved_blob_url == "s3://bucket/prefix"
    assert settings.max_rank == 64
    assert settings.data_dir == Path("~/x").expanduser()


@pytest.mark.parametrize(
    "bad",
    [{"tenant": "../etc"}, {"base_model": "a/b/c"}, {"max_rank": 0}, {"cache_max_bytes": -1}],
)
def test_invalid_values_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        StoreSettings(**bad)
