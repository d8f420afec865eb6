"""Quantized base models: which quantizations load, how, and how many bytes they hold.

Policy: ``quantize`` is ``"none"``, ``"nf4"`` or ``"int8"`` (bitsandbytes through
transformers' ``BitsAndBytesConfig``; NF4 as QLoRA trains it). A checkpoint that is
already quantized (``quantization_config`` in its ``config.json``) loads as it is:
bitsandbytes ones with ``quantize`` ``"none"`` or their own kind; AWQ, GPTQ and the
other methods are refused, because the engine's LoRA layers wrap ``nn.Linear`` and
bitsandbytes' ``Linear4bit`` / ``Linear8bitLt`` only. Every refusal happens before any
weight is read, with a message naming the combination and what to do instead.
Adapters stay in the compute dtype whatever the base holds. That is the ``hf``
engine's rule (:func:`plan_quantization`); the ``vllm`` engine's is
:func:`plan_vllm_quantization`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Final
from typing import Literal
from typing import get_args

from services.engine.exceptions import BaseModelLoadError

__all__ = [
    "QUANTIZATIONS",
    "Quantization",
    "QuantizationPlan",
    "VllmQuantization",
    "plan_quantization",
    "plan_vllm_quantization",
]

Quantization = Literal["none", "nf4", "int8"]
QUANTIZATIONS: Final[tuple[str, ...]] = get_args(Quantization)

# quant_method values of checkpoints the engine refuses, with what serves them instead.
_OTHER_METHODS: Final[dict[str, str]] = {
    "awq": "AWQ",
    "gptq": "GPTQ",
}


@dataclass(frozen=True, slots=True)
class QuantizationPlan:
    """How a base model is loaded: ``label`` is what manifests and stats show.

    ``label`` is ``"none"``, ``"nf4"``, ``"int8"`` or, for a pre-quantized bitsandbytes
    checkpoint, its own kind (``"nf4"``, ``"fp4"``, ``"int8"``). ``from_checkpoint`` says
    the checkpoint was saved quantized (it loads as it is, no config is passed).
    """

    label: str
    from_checkpoint: bool = False

    @property
    def quantized(self) -> bool:
        return self.label != "none"

    def load_kwargs(self, compute_dtype: Any) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments: the ``BitsAndBytesConfig`` to apply, if any."""
        if self.label == "int8":
            _silence_int8_cast_warning()
        if not self.quantized or self.from_checkpoint:
            return {}
        from transformers import BitsAndBytesConfig

        if self.label == "int8":
            return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=compute_dtype,
            )
        }


class _DropInt8CastWarning(logging.Filter):
    """bitsandbytes logs "inputs will be cast ... to float16" on every int8 matmul whose
    input is not fp16 (every layer, every step in bf16 or fp32): expected, and a flood."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def _silence_int8_cast_warning() -> None:
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastWarning) for f in bnb_logger.filters):
        bnb_logger.addFilter(_DropInt8CastWarning())


def _saved_quantization(config: dict[str, Any]) -> tuple[str, str] | None:
    """``(method, label)`` of a checkpoint saved quantized, None if it is not: the
    method as its ``quant_method`` names it, the label as manifests show it (a
    bitsandbytes checkpoint's kind, ``"nf4"``, ``"fp4"`` or ``"int8"``; else the method)."""
    spec = config.get("quantization_config")
    if not spec:
        return None
    method = str(spec.get("quant_method", "")).lower() if isinstance(spec, dict) else ""
    if method == "bitsandbytes":
        if spec.get("load_in_8bit"):
            return method, "int8"
        if spec.get("load_in_4bit"):
            return method, str(spec.get("bnb_4bit_quant_type", "fp4"))
    return method or repr(spec), method or "unknown"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BaseModelLoadError(f"cannot read {path}/config.json: {exc}") from exc


def _checkpoint_quantization(config: dict[str, Any], path: Path) -> str | None:
    """The kind a checkpoint was saved in (``"nf4"``, ``"fp4"``, ``"int8"``), None if
    unquantized.

    Raises:
        BaseModelLoadError: a quantization method other than bitsandbytes.
    """
    saved = _saved_quantization(config)
    if saved is None or saved[0] == "bitsandbytes":
        return saved[1] if saved is not None else None
    name = _OTHER_METHODS.get(saved[0], repr(saved[0]))
    raise BaseModelLoadError(
        f"base model {path} is a {name} checkpoint; the hf engine's LoRA layers wrap "
        "plain and bitsandbytes linear layers only, so it cannot put adapters on it. "
        "Serve it with engine 'vllm', or the unquantized checkpoint with --quantize nf4 "
        "or int8"
    )


def _refuse_requantizing(path: Path, saved: str, quantize: str) -> None:
    if quantize not in ("none", saved):
        raise BaseModelLoadError(
            f"base model {path} is already quantized as {saved}; it cannot be quantized "
            f"again as {quantize}: pass quantize 'none' (or {saved!r}) to load it as it is"
        )


def _check_choice(quantize: str) -> None:
    if quantize not in QUANTIZATIONS:
        raise BaseModelLoadError(
            f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}"
        )


