"""How many adapter slots a replica preallocates on its GPU.

Policy: an explicit count wins. Otherwise, on CUDA, the count is derived once the base
model is loaded, from the memory then free: keep ``headroom_fraction`` of it for
activations and the allocator, reserve the KV cache of a full token budget
(``max_batch_tokens`` tokens, the most the engine ever admits at once), and fill the
rest with slots of ``max_rank`` (one more slot is always allocated, all zero, for rows
without an adapter). A quantized base leaves more memory free, hence more slots. On a
CPU, memory is host RAM shared with the host tier, so the count is
:data:`CPU_DEFAULT_SLOTS` unless set.

Failure mode: when not even one slot fits, the replica refuses to start with
:class:`BaseModelLoadError` naming the numbers, rather than failing at the first load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
from typing import Final

from services.engine.exceptions import BaseModelLoadError

if TYPE_CHECKING:
    from services.engine._base_model import BaseModel

__all__ = [
    "CPU_DEFAULT_SLOTS",
    "derive_gpu_slots",
    "kv_cache_bytes_per_token",
    "lora_slot_bytes",
    "plan_gpu_slots",
]

CPU_DEFAULT_SLOTS: Final = 8
DEFAULT_HEADROOM_FRACTION: Final = 0.1
# More slots than this only cost load-time zeroing and memory; no batch uses them all.
MAX_DERIVED_SLOTS: Final = 1024


def lora_slot_bytes(
    module_shapes: Mapping[str, tuple[int, int]], max_rank: int, dtype_bytes: int
) -> int:
    """Bytes of one slot: ``A (in, r)`` and ``B (r, out)`` for every wrapped module."""
    return sum(i + o for i, o in module_shapes.values()) * max_rank * dtype_bytes


def kv_cache_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Keys and values of one token in every layer: ``2 * layers * kv_heads * head_dim``."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def derive_gpu_slots(
    *,
    free_bytes: int,
    slot_bytes: int,
    kv_reserve_bytes: int,
    headroom_fraction: float = DEFAULT_HEADROOM_FRACTION,
    max_slots: int = MAX_DERIVED_SLOTS,
) -> int:
    """Slots that fit in ``free_bytes`` after headroom and the KV reserve, at most
    ``max_slots``; the always-present empty slot is paid for.

    Raises:
        ValueError: a size is negative, ``slot_bytes`` is zero, or the fraction is
            outside [0, 1).
        BaseModelLoadError: not even one slot fits (the message gives the numbers).
    """
    if min(free_bytes, kv_reserve_bytes) < 0 or slot_bytes < 1 or max_slots < 1:
        raise ValueError(
            "free_bytes and kv_reserve_bytes must be >= 0, slot_bytes and max_slots >= 1"
        )
    if not 0 <= headroom_fraction < 1:
        raise ValueError(f"headroom_fraction must be in [0, 1), got {headroom_fraction}")
    usable = int(free_bytes * (1 - headroom_fraction)) - kv_reserve_bytes
    slots = usable // slot_bytes - 1
    if slots < 1:
        raise BaseModelLoadError(
            f"no adapter slot fits: {free_bytes / 2**30:.2f} GiB free after the base model, "
            f"{headroom_fraction:.0%} kept as headroom, {kv_reserve_bytes / 2**30:.2f} GiB "
            f"reserved for the KV cache, {slot_bytes / 2**20:.1f} MiB per slot; set "
            "gpu_slots explicitly, lower max_batch_tokens or max_lora_rank, or quantize "
            "the base (nf4, int8)"
        )
    return min(slots, max_slots)


def plan_gpu_slots(
    base: BaseModel, *, max_rank: int, max_batch_tokens: int, explicit: int | None = None
) -> int:
    """The slot count for ``base`` (see the module docstring): ``explicit`` if given,
    :data:`CPU_DEFAULT_SLOTS` on a CPU, else derived from the CUDA memory free now.

    Call it after the base model is loaded and before the LoRA layers are allocated.

    Raises:
        BaseModelLoadError: derived on CUDA and not even one slot fits.
    """
    if explicit is not None:
        return explicit
    device = base.device
    if device.type != "cuda":
        return CPU_DEFAULT_SLOTS
    import torch

    free_bytes, _ = torch.cuda.mem_get_info(device)
    dtype_bytes = torch.finfo(base.dtype).bits // 8
    manifest = base.manifest
    wrapped = {n: s for n, s in manifest.modules.items() if n != manifest.output_module}
    return derive_gpu_slots(
        free_bytes=free_bytes,
        slot_bytes=lora_slot_bytes(wrapped, max_rank, dtype_bytes),
        kv_reserve_bytes=max_batch_tokens
        * kv_cache_bytes_per_token(base.model.config, dtype_bytes),
    )
