"""Builders for test inputs: a tiny Llama base model, real PEFT adapters for it, and
published versions in a metadata store.

Everything is made locally with seeded weights; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    from adapter_store import AdapterStore
    from adapter_store import AdapterVersion
    from adapter_store import BaseModelManifest
    from adapter_store import BlobStore
    from adapter_store import MetadataStore
    from adapter_store import Origin


# The id the tiny Llama's manifest is registered under (the malformed corpus uses it too).
BASE = "tiny-llama"


@dataclass(frozen=True)
class TinyBase:
    """The tiny Llama, its manifest and three distinct adapters saved by PEFT."""

    model: Any
    manifest: BaseModelManifest
    adapters: tuple[Path, ...]


def adapter_version(
    name: str,
    *,
    tenant: str = "acme",
    size_bytes: int = 1,
    base_model: str = "tiny",
) -> AdapterVersion:
    """Version 1 of ``name`` with placeholder digests, for engines and caches that never
    read the store."""
    from adapter_store import AdapterVersion

    return AdapterVersion(
        tenant=tenant,
        name=name,
        version=1,
        digest="0" * 64,
        config_digest="1" * 64,
        size_bytes=size_bytes,
        rank=8,
        base_model=base_model,
    )


def make_tiny_base(root: Path) -> TinyBase:
    """The tiny Llama with adapters seeded 0, 1, 2 saved under ``root``."""
    from adapter_store import manifest_from_model

    model = tiny_llama()
    adapters = tuple(make_peft_adapter(model, root / f"a{seed}", seed=seed) for seed in range(3))
    return TinyBase(model, manifest_from_model(BASE, model), adapters)


def build_store(
    metadata: MetadataStore,
    blobs: BlobStore,
    manifest: BaseModelManifest,
    *,
    cache_dir: Path | None = None,
) -> AdapterStore:
    """An AdapterStore over these backends with ``manifest`` registered and the tenant
    ``acme`` created; with ``cache_dir``, a 1 GiB disk cache there."""
    from adapter_store import AdapterStore
    from adapter_store import DiskCache

    cache = None if cache_dir is None else DiskCache(cache_dir, blobs, 1 << 30)
    store = AdapterStore(metadata, blobs, disk_cache=cache)
    store.register_manifest(manifest)
    store.ensure_tenant("acme")
    return store


def sha256_hex(data: bytes | str) -> str:
    """The content address of ``data`` (text is UTF-8 encoded)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def blob_key_of(data: bytes) -> str:
    """The blob key ``data`` is stored under."""
    from adapter_store import blob_key

    return blob_key(sha256_hex(data))


def publish_version(
    meta: MetadataStore,
    name: str = "chat",
    *,
    tenant: str = "acme",
    content: str = "w",
    size: int = 100,
    aliases: tuple[str, ...] = (),
    now: float = 10.0,
    origin: Origin = "pushed",
) -> AdapterVersion:
    """Publish a version of ``tenant/name`` whose blobs are the digests of ``content``
    (weights) and ``content + "-config"``, rank 8 on base model ``tiny``; no blob behind
    it was ever collected."""
    from adapter_store import Publication

    digest, config_digest = sha256_hex(content), sha256_hex(content + "-config")
    publication = Publication(
        tenant, name, digest, config_digest, size, 8, "tiny", now, aliases=aliases, origin=origin
    )
    return meta.publish(publication)


def tiny_llama(seed: int = 0, **overrides: Any):  # -> transformers.LlamaForCausalLM
    """A two-layer Llama small enough for unit tests (hidden 64, vocab 256)."""
    import torch
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM

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
    from peft import LoraConfig
    from peft import get_peft_model

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


def write_wide_adapter(
    out_dir: Path, base_model: str, *, hidden: int = 4096, rank: int = 64, layers: int = 4
) -> BaseModelManifest:
    """A PEFT-format adapter of ``q_proj``/``v_proj`` of a ``hidden``-wide Llama shape,
    written with safetensors (2 * 4 * hidden * rank * layers bytes: 8 MiB a layer with
    the defaults), and the manifest of that base. No model is built: it tests what
    large files cost, not numerics. B is zero, as PEFT initializes it."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from adapter_store import BaseModelManifest

    rng = np.random.default_rng(0)
    tensors: dict[str, Any] = {}
    modules: dict[str, tuple[int, int]] = {}
    for layer in range(layers):
        for proj in ("q_proj", "v_proj"):
            module = f"model.layers.{layer}.self_attn.{proj}"
            modules[module] = (hidden, hidden)
            prefix = f"base_model.model.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal(
                (rank, hidden), dtype=np.float32
            ) * np.float32(0.01)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((hidden, rank), dtype=np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": base_model,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(config))
    return BaseModelManifest(base_model, modules)
