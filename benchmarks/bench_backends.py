"""The same workload on both engine backends (``hf`` and ``vllm``), through the seam.

Prints one JSON object with, per backend:

- ``tokens_per_s``: 32 concurrent requests (greedy, ``ignore_eos``, fixed length) with
  no adapter, one adapter, 8 and 32 distinct adapters of ranks 8-64, every adapter
  already in a GPU slot (warm);
- ``ratio_mixed_over_one``: 32 distinct adapters over one (S-LoRA reports 0.90);
- ``ttft_ms``: time to first token of the 32 streams of the 32-adapter run, p50/p99;
- ``load_ms``: cold loads through the adapter cache (disk -> host -> GPU slot), p50/p99
  per step, as the cache times them.

The model is a Llama made locally with random weights and head_dim 64 (vLLM's CPU
attention refuses smaller heads). Run: ``python -m benchmarks.bench_backends``
(``--engines hf`` without vLLM; ``--quick`` for a smoke run). Everything runs in one
process on one machine, so the backends are compared like with like.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import RANKS
from benchmarks._common import bench_version
from benchmarks._common import decode_parser
from benchmarks._common import make_distinct_adapters
from scheduler import Tier
from services.engine import CacheHooks
from services.engine import EngineOptions
from services.engine import GenerationRequest
from services.engine import SamplingParams
from services.engine import open_engine
from tests.factories import save_model_dir
from tests.factories import tiny_llama

MODEL_NAME = "bench-llama"
MODEL = {
    "vocab_size": 512,
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "max_position_embeddings": 1024,
}


def _percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def _run(engine, adapters: list[int | None], max_tokens: int) -> tuple[float, list[float]]:
    """Tokens/s of one concurrent wave, and each stream's time to first token."""
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    ttft: list[float] = []

    async def one(index: int, adapter: int | None) -> int:
        request = GenerationRequest(
            prompt=f"request {index:02d}: tell me something",
            adapter=None if adapter is None else bench_version(adapter, MODEL_NAME),
            sampling=sampling,
        )
        start = time.perf_counter()
        tokens = 0
        async for chunk in engine.generate(request):
            if tokens == 0:
                ttft.append(time.perf_counter() - start)
            tokens += len(chunk.token_ids)
        return tokens

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i, a) for i, a in enumerate(adapters)))
    return sum(counts) / (time.perf_counter() - start), ttft


async def bench_backend(kind: str, model_dir: Path, adapter_dirs: list[Path], args) -> dict:
    by_key = {bench_version(i, MODEL_NAME).key: path for i, path in enumerate(adapter_dirs)}
    options = EngineOptions(
        base_model=model_dir,
        name="bench-llama",
        gpu_slots=args.batch,
        max_lora_rank=max(RANKS),
        max_batch_size=args.batch,
        dtype="float32",
    )
    hooks = CacheHooks(fetch_to_disk=lambda version: by_key[version.key])
    engine = await asyncio.to_thread(open_engine, kind, options, hooks)
    batch = args.batch
    waves = {
        "no_adapter": [None] * batch,
        "one_adapter": [0] * batch,
        "distinct_8": [i % 8 for i in range(batch)],
        "distinct_32": list(range(batch)),
    }
    runs: dict[str, list[float]] = {name: [] for name in waves}
    ttft: list[float] = []
    async with engine:
        await _run(engine, list(range(batch)), 2)  # cold loads of every adapter, warm-up
        for _ in range(args.repeats):  # interleaved, so load drift hits all alike
            for name, adapters in waves.items():
                tokens_per_s, wave_ttft = await _run(engine, adapters, args.max_tokens)
                runs[name].append(tokens_per_s)
                if name == "distinct_32":
                    ttft.extend(wave_ttft)
        stats = engine.cache.stats()
    tps = {name: statistics.median(values) for name, values in runs.items()}
    return {
        "tokens_per_s": {name: round(value, 1) for name, value in tps.items()},
        "ratio_mixed_over_one": round(tps["distinct_32"] / tps["one_adapter"], 3),
        "ratio_one_over_no_adapter": round(tps["one_adapter"] / tps["no_adapter"], 3),
        "ttft_ms": {"p50": _percentile_ms(ttft, 0.5), "p99": _percentile_ms(ttft, 0.99)},
        "load_ms": {
            f"from_{tier.name.lower()}": {
                "count": summary.count,
                "p50": round(1000 * summary.p50_s, 2),
                "p99": round(1000 * summary.p99_s, 2),
            }
            for tier, summary in stats.load_latency.items()
            if tier in (Tier.HOST, Tier.DISK) and summary.count
        },
    }


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = decode_parser(__doc__.splitlines()[0], max_tokens=32, threads=2)
    parser.add_argument("--engines", default="hf,vllm", help="comma-separated backends")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.max_tokens, args.repeats = 8, 8, 1
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    llama = tiny_llama(seed=0, **MODEL)
    model_dir = save_model_dir(llama, work / "bench-llama", work / "models")
    adapter_dirs = make_distinct_adapters(llama, work, args.batch)
    report: dict[str, Any] = {
        "model_parameters": sum(p.numel() for p in llama.parameters()),
        "batch": args.batch,
        "max_tokens": args.max_tokens,
        "adapter_ranks": list(RANKS),
        "torch": torch.__version__,
    }
    for kind in args.engines.split(","):
        report[kind] = await bench_backend(kind, model_dir, adapter_dirs, args)
    return report


if __name__ == "__main__":
    # vLLM logs to stdout by default; stdout carries the report alone.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    json.dump(asyncio.run(main(sys.argv[1:])), sys.stdout, indent=2)
    sys.stdout.write("\n")