@dataclass(frozen=True, slots=True)
class VllmQuantization:
    """How the ``vllm`` engine loads a base: ``label`` as manifests show it, ``method``
    the ``quantization`` engine argument (None: vLLM reads the checkpoint's own)."""

    label: str
    method: str | None = None


def plan_vllm_quantization(
    path: Path, quantize: str, *, methods: Sequence[str], cuda: bool
) -> VllmQuantization:
    """Check ``quantize`` for the ``vllm`` engine, before vLLM starts.

    Policy: a checkpoint saved quantized (AWQ, GPTQ, bitsandbytes, compressed-tensors,
    ...) loads as it is, with ``quantize`` ``"none"`` or its own kind; vLLM says at
    start-up whether it runs that method on this device. ``nf4`` is vLLM's in-flight
    bitsandbytes 4-bit quantization, on a CUDA GPU with a vLLM that has the method
    (``methods``: vLLM's ``QUANTIZATION_METHODS``). ``int8`` has no in-flight
    counterpart for dense layers in vLLM and is refused, as is ``nf4`` elsewhere.

    Raises:
        BaseModelLoadError: the combination cannot run; the message names the engine,
            the quantization and what runs instead.
    """
    _check_choice(quantize)
    saved = _saved_quantization(_read_config(path))
    if saved is not None:
        _refuse_requantizing(path, saved[1], quantize)
        return VllmQuantization(saved[1])
    if quantize == "none":
        return VllmQuantization("none")
    if quantize == "nf4" and cuda and "bitsandbytes" in methods:
        return VllmQuantization("nf4", "bitsandbytes")
    if quantize == "nf4":
        where = "in this vLLM build" if cuda else "on a CUDA GPU"
        reason = f"needs vLLM's bitsandbytes method {where}"
    else:
        reason = "has no counterpart in vLLM (no in-flight int8 for dense layers)"
    raise BaseModelLoadError(
        f"quantize {quantize!r} on engine 'vllm' {reason}: choose engine 'hf' (NF4 and "
        "int8 on CPU and GPU), or serve a checkpoint saved quantized (AWQ, GPTQ, "
        "compressed-tensors) with quantize 'none'"
    )


def plan_quantization(path: Path, quantize: str) -> QuantizationPlan:
    """Check ``quantize`` against the checkpoint in ``path``, before any weight is read.

    Raises:
        BaseModelLoadError: ``quantize`` is not one of :data:`QUANTIZATIONS`; the
            checkpoint is AWQ/GPTQ or another method; it is a bitsandbytes checkpoint of
            another kind than ``quantize``; or bitsandbytes is not installed. The message
            says which and what to do.
    """
    _check_choice(quantize)
    saved = _checkpoint_quantization(_read_config(path), Path(path))
    if saved is not None:
        _refuse_requantizing(path, saved, quantize)
    plan = QuantizationPlan(saved or quantize, from_checkpoint=saved is not None)
    if plan.quantized and importlib.util.find_spec("bitsandbytes") is None:
        raise BaseModelLoadError(
            f"quantization {plan.label} needs the bitsandbytes package, which is not "
            "installed: pip install 'loramux[server]' (or bitsandbytes), or use quantize 'none'"
        )
    return plan


def base_model_bytes(model: Any) -> tuple[int, int]:
    """``(held, full_precision)``: bytes the model's weights hold, and what they would
    hold unquantized in the compute dtype (one full fine-tuned copy).

    ``held`` counts parameters and buffers once each (tied weights share storage) plus
    bitsandbytes' side tensors (NF4 block scales, int8 row scales), which are neither.
    Call it before the LoRA layers are added: their slots are buffers too.
    """
    import torch

    compute_bytes = torch.finfo(model.dtype).bits // 8
    held, full = 0, 0
    seen: set[int] = set()

    def count(tensor: torch.Tensor | None) -> int:
        if tensor is None or tensor.data_ptr() in seen:
            return 0
        seen.add(tensor.data_ptr())
        return tensor.numel() * tensor.element_size()

    for module in model.modules():
        for param in module.parameters(recurse=False):
            size = count(param)
            if size:  # a tied weight counts once
                held += size
                full += _logical_numel(module, param) * compute_bytes
            held += sum(count(t) for t in _quantization_side_tensors(module, param))
        held += sum(count(buffer) for buffer in module.buffers(recurse=False))
    return held, full


def _logical_numel(module: Any, param: Any) -> int:
    """The element count ``param`` stands for: a packed quantized weight counts its
    layer's ``in_features * out_features``."""
    import torch

    if param.dtype.is_floating_point or not isinstance(module, torch.nn.Linear):
        return param.numel()
    if param is module.weight:
        return module.in_features * module.out_features
    return param.numel()


def _quantization_side_tensors(module: Any, param: Any) -> list[Any]:
    """bitsandbytes' scales of ``param``: NF4's per-block ``absmax`` (and the nested
    state of double quantization), int8's per-row ``SCB``."""
    tensors = []
    quant_state = getattr(param, "quant_state", None)
    while quant_state is not None:
        tensors += [quant_state.absmax, quant_state.code]
        quant_state = getattr(quant_state, "state2", None)
    tensors.append(getattr(param, "SCB", None))
    state = getattr(module, "state", None)
    if param is getattr(module, "weight", None) and state is not None:
        tensors.append(getattr(state, "SCB", None))
    return tensors
