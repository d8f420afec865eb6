"""What an engine backend is built from: its options and the replica's cache hooks.

Shared by the seam (``_backend``) and each backend, so no backend imports the seam.
"""

from __future__ import annotations

from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Literal
from typing import Self

from adapter_store import AdapterVersion
from adapter_store import BaseModelManifest
from scheduler import EvictionPolicy
from scheduler import LRUEviction
from services.engine._cache import AdapterCache
from services.engine._cache import HostAdapterLike
from services.engine._cache import ResidencyEvent

__all__ = ["ENGINE_KINDS", "BaseModelFacts", "CacheHooks", "EngineKind", "EngineOptions"]

EngineKind = Literal["hf", "vllm"]
ENGINE_KINDS: tuple[EngineKind, ...] = ("hf", "vllm")


@dataclass(frozen=True)
class EngineOptions:
    """What a backend is built from; fields a backend does not use are ignored by it.

    ``base_model`` is a built-in model name, a local Hugging Face directory or a hub
    id. ``gpu_slots`` ``None`` lets the backend size its slots (``hf``: from the memory the
    loaded base left free, 8 on a CPU; ``vllm``: 8). ``quantize`` holds the base's
    weights in NF4 or int8 (``hf``; ``vllm`` takes what vLLM runs, see
    :func:`~services.engine.plan_vllm_quantization`). The ``vllm_*``
    fields go to vLLM's engine arguments (``vllm_kv_cache_bytes`` wins over
    ``vllm_gpu_memory_utilization`` when set; on the CPU build the utilization is a
    fraction of host memory).
    """

    base_model: str | Path = "tiny"
    name: str | None = None
    models_dir: Path | None = None
    gpu_slots: int | None = 4
    max_lora_rank: int = 64
    quantize: str = "none"
    host_budget_bytes: int = 1 << 30
    max_batch_size: int = 32
    max_batch_tokens: int = 32768
    max_waiting: int = 1024
    device: str | None = None
    dtype: str | None = None
    vllm_gpu_memory_utilization: float = 0.9
    vllm_kv_cache_bytes: int | None = None
    vllm_max_model_len: int | None = None
    vllm_enforce_eager: bool = False
    vllm_tensor_parallel_size: int = 1


@dataclass(frozen=True)
class CacheHooks:
    """The replica's side of the adapter cache: where adapters come from on a miss
    (the store's verified, single-flight disk cache), which keys the disk holds, the
    eviction policy, and who hears of residency changes and of the base's manifest."""

    fetch_to_disk: Callable[[AdapterVersion], Path]
    disk_keys: Callable[[], Iterable[str]] | None = None
    eviction_policy: Callable[[], EvictionPolicy] = LRUEviction
    on_change: Callable[[ResidencyEvent], None] | None = None
    on_manifest: Callable[[BaseModelManifest], Awaitable[object] | object] | None = field(
        default=None
    )

    def adapter_cache(
        self,
        options: EngineOptions,
        gpu_slots: int,
        *,
        load_host: Callable[[AdapterVersion, Path], HostAdapterLike],
        activate_slot: Callable[[int, Any], None],
        deactivate_slot: Callable[[int], None],
    ) -> AdapterCache:
        """The adapter cache of a backend whose GPU tier is ``gpu_slots`` slots that
        ``activate_slot`` fills and ``deactivate_slot`` empties."""
        return AdapterCache(
            gpu_slots=gpu_slots,
            host_budget_bytes=options.host_budget_bytes,
            fetch_to_disk=self.fetch_to_disk,
            load_host=load_host,
            activate_slot=activate_slot,
            deactivate_slot=deactivate_slot,
            disk_keys=self.disk_keys,
            eviction_policy=self.eviction_policy,
            on_change=self.on_change,
        )


@dataclass(frozen=True)
class BaseModelFacts:
    """What a replica reports of the base model its engine serves: its manifest (its id
    and quantization too) and its weights' bytes."""

    manifest: BaseModelManifest
    weight_bytes: int
    """The bytes the weights hold as loaded (quantized or not)."""
    full_precision_bytes: int
    """The weights unquantized: one full fine-tuned copy's size."""


class StartedOnEnter:
    """``async with`` for anything with ``start`` and ``aclose``."""

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
