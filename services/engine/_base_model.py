"""Loading the base model: any Hugging Face causal LM directory, or the built-in ``tiny``.

Device policy: CUDA when present, in bf16 (fp16 on GPUs without bf16), else CPU in fp32.
That dtype is the compute dtype; with ``quantize`` (see
:mod:`services.engine._quantization`) the linear weights are held in NF4 or int8 under it.
The argument is a built-in name, a local directory, or a hub id (downloaded once).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapter_store import BaseModelManifest
from adapter_store import manifest_from_model
from services.engine._hub import hub_model_dir
from services.engine._hub import is_hub_id
from services.engine._quantization import base_model_bytes
from services.engine._quantization import plan_quantization
from services.engine._tiny import BUILTIN_MODELS
from services.engine._tiny import builtin_model_dir
from services.engine.exceptions import BaseModelLoadError

__all__ = [
    "BaseModel",
    "chat_prompt",
    "default_models_dir",
    "load_base_model",
    "resolve_base_model",
]


def default_models_dir() -> Path:
    """Where built-in models are written: ``$LORAMUX_MODELS_DIR`` or ``~/.cache/loramux/models``."""
    configured = os.environ.get("LORAMUX_MODELS_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "loramux" / "models"


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _default_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass(frozen=True, eq=False)
class BaseModel:
    """A loaded causal LM with its tokenizer and the manifest adapters are checked against.

    ``manifest`` is taken before any LoRA wrapping, so its module paths are the ones PEFT
    saves; it records ``quantization`` too. ``eos_token_ids`` merges the tokenizer's and
    the generation config's. ``weight_bytes`` is what the loaded weights hold (quantized
    or not), ``full_precision_bytes`` what they would hold unquantized in the compute
    dtype: the size of one full fine-tuned copy.
    """

    name: str
    path: Path
    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    manifest: BaseModelManifest
    eos_token_ids: frozenset[int]
    max_context: int
    quantization: str
    weight_bytes: int
    full_precision_bytes: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (quantized weights are not floating point)."""
        return self.model.dtype


def resolve_base_model(name_or_path: str | Path, models_dir: Path | None = None) -> Path:
    """The directory of a built-in model (``tiny``, ``tiny-en``), a local directory, or a
    Hugging Face Hub id (``org/name``, downloaded once into ``models_dir/hub``).

    Raises:
        BaseModelLoadError: none of the three, or a hub id that cannot be downloaded.
    """
    builtin = builtin_model_dir(name_or_path, models_dir or default_models_dir())
    if builtin is not None:
        return builtin
    if is_hub_id(str(name_or_path)):
        return hub_model_dir(str(name_or_path), models_dir or default_models_dir())
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise BaseModelLoadError(
            f"base model {str(name_or_path)!r} is neither a built-in model "
            f"({', '.join(BUILTIN_MODELS)}), a Hugging Face model directory with "
            "config.json, nor a hub id (org/name)"
        )
    return path


def load_base_model(
    name_or_path: str | Path,
    *,
    models_dir: Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    name: str | None = None,
    quantize: str = "none",
) -> BaseModel:
    """Load ``"tiny"`` (built into ``models_dir`` on first use) or a local HF directory.

    ``name`` is the base model id used in manifests and adapter records; it defaults to
    ``"tiny"`` or the directory name. ``quantize`` is ``"none"``, ``"nf4"`` or ``"int8"``;
    a checkpoint saved quantized by bitsandbytes loads as it is.

    Raises:
        BaseModelLoadError: the directory is missing, lacks ``config.json`` or a
            tokenizer, transformers cannot load it, the model has attention layers
            other than full attention, or the quantization is refused (see
            :func:`plan_quantization`); the message says which.
    """
    from transformers import AutoConfig
    from transformers import AutoModelForCausalLM
    from transformers import AutoTokenizer

    path = resolve_base_model(name_or_path, models_dir)
    model_id = name or (str(name_or_path) if str(name_or_path) in BUILTIN_MODELS else path.name)
    target_device = torch.device(device) if device is not None else _default_device()
    target_dtype = dtype or _default_dtype(target_device)
    plan = plan_quantization(path, quantize)
    # A quantized model is placed while it loads (bitsandbytes quantizes on the target
    # device) and cannot be moved afterwards.
    placement = {"device_map": {"": target_device}} if plan.quantized else {}
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        # Checked before the weights are read: a refused model costs no load time.
        _check_full_attention(config, path)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(path),
            config=config,
            dtype=target_dtype,
            local_files_only=True,
            **placement,
            **plan.load_kwargs(target_dtype),
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise BaseModelLoadError(f"cannot load base model from {path}: {exc}") from exc
    if not plan.quantized:
        model = model.to(target_device)
    model = model.eval()
    weight_bytes, full_precision_bytes = base_model_bytes(model)
    config = model.config
    max_context = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", 2048
    )
    return BaseModel(
        name=model_id,
        path=path,
        model=model,
        tokenizer=tokenizer,
        manifest=manifest_from_model(model_id, model, quantization=plan.label),
        eos_token_ids=_eos_token_ids(tokenizer, getattr(model, "generation_config", None)),
        max_context=int(max_context),
        quantization=plan.label,
        weight_bytes=weight_bytes,
        full_precision_bytes=full_precision_bytes,
    )


def _check_full_attention(config: Any, path: Path) -> None:
    """Refuse models whose KV cache is not one full-attention layer per decoder layer.

    The engine's ``KvBatch`` left-pads rows in a ``DynamicCache`` built from the config
    with a full-width attention mask. For sliding-window or chunked layers (Mistral with
    ``sliding_window``, Gemma2/3, Phi-3) that cache crops old columns and the mask no
    longer lines up, so such a model would load and then answer wrongly. The layer
    types are read the way ``DynamicCache`` reads them: an explicit ``layer_types`` wins
    (Qwen2 lists full attention when ``use_sliding_window`` is off, even with
    ``sliding_window`` set), else ``sliding_window`` or ``attention_chunk_size`` being
    set makes every layer windowed.

    Raises:
        BaseModelLoadError: naming the unsupported layer types and the fix.
    """
    from transformers.cache_utils import get_layer_types_and_kwargs

    layer_types, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    unsupported = sorted({kind for kind in layer_types if kind != "full_attention"})
    if unsupported:
        raise BaseModelLoadError(
            f"base model {path} ({config.model_type}) has {', '.join(unsupported)} layers; "
            "the engine's batched KV cache supports only full attention, because a "
            "windowed cache drops the columns its left-padded rows still need and would "
            "give wrong outputs; use a full-attention model (Llama, Qwen2, Mistral "
            "without sliding_window, ...)"
        )


def _eos_token_ids(tokenizer: Any, generation_config: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(i for i in source if isinstance(i, int))
    return frozenset(ids)


def chat_prompt(tokenizer: Any, messages: list[Mapping[str, str]]) -> str:
    """Render ``messages`` with the tokenizer's chat template, ending in the assistant turn.

    Without a template, a plain ``role: content`` transcript is used, so base models that
    were never chat-tuned still accept chat requests.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False
        )
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])
