"""The built-in base models: ``tiny`` (made locally) and ``tiny-en`` (shipped).

``tiny-en`` is the embedded default of ``loramux up``: a four-layer Llama of 3.1M
parameters (hidden 256, eight heads of 32, a 3,072-token byte-level BPE vocabulary) with
a chat template, trained by ``scripts/tiny_en/build.py`` on simple English that the same
directory generates from a seed. It writes short readable stories and answers simple chat
questions, so a newcomer sees words, and an adapter trained with ``loramux train``
visibly changes them. It ships inside this package (12.6 MB) and loads like any Hugging
Face directory. ``tiny`` (random weights, byte tokens) stays the tests' model: it builds
in a second and its numerics are what the engine tests pin.

The embedded default (``loramux up``) and the tests need a base model without a download.
``tiny`` is a two-layer Llama (hidden 64: two query heads of 32 over one KV head, the
smallest head vLLM's CPU attention runs, so both engines serve it) with deterministic
seeded weights and a byte-level tokenizer
(token id == byte value, plus three special tokens) with a chat template. It is written
once as ``config.json`` + ``model.safetensors`` + tokenizer files and then loaded like any
other Hugging Face directory, so every engine code path is the one real models take.

Its output is gibberish: the weights are random. What matters is that they are the same
on every machine and that the logits are peaked enough for greedy decoding to be stable
under float noise (batching, padding).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = [
    "BUILTIN_MODELS",
    "TINY_EN_MODEL_NAME",
    "TINY_MODEL_NAME",
    "build_tiny_model",
    "builtin_model_dir",
    "ensure_tiny_model",
]

TINY_MODEL_NAME = "tiny"
TINY_EN_MODEL_NAME = "tiny-en"
BUILTIN_MODELS = (TINY_EN_MODEL_NAME, TINY_MODEL_NAME)
_TINY_EN_DIR = Path(__file__).resolve().parent / "_builtin" / TINY_EN_MODEL_NAME
# Bumped whenever the architecture, seed or tokenizer changes, so a stale directory built
# by an older loramux is rebuilt instead of silently loaded.
_TINY_REVISION = 3
_SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}
_MARKER = "loramux_tiny.json"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer
    from tokenizers import decoders
    from tokenizers import models
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    for token in _SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(_SPECIAL_TOKENS))
    bos, eos, pad = _SPECIAL_TOKENS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def _build_model(tokenizer, seed: int):  # -> transformers.LlamaForCausalLM
    import torch
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM

    # Special token ids go in at construction: the generation config is derived from it.
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **_CONFIG,
    )
    model = LlamaForCausalLM(config).eval()
    # Weights come from our own generator rather than transformers' init so they do not
    # change when transformers changes its init order. Embeddings and lm_head are large so
    # that the next-token distribution is peaked (greedy decoding stable under padding).
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif "embed_tokens" in name or "lm_head" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.08)
    return model


def build_tiny_model(directory: Path, *, seed: int = 0) -> Path:
    """Write the ``tiny`` model (weights, config, tokenizer) into ``directory``; return it.

    The directory is created or overwritten. Deterministic: the same ``seed`` gives the
    same bytes of weights on every machine with the same torch version.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    model = _build_model(tokenizer, seed)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    (directory / _MARKER).write_text(json.dumps({"revision": _TINY_REVISION, "seed": seed}))
    return directory


def ensure_tiny_model(models_dir: Path) -> Path:
    """Return ``models_dir/tiny``, building it first when missing or from another revision.

    Built in a temporary sibling directory and renamed into place, so concurrent callers
    (several replicas on one host) never load a half-written model.
    """
    target = Path(models_dir) / TINY_MODEL_NAME
    marker = target / _MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("revision") == _TINY_REVISION:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        build_tiny_model(staging)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process renamed its copy first; theirs is identical.
            if not marker.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def builtin_model_dir(name: str | Path, models_dir: Path) -> Path | None:
    """The directory of built-in model ``name`` (``tiny`` built under ``models_dir`` on
    first use), or None when ``name`` is not a built-in model."""
    if str(name) == TINY_MODEL_NAME:
        return ensure_tiny_model(models_dir)
    if str(name) == TINY_EN_MODEL_NAME:
        return _TINY_EN_DIR
    return None
