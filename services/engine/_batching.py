"""The running batch's KV cache: left-padded rows that join and leave between steps.

Continuous batching with stock transformers models: all active rows share one
``DynamicCache`` whose tensors are ``(rows, kv_heads, columns, head_dim)``. A row of
``n`` tokens occupies the *last* ``n`` columns; the columns before it are padding, masked
out by a 2D attention mask, and every row gets explicit ``position_ids`` (its own token
count), so padding changes neither attention nor rotary positions. Each decode step is
one forward pass over all rows with their adapter slots.

Rows join by :meth:`KvBatch.merge` (both sides re-padded on the left to a common width)
and leave by :meth:`KvBatch.select`, which also drops leading columns that only padding
still uses. Padded columns hold zeros, so masked attention weights (exactly 0) never meet
NaN values. Prefill batches several prompts the same way.

Cost: a merge copies the whole cache once; a step appends one column (transformers'
``DynamicLayer`` concatenates). Models with sliding-window or linear-attention layers
are not supported by this padding scheme; full-attention decoders (Llama, Mistral without
sliding window, Qwen2, GPT-2, ...) are.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from services.engine._lora_layers import MultiLoraModel

__all__ = ["KvBatch"]


class KvBatch:
    """The KV cache, attention mask and token counts of a set of rows (batch order).

    Not thread-safe; the engine uses it from its one model thread.
    """

    def __init__(
        self, model: MultiLoraModel, cache, mask: torch.Tensor, lengths: list[int]
    ) -> None:
        self._model = model
        self._cache = cache  # transformers.DynamicCache, grown in place by each step
        self._mask = mask
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def columns(self) -> int:
        """The padded width: the longest row's token count."""
        return self._mask.shape[1]

    @classmethod
    def prefill(
        cls, model: MultiLoraModel, prompts: Sequence[Sequence[int]], slot_ids: Sequence[int]
    ) -> tuple[KvBatch, torch.Tensor]:
        """Run the prompts (left-padded into one batch); return their rows and the
        last-position logits ``(len(prompts), vocab)``."""
        device = model.device
        width = max(len(p) for p in prompts)
        input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(list(prompt))
            mask[row, width - len(prompt) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _new_cache(model)
        out = model.forward(
            input_ids,
            slot_ids,
            attention_mask=mask,
            position_ids=position_ids,
            **_cache_kwarg(model, cache),
            use_cache=True,
            logits_to_keep=1,
        )
        # Zero the padding columns: the padded queries attended to nothing, and their
        # keys/values must not carry NaN into later masked (0-weight) attention.
        keep = mask[:, None, :, None]
        for layer in cache.layers:
            layer.keys = layer.keys * keep
            layer.values = layer.values * keep
        return cls(model, cache, mask, [len(p) for p in prompts]), out.logits[:, -1, :]

    def merge(self, other: KvBatch) -> None:
        """Append ``other``'s rows after this batch's rows (``other`` is consumed)."""
        width = max(self.columns, other.columns)
        for layer, joining in zip(self._cache.layers, other._cache.layers, strict=True):
            layer.keys = torch.cat([_pad_left(layer.keys, width), _pad_left(joining.keys, width)])
            layer.values = torch.cat(
                [_pad_left(layer.values, width), _pad_left(joining.values, width)]
            )
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(other._mask, width)])
        self.lengths = self.lengths + other.lengths

    def select(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order) and drop columns no kept row uses."""
        lengths = [self.lengths[r] for r in rows]
        start = self.columns - max(lengths, default=0)
        index = torch.tensor(list(rows), dtype=torch.long, device=self._mask.device)
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self._mask = self._mask.index_select(0, index)[:, start:]
        self.lengths = lengths

    def decode(self, tokens: Sequence[int], slot_ids: Sequence[int]) -> torch.Tensor:
        """Feed one token per row; return next-token logits ``(rows, vocab)``."""
        device = self._mask.device
        mask = torch.cat([self._mask, torch.ones(len(self), 1, dtype=torch.long, device=device)], 1)
        out = self._model.forward(
            torch.tensor(list(tokens), dtype=torch.long, device=device)[:, None],
            slot_ids,
            attention_mask=mask,
            position_ids=torch.tensor(self.lengths, dtype=torch.long, device=device)[:, None],
            **_cache_kwarg(self._model, self._cache),
            use_cache=True,
        )
        self._mask = mask
        self.lengths = [n + 1 for n in self.lengths]
        return out.logits[:, -1, :]


@functools.cache
def _cache_parameter(model_class: type) -> str:
    """The name under which ``model_class.forward`` takes the KV cache: transformers 5.2x
    calls it ``cache``, earlier releases ``past_key_values`` (an unknown keyword is
    swallowed by ``**kwargs``, so passing the wrong one would silently drop the cache)."""
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _cache_kwarg(model: MultiLoraModel, cache: object) -> dict[str, object]:
    return {_cache_parameter(type(model.model)): cache}


def _new_cache(model: MultiLoraModel):  # -> transformers.DynamicCache
    from transformers import DynamicCache

    return DynamicCache(config=model.model.config)


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad dimension 2 (KV columns) or 1 (mask columns) on the left up to ``width``."""
    column_dim = 2 if tensor.dim() == 4 else 1
    missing = width - tensor.shape[column_dim]
    if missing == 0:
        return tensor
    # F.pad lists (left, right) pairs from the last dimension backwards.
    pad = [0, 0] * (tensor.dim() - 1 - column_dim) + [missing, 0]
    return F.pad(tensor, pad)
