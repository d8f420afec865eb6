"""An adapter's weights prepared in host memory, ready to be copied into a GPU slot.

This is the "host" tier of the adapter cache: reading and checking the PEFT files, mapping
PEFT's tensor names onto the model's wrapped modules and folding the scaling into B all
happen once here, so a slot load is a plain tensor copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from adapter_store import CONFIG_NAME
from adapter_store import WEIGHTS_NAME
from adapter_store import AdapterStoreError
from adapter_store import LoraSpec
from adapter_store import parse_lora_config
from services.engine.exceptions import AdapterLoadError
from services.engine.exceptions import AdapterMismatchError

__all__ = ["HostAdapter"]


class SlotModel(Protocol):
    """What preparing an adapter needs to know of the model whose slots it fills
    (:class:`~services.engine.MultiLoraModel` is one): a Protocol, so this module does
    not import the layers that import it."""

    @property
    def module_shapes(self) -> dict[str, tuple[int, int]]: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def max_rank(self) -> int: ...


# PEFT saves "base_model.model.<module path>.lora_A.weight" (the adapter name removed).
_PEFT_PREFIX = "base_model.model."
_A_SUFFIX = ".lora_A.weight"
_B_SUFFIX = ".lora_B.weight"


@dataclass(frozen=True, slots=True, eq=False)
class HostAdapter:
    """One adapter in host memory: per wrapped module ``(A^T (in, r), scaling * B^T (r, out))``.

    Tensors have the model's dtype and, on CUDA, live in pinned memory so slot loads are
    asynchronous DMA copies. ``size_bytes`` is what the host tier should charge for it.
    """

    key: str
    modules: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    max_rank: int
    size_bytes: int

    @classmethod
    def from_dir(cls, key: str, path: Path, model: SlotModel) -> HostAdapter:
        """Read a PEFT adapter directory and prepare it for ``model``'s slots.

        Raises:
            AdapterLoadError: the files are missing or unreadable.
            AdapterMismatchError: the config is not a LoRA config this engine
                supports, or a module, rank or shape does not fit ``model`` (the message
                names the module and both shapes).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        try:
            config_bytes = (path / CONFIG_NAME).read_bytes()
            tensors = load_file(str(path / WEIGHTS_NAME))
        except (OSError, SafetensorError) as exc:
            raise AdapterLoadError(f"adapter {key}: cannot read {path}: {exc}") from exc
        try:
            spec = parse_lora_config(config_bytes)
        except AdapterStoreError as exc:
            raise AdapterMismatchError(f"adapter {key}: invalid {CONFIG_NAME}: {exc}") from exc
        return cls._prepare(key, tensors, spec, model)

    @classmethod
    def _prepare(
        cls, key: str, tensors: Mapping[str, torch.Tensor], spec: LoraSpec, model: SlotModel
    ) -> HostAdapter:
        """Prepare PEFT-named ``tensors`` with parsed config ``spec`` for ``model``.

        Raises:
            AdapterMismatchError: a module, rank or shape does not fit ``model``.
        """
        pairs = _pair_tensors(key, tensors)
        shapes = model.module_shapes
        modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        pin = model.device.type == "cuda"
        for module_path, (a, b) in sorted(pairs.items()):
            if module_path not in shapes:
                raise AdapterMismatchError(
                    f"adapter {key}: module {module_path!r} is not a LoRA-capable module of "
                    f"the base model (known e.g. {sorted(shapes)[:3]})"
                )
            if not spec.targets(module_path):
                raise AdapterMismatchError(
                    f"adapter {key}: weights for {module_path!r}, which its config does not target"
                )
            in_features, out_features = shapes[module_path]
            rank = spec.rank_for(module_path)
            if tuple(a.shape) != (rank, in_features) or tuple(b.shape) != (out_features, rank):
                raise AdapterMismatchError(
                    f"adapter {key}: {module_path!r} has lora_A {tuple(a.shape)} and lora_B "
                    f"{tuple(b.shape)}; the base model and config need ({rank}, "
                    f"{in_features}) and ({out_features}, {rank})"
                )
            if rank > model.max_rank:
                raise AdapterMismatchError(
                    f"adapter {key}: rank {rank} of {module_path!r} exceeds this engine's "
                    f"max_rank {model.max_rank}"
                )
            scaling = float(spec.scaling_for(module_path))
            a_t = a.to(torch.float32).t().to(model.dtype).contiguous()
            b_t = (b.to(torch.float32) * scaling).t().to(model.dtype).contiguous()
            if pin:
                a_t, b_t = a_t.pin_memory(), b_t.pin_memory()
            modules[module_path] = (a_t, b_t)
        if not modules:
            raise AdapterMismatchError(f"adapter {key}: {WEIGHTS_NAME} holds no LoRA weights")
        return cls(
            key=key,
            modules=modules,
            max_rank=max(a_t.shape[1] for a_t, _ in modules.values()),
            size_bytes=sum(a.nbytes + b.nbytes for a, b in modules.values()),
        )


def _pair_tensors(
    key: str, tensors: Mapping[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Group PEFT tensor names into ``{module path: (lora_A, lora_B)}``.

    Anything else in the file (DoRA magnitudes, trained biases, ``modules_to_save``
    copies, embedding LoRA) changes the model in ways slots cannot express, so it is
    rejected rather than ignored.
    """
    a_weights: dict[str, torch.Tensor] = {}
    b_weights: dict[str, torch.Tensor] = {}
    unsupported = []
    for name, tensor in tensors.items():
        stem = name.removeprefix(_PEFT_PREFIX)
        if stem.endswith(_A_SUFFIX):
            a_weights[stem.removesuffix(_A_SUFFIX)] = tensor
        elif stem.endswith(_B_SUFFIX):
            b_weights[stem.removesuffix(_B_SUFFIX)] = tensor
        else:
            unsupported.append(name)
    if unsupported:
        raise AdapterMismatchError(
            f"adapter {key}: unsupported tensors {sorted(unsupported)[:5]}; only plain LoRA "
            "A/B weights of linear layers are supported (no DoRA, bias, modules_to_save or "
            "embedding LoRA)"
        )
    unpaired = sorted(set(a_weights) ^ set(b_weights))
    if unpaired:
        raise AdapterMismatchError(
            f"adapter {key}: modules with only one of lora_A / lora_B: {unpaired[:5]}"
        )
    return {path: (a_weights[path], b_weights[path]) for path in a_weights}
