"""What several benchmarks share: model shapes, adapter identities and the decode
workload's command-line options."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from adapter_store import AdapterVersion

RANKS = (8, 16, 32, 64)
ATTENTION_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]

# Random-weight Llama shapes the engine benchmarks build locally (nothing is downloaded).
LLAMA_100M = {
    "vocab_size": 16000,
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "max_position_embeddings": 2048,
}
LLAMA_1B = {  # TinyLlama-1.1B's shape
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
}


def bench_version(index: int, base_model: str = "tiny") -> AdapterVersion:
    """The identity of the benchmark's ``index``-th adapter (ranks cycle through RANKS)."""
    return AdapterVersion(
        tenant="bench",
        name=f"adapter-{index}",
        version=1,
        digest="0" * 64,
        config_digest="1" * 64,
        size_bytes=1,
        rank=RANKS[index % len(RANKS)],
        base_model=base_model,
    )


def int_options(doc: str, **defaults: int) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first line, with one ``--name N`` option per
    keyword (underscores become dashes), defaulting to its value."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    return parser


def decode_parser(description: str, *, max_tokens: int, threads: int) -> argparse.ArgumentParser:
    """Options of a decode workload: concurrent requests, tokens each, repeats, torch
    threads, and ``--quick`` for a smoke run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch", type=int, default=32, help="concurrent requests")
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=threads, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    return parser


def make_distinct_adapters(plain: Any, work: Path, count: int) -> list[Path]:
    """``count`` PEFT adapters for ``plain`` (ranks cycling through :data:`RANKS`,
    attention projections)."""
    from tests.factories import make_peft_adapter

    return [
        make_peft_adapter(
            plain,
            work / f"adapter-{index}",
            seed=index,
            r=RANKS[index % len(RANKS)],
            lora_alpha=2 * RANKS[index % len(RANKS)],
            target_modules=ATTENTION_TARGETS,
        )
        for index in range(count)
    ]
