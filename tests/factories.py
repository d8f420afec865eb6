"""Builders for test inputs: a tiny Llama base model and real PEFT adapters for it.

Everything is made locally with seeded weights; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_llama(seed: int = 0, **overrides: Any):  # -> transformers.LlamaForCausalLM
    """A two-layer Llama small enough for unit tests (hidden 64, vocab 256)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    params: dict[str, Any] = {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }
    params.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**params))
    return model.eval()


def make_peft_adapter(
    model,
    out_dir: Path,
    *,
    seed: int = 0,
    randomize_b: bool = True,
    **lora_kwargs: Any,
) -> Path:
    """Save a real PEFT LoRA adapter for ``model`` into ``out_dir``; return ``out_dir``.

    PEFT initialises B to zero, which would make every adapter a no-op; with
    ``randomize_b`` all LoRA weights get seeded random values so adapters differ.
    ``lora_kwargs`` go to ``peft.LoraConfig`` (default: r=8, alpha=16, q/v proj).
    """
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    kwargs: dict[str, Any] = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    kwargs.update(lora_kwargs)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**kwargs))
    if randomize_b:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def save_model_dir(model, out_dir: Path, models_dir: Path) -> Path:
    """Save ``model`` as a Hugging Face directory with the built-in model's tokenizer
    (built into ``models_dir`` if needed; its ids fit any vocabulary of 512 or more),
    so either engine backend can load it; return ``out_dir``."""
    import shutil

    from services.engine import ensure_tiny_model

    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    for path in ensure_tiny_model(models_dir).iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "generation_config")):
            shutil.copy(path, out_dir / path.name)
    return out_dir
