"""Base model manifests: the linear modules of a base model and their shapes.

A manifest is registered once per base model id and is what adapters are checked
against: every LoRA module must exist in it with matching ``in_features`` and
``out_features``. Module paths are the names from ``model.named_modules()`` of the
model class PEFT wrapped (``LlamaForCausalLM`` gives ``model.layers.0.self_attn.q_proj``);
PEFT saves that module's weights as ``base_model.model.<path>.lora_A.weight``.

Policy for ``all-linear``: the manifest lists every ``nn.Linear`` and transformers
``Conv1D``, the output head included (a config may target ``lm_head`` by name), and
records the head as :attr:`BaseModelManifest.output_module` so that
:meth:`BaseModelManifest.modules_targeted_by` leaves it out of ``all-linear`` exactly as
PEFT does.

Quantization: a manifest also records how the base's weights are held (``"none"``,
``"nf4"``, ``"int8"``, ...). It is information, not identity for adapters: a quantized
layer keeps its ``in_features`` / ``out_features``, so an adapter trained on the 16-bit
base fits its 4-bit twin and is checked against the same modules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from types import MappingProxyType
from typing import TYPE_CHECKING
from typing import Any

from adapter_store._identity import validate_base_model_id
from adapter_store.exceptions import InvalidManifestError

if TYPE_CHECKING:
    import torch

    from adapter_store._peft_config import LoraSpec

__all__ = ["BaseModelManifest", "manifest_from_model"]


_NO_QUANTIZATION = "none"
_MAX_QUANTIZATION_LEN = 32


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class BaseModelManifest:
    """Module path -> ``(in_features, out_features)`` for one base model id, and the
    quantization its weights are held in.

    Raises:
        InvalidNameError: on construction, when ``base_model`` is not a valid model id.
        InvalidManifestError: on construction, when a module name is empty, a shape is
            not two integers >= 1, ``output_module`` is not one of ``modules``, or
            ``quantization`` is not a short lower-case word.
    """

    base_model: str
    modules: Mapping[str, tuple[int, int]]
    output_module: str | None = None
    quantization: str = _NO_QUANTIZATION
    _sorted: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_base_model_id(self.base_model)
        modules: dict[str, tuple[int, int]] = {}
        for name, shape in dict(self.modules).items():
            if not isinstance(name, str) or not name:
                raise InvalidManifestError(
                    f"manifest for {self.base_model!r} has an empty module name; "
                    "rebuild it with manifest_from_model"
                )
            if (
                not isinstance(shape, list | tuple)
                or len(shape) != 2
                or not all(map(_is_size, shape))
            ):
                raise InvalidManifestError(
                    f"manifest for {self.base_model!r}: module {name!r} has shape {shape!r}, "
                    "not [in_features, out_features]; rebuild it with manifest_from_model"
                )
            modules[name] = (shape[0], shape[1])
        if self.output_module is not None and self.output_module not in modules:
            raise InvalidManifestError(
                f"manifest for {self.base_model!r}: output_module {self.output_module!r} "
                "is not one of its modules; rebuild it with manifest_from_model"
            )
        quantization = self.quantization
        if (
            not isinstance(quantization, str)
            or not 0 < len(quantization) <= _MAX_QUANTIZATION_LEN
            or not all(c.isascii() and (c.isalnum() or c in "-_") for c in quantization)
            or quantization != quantization.lower()
        ):
            raise InvalidManifestError(
                f"manifest for {self.base_model!r}: quantization {quantization!r} is not a "
                f"lower-case word of at most {_MAX_QUANTIZATION_LEN} characters "
                "(e.g. 'none', 'nf4', 'int8')"
            )
        object.__setattr__(self, "modules", MappingProxyType(modules))
        object.__setattr__(self, "_sorted", tuple(sorted(modules)))

    def modules_targeted_by(self, spec: LoraSpec) -> tuple[str, ...]:
        """The modules PEFT would put LoRA layers on for ``spec``, sorted by path."""
        return tuple(
            name
            for name in self._sorted
            if spec.targets(name) and not (spec.targets_all_linear and name == self.output_module)
        )

    def to_json(self) -> str:
        """Stable JSON (sorted keys): equal manifests serialize to equal strings."""
        return json.dumps(
            {
                "base_model": self.base_model,
                "modules": {name: list(self.modules[name]) for name in self._sorted},
                "output_module": self.output_module,
                "quantization": self.quantization,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> BaseModelManifest:
        """Inverse of :meth:`to_json`.

        A manifest written before quantization was recorded reads as ``"none"``.

        Raises:
            InvalidManifestError: the text is not a manifest.
            InvalidNameError: its base model id is not valid.
        """
        try:
            data: Any = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise InvalidManifestError(f"manifest is not valid JSON ({e})") from e
        if not isinstance(data, dict) or not isinstance(data.get("modules"), dict):
            raise InvalidManifestError(
                "manifest JSON must be an object with 'base_model' and a 'modules' object"
            )
        return cls(
            data.get("base_model"),
            data["modules"],
            data.get("output_module"),
            data.get("quantization", _NO_QUANTIZATION),
        )


def manifest_from_model(
    base_model: str, model: torch.nn.Module, *, quantization: str = _NO_QUANTIZATION
) -> BaseModelManifest:
    """Build the manifest of ``model``: every ``nn.Linear`` and transformers ``Conv1D``.

    Pass the same class the adapters were trained on (``...ForCausalLM``), since its
    module paths are the ones PEFT saves. ``Conv1D`` stores its weight as
    ``(in_features, out_features)``; ``nn.Linear`` as ``(out_features, in_features)``.
    bitsandbytes' ``Linear4bit`` / ``Linear8bitLt`` are ``nn.Linear`` subclasses whose
    ``in_features`` / ``out_features`` are the unquantized shape, so a quantized model
    gives the same modules as its 16-bit twin; ``quantization`` says how it is held.
    """
    import torch

    conv1d: tuple[type, ...] = ()
    try:
        from transformers.pytorch_utils import Conv1D

        conv1d = (Conv1D,)
    except ImportError:  # transformers is optional: without it there is no Conv1D
        pass
    modules: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            modules[name] = (module.in_features, module.out_features)
        elif conv1d and isinstance(module, conv1d):
            in_features, out_features = module.weight.shape
            modules[name] = (int(in_features), int(out_features))
    output_module = None
    get_output = getattr(model, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    if head is not None:
        output_module = next((n for n, m in model.named_modules() if m is head), None)
        if output_module not in modules:
            output_module = None
    return BaseModelManifest(base_model, modules, output_module, quantization)
