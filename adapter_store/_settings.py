"""The store's configuration: one pydantic-settings class, environment prefix ``LORAMUX_``.

Every field can be set as an environment variable (``LORAMUX_REDIS_URL``,
``LORAMUX_BLOB_URL``, ``LORAMUX_DATA_DIR`` ...) or passed to the constructor. Unset
endpoints fall back to the embedded default under ``data_dir``: a private redis-server
(appendonly) and blobs in ``data_dir/blobs``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic import field_validator
from pydantic_settings import BaseSettings
from pydantic_settings import SettingsConfigDict

from adapter_store._identity import validate_base_model_id
from adapter_store._identity import validate_name
from adapter_store._source import AdapterLimits

__all__ = ["StoreSettings"]


class StoreSettings(BaseSettings):
    """Where the store keeps things and the limits it enforces.

    ``max_adapter_bytes``, ``max_rank``, ``max_scaling``, ``max_weight_abs`` and
    ``validation_budget_s`` are the push limits (:class:`AdapterLimits`); ``None`` keeps
    the format layer's defaults.
    """

    model_config = SettingsConfigDict(env_prefix="LORAMUX_", extra="forbid")

    redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db; None starts a private redis-server under data_dir",
    )
    blob_url: str | None = Field(
        default=None,
        description="s3://bucket/prefix?endpoint_url=... or file:///abs/path; "
        "None means file://<data_dir>/blobs",
    )
    data_dir: Path = Field(default=Path("~/.loramux"), description="embedded state root")
    cache_dir: Path | None = Field(
        default=None, description="local disk cache of pulled adapters; None: data_dir/cache"
    )
    cache_max_bytes: int = Field(default=10 << 30, ge=0)
    key_prefix: str = Field(default="loramux:", min_length=1)
    tenant: str = Field(default="default", description="the CLI's tenant")
    base_model: str = Field(default="tiny", description="the CLI's base model for pushes")
    max_adapter_bytes: int | None = Field(default=None, gt=0)
    max_rank: int | None = Field(default=None, gt=0)
    max_scaling: float | None = Field(default=None, gt=0)
    max_weight_abs: float | None = Field(default=None, gt=0)
    validation_budget_s: float | None = Field(
        default=None, gt=0, description="wall-clock budget of one push's validation"
    )

    @property
    def adapter_limits(self) -> AdapterLimits:
        """The push limits: the fields set here over :class:`AdapterLimits`' defaults."""
        caps = {
            "max_bytes": self.max_adapter_bytes,
            "max_rank": self.max_rank,
            "max_scaling": self.max_scaling,
            "max_weight_abs": self.max_weight_abs,
            "validation_budget_s": self.validation_budget_s,
        }
        return AdapterLimits(**{k: v for k, v in caps.items() if v is not None})

    @field_validator("data_dir", "cache_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        return validate_name(value, "tenant")

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, value: str) -> str:
        return validate_base_model_id(value)

    @property
    def resolved_blob_url(self) -> str:
        return self.blob_url or (self.data_dir.absolute() / "blobs").as_uri()

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

    @property
    def embedded_redis_dir(self) -> Path:
        return self.data_dir / "redis"
