"""The service's configuration: one pydantic-settings class, environment prefix ``LORAMUX_``.

The store's own settings (``LORAMUX_REDIS_URL``, ``LORAMUX_BLOB_URL``,
``LORAMUX_DATA_DIR`` ...) are composed as :attr:`ServiceSettings.store`, and the request
limits as :attr:`ServiceSettings.limits`, read from the same environment, never
duplicated here. ``store.base_model`` is the id the served base
model is registered and pushed under.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic import SecretStr
from pydantic import field_validator
from pydantic import model_validator
from pydantic_settings import BaseSettings
from pydantic_settings import SettingsConfigDict

from adapter_store import StoreSettings
from adapter_store import TenantLimits

__all__ = ["LimitSettings", "ServiceSettings"]


class LimitSettings(BaseSettings):
    """What one request may ask for, checked at the ingress before anything reaches a
    replica, and the request limits of a tenant that has none of its own.

    Each refusal names its setting (``LORAMUX_MAX_TOKENS_LIMIT`` ...). The tenant
    defaults apply to every tenant; ``loramux tenant limits`` overrides them per tenant.
    ``None`` is no limit.
    """

    model_config = SettingsConfigDict(env_prefix="LORAMUX_", extra="forbid")

    max_body_bytes: int = Field(
        default=4 << 20, ge=1024, description="a generation request's JSON body"
    )
    max_prompt_bytes: int = Field(
        default=256 << 10, ge=1, description="the prompt, or all messages' contents, in UTF-8"
    )
    max_tokens_limit: int = Field(default=4096, ge=1, description="the largest max_tokens")
    max_stop_sequences: int = Field(default=4, ge=0)
    max_stop_bytes: int = Field(default=256, ge=1, description="each stop string, UTF-8")
    max_messages: int = Field(default=256, ge=1, description="messages of one chat request")
    max_n: int = Field(
        default=16, ge=1, le=16, description="choices per request (the engine serves at most 16)"
    )
    tenant_requests_per_s: float | None = Field(default=50.0, gt=0)
    tenant_tokens_per_min: int | None = Field(
        default=1_000_000, gt=0, description="prompt tokens (estimated) plus max_tokens"
    )
    tenant_max_in_flight: int | None = Field(default=64, gt=0)
    lease_ttl_s: float = Field(
        default=60.0,
        gt=1,
        description="an in-flight slot outlives a dead ingress by this; live ones are renewed",
    )

    def tenant_defaults(self) -> TenantLimits:
        """The request limits of a tenant that has none of its own."""
        return TenantLimits(
            requests_per_s=self.tenant_requests_per_s,
            tokens_per_min=self.tenant_tokens_per_min,
            max_in_flight=self.tenant_max_in_flight,
        )


class ServiceSettings(BaseSettings):
    """How the Ray Serve application is shaped: replicas, resources, engine, keys.

    ``base_model_dir`` is a local Hugging Face model directory; ``None`` serves the
    built-in ``tiny`` model (built under ``models_dir`` on first use). ``num_gpus``
    ``None`` asks for one GPU per replica when the building machine has CUDA, else none.
    ``admin_key`` guards the tenant endpoints; without one they answer 403.
    ``quantize`` holds the base's linear weights in NF4 or int8 (bitsandbytes) under
    full-precision adapters; ``gpu_slots`` ``None`` derives the slot count from the GPU
    memory free once the base is loaded (8 on a CPU).
    """

    model_config = SettingsConfigDict(env_prefix="LORAMUX_", extra="forbid")

    store: StoreSettings = Field(default_factory=StoreSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    base_model_dir: Path | None = Field(
        default=None, description="local HF model directory; None: the built-in tiny model"
    )
    models_dir: Path | None = Field(
        default=None, description="where the built-in model is written; None: engine default"
    )
    app_name: str = Field(default="loramux", min_length=1)
    replicas: int = Field(default=2, ge=1, description="model deployment replicas")
    max_replicas: int | None = Field(
        default=None,
        ge=1,
        description="autoscale the model deployment between replicas and this; None: fixed",
    )
    target_ongoing_requests: float = Field(
        default=32.0, gt=0, description="per model replica, when autoscaling"
    )
    quantize: Literal["none", "nf4", "int8"] = Field(
        default="none", description="hold the base model's weights in NF4 or int8"
    )
    engine: Literal["hf", "vllm"] | None = Field(
        default=None,
        description="replica engine backend; None: vllm where CUDA and vLLM are, else hf",
    )
    num_gpus: float | None = Field(default=None, ge=0, description="per model replica")
    num_cpus: float = Field(default=1.0, ge=0, description="per model replica")
    ingress_replicas: int = Field(default=1, ge=1)
    ingress_num_cpus: float = Field(default=0.5, ge=0)
    torch_threads: int = Field(default=0, ge=0, description="0: torch's default")
    gpu_slots: int | None = Field(
        default=None,
        ge=1,
        description="adapters resident in GPU per replica; None: from free GPU memory, 8 on CPU",
    )
    max_lora_rank: int = Field(default=64, ge=1)
    host_budget_bytes: int = Field(default=2 << 30, ge=1)
    max_batch_size: int = Field(default=32, ge=1)
    max_batch_tokens: int = Field(default=32768, ge=1)
    max_waiting: int = Field(default=1024, ge=0)
    max_ongoing_requests: int = Field(default=128, ge=1, description="per model replica")
    replica_retries: int = Field(default=2, ge=0, description="resends after a replica died")
    default_max_tokens: int = Field(default=128, ge=1, description="when a request sets none")
    routing_policy: str = Field(default="adaptive")
    routing_stats_period_s: float = Field(default=1.0, gt=0)
    router_max_tracked_adapters: int = Field(
        default=100_000,
        ge=2,
        description="adapters whose request rate each router keeps; past it the coldest "
        "half is forgotten",
    )
    stats_period_s: float = Field(default=2.0, gt=0, description="replica -> /v1/stats")
    view_staleness_bound_s: float = Field(
        default=2.0, gt=0, description="replicas republish their Redis snapshot every half"
    )
    training_num_cpus: float = Field(default=1.0, ge=0, description="per training job")
    training_num_gpus: float | None = Field(
        default=None, ge=0, description="per training job; None: 1 where CUDA is, else 0"
    )
    training_max_pending: int = Field(
        default=16, ge=1, description="training jobs queued or running; past it a 503"
    )
    admin_key: SecretStr | None = None
    metrics_tenant_label: bool = Field(
        default=True, description="label token metrics by tenant; False: one tenant='*'"
    )

    @field_validator("base_model_dir", "models_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @model_validator(mode="after")
    def _check_autoscaling(self) -> ServiceSettings:
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas}): "
                "set max_replicas >= replicas, or leave it unset for a fixed count"
            )
        return self

    def model_scaling(self) -> dict[str, object]:
        """Ray Serve deployment options for the model replicas' count."""
        if self.max_replicas is None:
            return {"num_replicas": self.replicas}
        return {
            "num_replicas": "auto",
            "autoscaling_config": {
                "min_replicas": self.replicas,
                "initial_replicas": self.replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            },
        }

    @property
    def base_model_id(self) -> str:
        """The id adapters are pushed against and ``model`` names for no adapter."""
        return self.store.base_model

    def replica_num_gpus(self) -> float:
        """``num_gpus``, or 1 when unset and this machine has CUDA."""
        return _gpus_or_cuda(self.num_gpus)

    def training_gpus(self) -> float:
        """``training_num_gpus``, or 1 when unset and this machine has CUDA."""
        return _gpus_or_cuda(self.training_num_gpus)


def _gpus_or_cuda(chosen: float | None) -> float:
    if chosen is not None:
        return chosen
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0
