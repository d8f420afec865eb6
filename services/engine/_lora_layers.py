"""Multi-LoRA layers: one forward pass serves rows that use different adapters, or none.

Every eligible ``nn.Linear`` / GPT-2 ``Conv1D`` of the base model (all but the output
layer, as PEFT's ``all-linear``; bitsandbytes' quantized ``Linear4bit`` and
``Linear8bitLt`` are ``nn.Linear`` subclasses and are wrapped the same way) is wrapped
at start-up by a :class:`LoraSlotLayer` that owns preallocated slot tensors::

    lora_a: (max_slots + 1, in_features, max_rank)     # A transposed, per slot
    lora_b: (max_slots + 1, max_rank, out_features)    # B transposed, scaling folded in

The extra last slot stays all zero: rows without an adapter use slot ``-1``
(:data:`NO_ADAPTER_SLOT`), which Python-style negative indexing maps onto it, so "no
adapter" needs no special case in the batched math.

The forward pass is BGMV-style: gather each row's A and B by its slot index, then two
batched matmuls (shrink ``x @ A`` to rank r, expand ``@ B`` back), with no Python loop over
rows. Per-row slot indices reach the layers through a routing object that
:meth:`MultiLoraModel.forward` sets before calling the transformers model (as vLLM's punica
wrapper metadata), so transformers' internals are untouched.

Trade-off: ranks are zero-padded to ``max_rank`` inside the slots, so a rank-8 row costs
as much compute as a rank-64 row. That keeps one dense batched matmul for a batch of mixed
ranks (the padding contributes exact zeros), and LoRA math is small next to the base
model's matmuls. A module the adapter does not target has zero rows in its slot, and a
layer whose slots used by the batch are all empty skips the LoRA math altogether.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal

import torch
from torch import nn

from services.engine.exceptions import AdapterMismatchError

if TYPE_CHECKING:
    from services.engine._host_adapter import HostAdapter

__all__ = ["NO_ADAPTER_SLOT", "LoraSlotLayer", "MultiLoraModel"]

NO_ADAPTER_SLOT = -1


def _conv1d_type() -> type[nn.Module] | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a server dependency
        return None
    return Conv1D


def _compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype activations flow in: the first floating-point parameter's (quantized
    weights are integers)."""
    return next(p.dtype for p in model.parameters() if p.dtype.is_floating_point)


class _SlotRouting:
    """The per-row slot indices of the forward pass in progress, shared by all layers.

    ``active_slots`` is the set of slots the batch uses, computed once per forward pass
    on the host, so a layer that holds no weights for any of them (a batch without
    adapters, or adapters that do not target this module) skips the LoRA math without a
    device sync.
    """

    __slots__ = ("active_slots", "slot_ids")

    def __init__(self) -> None:
        self.slot_ids: torch.Tensor | None = None
        self.active_slots: frozenset[int] = frozenset()


class LoraSlotLayer(nn.Module):
    """A linear layer plus per-slot LoRA deltas selected per batch row.

    ``y = base(x) + (x @ A[slot]) @ B[slot]`` for each row, where ``B`` already includes
    the adapter's scaling (``alpha / r`` or ``alpha / sqrt(r)``). Works for ``nn.Linear``
    and for GPT-2's ``Conv1D`` (weights stored transposed; the LoRA delta is the same).

    The slots hold ``dtype`` (the model's compute dtype): for a quantized base layer
    (QLoRA) the base's own forward dequantizes, and the delta is computed in ``dtype``
    from the input cast to it and added in the base output's dtype, as PEFT does.
    """

    def __init__(
        self,
        base: nn.Module,
        *,
        max_slots: int,
        max_rank: int,
        routing: _SlotRouting,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.base = base
        if isinstance(base, nn.Linear):
            self.in_features, self.out_features = base.in_features, base.out_features
        else:  # Conv1D keeps its weight as (in, out)
            self.in_features, self.out_features = base.weight.shape
        self._routing = routing
        # Rank held by each loaded slot; the keys tell forward() which slots have weights
        # here (a host-side check, free), the ranks let loads zero only what was used.
        self._slot_ranks: dict[int, int] = {}
        device = base.weight.device
        # Not persistent: adapter weights are never part of the base model's state dict.
        self.register_buffer(
            "lora_a",
            torch.zeros(max_slots + 1, self.in_features, max_rank, dtype=dtype, device=device),
            persistent=False,
        )
        self.register_buffer(
            "lora_b",
            torch.zeros(max_slots + 1, max_rank, self.out_features, dtype=dtype, device=device),
            persistent=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        routing = self._routing
        if routing.active_slots.isdisjoint(self._slot_ranks):
            return out
        slot_ids = routing.slot_ids
        batch = x.shape[0]
        lora_a = self.lora_a[slot_ids]
        shrink = torch.bmm(x.reshape(batch, -1, self.in_features).to(lora_a.dtype), lora_a)
        delta = torch.bmm(shrink, self.lora_b[slot_ids])
        return out + delta.view(out.shape).to(out.dtype)

    def load(self, slot: int, a_t: torch.Tensor, b_t: torch.Tensor) -> None:
        """Copy one adapter module (``a_t``: (in, r), ``b_t``: (r, out)) into ``slot``.

        Only the ranks the previous occupant used beyond ``r`` are zeroed: the rest of the
        padding is still zero, so a load costs the adapter's size, not ``max_rank``'s.
        """
        rank = a_t.shape[1]
        previous = self._slot_ranks.get(slot, 0)
        self.lora_a[slot, :, :rank].copy_(a_t, non_blocking=True)
        self.lora_b[slot, :rank].copy_(b_t, non_blocking=True)
        if previous > rank:
            self.lora_a[slot, :, rank:previous].zero_()
            self.lora_b[slot, rank:previous].zero_()
        self._slot_ranks[slot] = rank

    def clear(self, slot: int) -> None:
        """Zero ``slot`` so it adds nothing."""
        previous = self._slot_ranks.pop(slot, 0)
        if previous:
            self.lora_a[slot, :, :previous].zero_()
            self.lora_b[slot, :previous].zero_()


class MultiLoraModel:
    """A transformers causal LM whose linear layers serve many adapters at once.

    ``max_slots`` adapters can be resident at the same time (slot ``0 .. max_slots - 1``);
    :meth:`load_slot` and :meth:`clear_slot` fill and empty them and may run on a worker
    thread while forward passes run, as long as no row of a running forward pass uses that
    slot (the adapter cache's pinning guarantees this). Forward passes themselves must be
    serialized by the caller (the engine runs them on one thread).

    ``target_modules`` chooses what to wrap: ``"all-linear"`` (every ``nn.Linear`` and
    ``Conv1D`` except the output layer) or a list of module names matched like PEFT's
    list form (the full path or its last components, e.g. ``"q_proj"``). Adapters that
    target anything else are rejected with :class:`AdapterMismatchError`.

    Slots hold the model's compute dtype (``model.dtype``: the first floating-point
    parameter's), also when its linear weights are quantized.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        max_slots: int,
        max_rank: int = 64,
        target_modules: Literal["all-linear"] | Sequence[str] = "all-linear",
    ) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        self.model = model
        self.max_slots = max_slots
        self.max_rank = max_rank
        self._routing = _SlotRouting()
        self.layers: dict[str, LoraSlotLayer] = {}
        dtype = _compute_dtype(model)
        for path, module in self._eligible_modules(model, target_modules):
            layer = LoraSlotLayer(
                module, max_slots=max_slots, max_rank=max_rank, routing=self._routing, dtype=dtype
            )
            parent_path, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent_path), attr, layer)
            self.layers[path] = layer
        if not self.layers:
            raise ValueError(f"no module of the model matches target_modules={target_modules!r}")
        first = next(iter(self.layers.values())).lora_a
        self.device, self.dtype = first.device, first.dtype

    @staticmethod
    def _eligible_modules(
        model: nn.Module, target_modules: Literal["all-linear"] | Sequence[str]
    ) -> list[tuple[str, nn.Module]]:
        conv1d = _conv1d_type()
        kinds = (nn.Linear,) if conv1d is None else (nn.Linear, conv1d)
        output_layer = (
            model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        )
        if isinstance(target_modules, str) and target_modules != "all-linear":
            raise ValueError(
                f"target_modules must be 'all-linear' or a list of module names, "
                f"got {target_modules!r}"
            )
        names = None if isinstance(target_modules, str) else list(target_modules)
        eligible = []
        for path, module in model.named_modules():
            if not isinstance(module, kinds) or module is output_layer:
                continue
            if names is None or any(path == n or path.endswith("." + n) for n in names):
                eligible.append((path, module))
        return eligible

    @property
    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """``{module path: (in_features, out_features)}`` of every wrapped module."""
        return {path: (lay.in_features, lay.out_features) for path, lay in self.layers.items()}

    def _check_slot(self, slot: int) -> None:
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < self.max_slots:
            raise ValueError(f"slot must be an integer in [0, {self.max_slots}), got {slot!r}")

    def load_slot(self, slot: int, adapter: HostAdapter) -> None:
        """Copy ``adapter`` into ``slot`` (ranks zero-padded to ``max_rank``); blocking.

        Raises:
            ValueError: ``slot`` is out of range.
            AdapterMismatchError: the adapter names a module this model did not wrap
                or its rank exceeds ``max_rank`` (it was prepared for another model).
        """
        self._check_slot(slot)
        unknown = sorted(set(adapter.modules) - set(self.layers))
        if unknown:
            raise AdapterMismatchError(
                f"adapter {adapter.key} has modules this model does not wrap: {unknown[:5]}"
            )
        if adapter.max_rank > self.max_rank:
            raise AdapterMismatchError(
                f"adapter {adapter.key} has rank {adapter.max_rank} > max_rank {self.max_rank}"
            )
        with torch.no_grad():
            for path, layer in self.layers.items():
                weights = adapter.modules.get(path)
                if weights is None:
                    layer.clear(slot)
                else:
                    layer.load(slot, *weights)
            if self.device.type == "cuda":
                # The copies were issued non-blocking from pinned memory; the slot must be
                # complete before the caller reports it loaded.
                torch.cuda.current_stream(self.device).synchronize()

    def clear_slot(self, slot: int) -> None:
        """Zero ``slot``; a row still pointing at it would get the base model's output.

        Raises:
            ValueError: ``slot`` is out of range.
        """
        self._check_slot(slot)
        with torch.no_grad():
            for layer in self.layers.values():
                layer.clear(slot)

    def forward(self, input_ids: torch.Tensor, slot_ids: Sequence[int], **kwargs: Any) -> Any:
        """Run the wrapped model on ``input_ids`` with row ``i`` using ``slot_ids[i]``.

        ``slot_ids`` holds one slot per batch row, :data:`NO_ADAPTER_SLOT` for none;
        ``kwargs`` go to the transformers model unchanged (attention mask, position ids,
        cache). Not thread-safe: one forward pass at a time.
        """
        if len(slot_ids) != input_ids.shape[0]:
            raise ValueError(
                f"got {len(slot_ids)} slot ids for a batch of {input_ids.shape[0]} rows"
            )
        bad = [s for s in slot_ids if not NO_ADAPTER_SLOT <= s < self.max_slots]
        if bad:
            raise ValueError(f"slot ids out of range [-1, {self.max_slots}): {bad[:5]}")
        routing = self._routing
        routing.active_slots = frozenset(slot_ids)
        routing.slot_ids = torch.tensor(list(slot_ids), dtype=torch.long, device=self.device)
        try:
            with torch.inference_mode():
                return self.model(input_ids=input_ids, **kwargs)
        finally:
            routing.slot_ids = None
            routing.active_slots = frozenset()
