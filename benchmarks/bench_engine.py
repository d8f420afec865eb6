"""Replica engine benchmark: mixed-adapter decode throughput, step time, adapter loads.

Prints one JSON object (keys are stable; the simulator's ``cpu`` cost profile reads
``decode_step_ms``):

- ``decode``: tokens/s for 32 concurrent requests where (a) all use one adapter,
  (b) all use distinct adapters of ranks 8-64, (c) the naive way, one adapter active at a
  time (each adapter's request runs alone, as HF PEFT does without mixed batches).
  Goals: b/a >= 0.8 and b/c >= 4. Measured end to end through :class:`Engine` (prefill
  included), greedy, ``ignore_eos`` so every request makes ``max_tokens`` tokens.
- ``decode_step_ms``: time of one decode step vs batch size (1-32), with every row on a
  distinct adapter (``lora_mixed``) and with no adapter (``no_adapter``); the fastest of
  ``--repeats`` rounds of the median of ``--steps`` steps.
- ``prefill_ms``: time of one prompt's prefill (one forward through
  :class:`MultiLoraModel` with an adapter, KV cache built) vs prompt length (16-256
  tokens); fastest of ``--repeats`` rounds of the median of ``--steps`` runs.
- ``adapter_load_ms``: per rank 8/16/32/64, blob store -> disk (``blob_fetch_ms``: a
  cold :meth:`DiskCache.ensure` from a ``file://`` blob store, i.e. copy plus sha256
  check), disk -> host (:meth:`HostAdapter.from_dir`) and host -> slot
  (:meth:`MultiLoraModel.load_slot`), on ``tiny`` and on a ~100M parameter Llama built
  locally with random weights.
- ``quantized`` (with ``--quantize none,int8,nf4``): per quantization of the base, side by
  side on the same model (``--quantize-model``: ``tiny``, or ``llama_100m`` built
  locally), the bytes the base holds (``base_bytes``) and its ratio to ``none``, decode
  tokens/s with ``--batch`` requests on distinct adapters (as (b) above), and the median
  time to first token of one request on an idle engine (``ttft_ms``).

Run: ``python -m benchmarks.bench_engine`` (``--quick`` for a smoke run;
``--quantize none,int8,nf4 --skip-100m`` for the quantized table). Nothing is
downloaded. Everything runs in one process on one machine, so the ratios compare like
with like.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapter_store import CONFIG_NAME
from adapter_store import WEIGHTS_NAME
from adapter_store import AdapterVersion
from adapter_store import DiskCache
from adapter_store import LocalBlobStore
from adapter_store import blob_key
from benchmarks._common import ATTENTION_TARGETS
from benchmarks._common import LLAMA_100M
from benchmarks._common import RANKS
from benchmarks._common import bench_version
from benchmarks._common import decode_parser
from benchmarks._common import make_distinct_adapters
from services.engine import NO_ADAPTER_SLOT
from services.engine import Engine
from services.engine import GenerationRequest
from services.engine import HostAdapter
from services.engine import MultiLoraModel
from services.engine import SamplingParams
from services.engine import ensure_tiny_model
from services.engine import load_base_model
from services.engine._batching import KvBatch
from tests.factories import make_peft_adapter

BATCH_SIZES = (1, 2, 4, 8, 16, 32)
PREFILL_LENGTHS = (16, 64, 128, 256)


@dataclass
class _Lease:
    slot: int

    def release(self) -> None:
        """Slots are preloaded for the whole run; nothing to unpin."""


class _PreloadedSlots:
    """Every adapter resident in its own slot: the decode benchmark measures batching,
    not cache misses (those are ``adapter_load_ms``)."""

    def __init__(self, slots: dict[str, int]) -> None:
        self._slots = slots

    async def acquire(self, version: AdapterVersion) -> _Lease:
        return _Lease(self._slots[version.key])


def median_ms(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def load_adapters(model: MultiLoraModel, adapter_dirs: list[Path]) -> dict[str, int]:
    """Adapter ``i`` into slot ``i``; return adapter key -> slot."""
    slots = {}
    for index, adapter_dir in enumerate(adapter_dirs):
        model.load_slot(index, HostAdapter.from_dir(bench_version(index).key, adapter_dir, model))
        slots[bench_version(index).key] = index
    return slots


def load_distinct_adapters(model: MultiLoraModel, plain, work: Path) -> dict[str, int]:
    """Fill every slot of ``model`` with its own adapter; return adapter key -> slot."""
    return load_adapters(model, make_distinct_adapters(plain, work, model.max_slots))


async def _tokens_per_second(
    engine: Engine, requests: list[GenerationRequest], *, sequential: bool
) -> float:
    start = time.perf_counter()
    if sequential:
        results = [await engine.complete(r) for r in requests]
    else:
        results = await asyncio.gather(*(engine.complete(r) for r in requests))
    elapsed = time.perf_counter() - start
    return sum(r.usage.completion_tokens for r in results) / elapsed


def _prompt(index: int) -> str:
    return f"request {index:02d}: tell me something"


async def bench_decode(base, model: MultiLoraModel, slots: dict[str, int], args) -> dict[str, Any]:
    batch = args.batch
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)

    def requests(adapter_of: Callable[[int], int]) -> list[GenerationRequest]:
        return [
            GenerationRequest(
                prompt=_prompt(i), adapter=bench_version(adapter_of(i)), sampling=sampling
            )
            for i in range(batch)
        ]

    one_adapter, distinct = requests(lambda i: 0), requests(lambda i: i)
    runs: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    async with Engine(base, model, _PreloadedSlots(slots), max_batch_size=batch) as engine:
        await _tokens_per_second(engine, distinct[:4], sequential=False)  # warm-up
        for _ in range(args.repeats):  # interleaved, so load drift hits both alike
            runs["a"].append(await _tokens_per_second(engine, one_adapter, sequential=False))
            runs["b"].append(await _tokens_per_second(engine, distinct, sequential=False))
        runs["c"].append(await _tokens_per_second(engine, distinct, sequential=True))
    tokens_per_s = {
        "a_one_adapter": statistics.median(runs["a"]),
        "b_distinct_adapters": statistics.median(runs["b"]),
        "c_sequential_per_adapter": statistics.median(runs["c"]),
    }
    b_over_a = tokens_per_s["b_distinct_adapters"] / tokens_per_s["a_one_adapter"]
    b_over_c = tokens_per_s["b_distinct_adapters"] / tokens_per_s["c_sequential_per_adapter"]
    return {
        "batch": batch,
        "max_tokens": args.max_tokens,
        "adapter_ranks": sorted({RANKS[i % len(RANKS)] for i in range(batch)}),
        "tokens_per_s": {k: round(v, 1) for k, v in tokens_per_s.items()},
        "ratio_b_over_a": round(b_over_a, 3),
        "ratio_b_over_c": round(b_over_c, 3),
        "goals": {
            "b_over_a_min": 0.8,
            "b_over_c_min": 4.0,
            "met": b_over_a >= 0.8 and b_over_c >= 4,
        },
    }


def bench_step_time(model: MultiLoraModel, tokenizer, args) -> dict[str, dict[str, float]]:
    """Decode-step time per batch size, each row ~25 tokens of context.

    Each point is the fastest of ``args.repeats`` rounds of the median of ``args.steps``
    steps, rounds interleaved over batch sizes: on a shared machine, the fastest median
    is the one least disturbed by other processes.
    """
    rounds: dict[str, dict[str, list[float]]] = {"lora_mixed": {}, "no_adapter": {}}
    for _ in range(args.repeats):
        for batch in BATCH_SIZES:
            prompts = [tokenizer(_prompt(i))["input_ids"] for i in range(batch)]
            for label, slots in (
                ("lora_mixed", [i % model.max_slots for i in range(batch)]),
                ("no_adapter", [NO_ADAPTER_SLOT] * batch),
            ):
                rows, _ = KvBatch.prefill(model, prompts, slots)
                tokens = [1] * batch
                rows.decode(tokens, slots)  # warm-up
                rounds[label].setdefault(str(batch), []).append(
                    median_ms(lambda r=rows, s=slots, t=tokens: r.decode(t, s), args.steps)
                )
    return {
        label: {batch: round(min(times), 3) for batch, times in points.items()}
        for label, points in rounds.items()
    }


def bench_prefill(model: MultiLoraModel, args) -> dict[str, float]:
    """Prefill time of one prompt per length, the row on slot 0 (whatever adapter the
    caller loaded there; :func:`load_distinct_adapters` puts a rank-8 one).

    Each point is the fastest of ``args.repeats`` rounds of the median of ``args.steps``
    runs, like :func:`bench_step_time`.
    """
    rounds: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for length in PREFILL_LENGTHS:
            prompt = [[token % 256 for token in range(length)]]
            KvBatch.prefill(model, prompt, [0])  # warm-up
            rounds.setdefault(str(length), []).append(
                median_ms(lambda p=prompt: KvBatch.prefill(model, p, [0]), args.steps)
            )
    return {length: round(min(times), 3) for length, times in rounds.items()}


def bench_loads(
    model: MultiLoraModel, plain, work: Path, repeats: int
) -> dict[str, dict[str, float]]:
    """Blob store -> disk, disk -> host and host -> slot latency per rank (attention
    projections targeted).

    The blob fetch is a cold :meth:`DiskCache.ensure` of the adapter's two files from a
    ``file://`` blob store: each repeat asks for a new version key, so each one copies
    and sha256-checks both files; the budget is large enough that nothing is evicted.
    """
    result = {}
    blobs = LocalBlobStore(work / "blobs")
    for rank in RANKS:
        adapter_dir = make_peft_adapter(
            plain,
            work / f"load-r{rank}",
            r=rank,
            lora_alpha=2 * rank,
            target_modules=ATTENTION_TARGETS,
        )
        files = {}
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            data = (adapter_dir / name).read_bytes()
            files[name] = hashlib.sha256(data).hexdigest()
            blobs.put_bytes(blob_key(files[name]), data)
        disk = DiskCache(work / f"disk-cache-r{rank}", blobs, max_bytes=1 << 40)
        new_keys = (f"bench/r{rank}@{version}" for version in itertools.count(1))
        host = HostAdapter.from_dir(f"r{rank}", adapter_dir, model)
        result[str(rank)] = {
            "size_bytes": host.size_bytes,
            "blob_fetch_ms": round(
                median_ms(lambda c=disk, k=new_keys, f=files: c.ensure(next(k), f), repeats), 3
            ),
            "disk_to_host_ms": round(
                median_ms(lambda d=adapter_dir: HostAdapter.from_dir("x", d, model), repeats), 3
            ),
            "host_to_slot_ms": round(median_ms(lambda h=host: model.load_slot(0, h), repeats), 3),
        }
    return result


async def _ttft_ms(engine: Engine, repeats: int) -> float:
    """Median time from submitting one request (adapter in slot 0) to its first token."""
    sampling = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    times = []
    for index in range(repeats + 1):  # the first is a warm-up
        request = GenerationRequest(
            prompt=_prompt(index), adapter=bench_version(0), sampling=sampling
        )
        start = time.perf_counter()
        async for _ in engine.generate(request):
            break
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def _quantize_model_dir(name: str, work: Path) -> Path:
    """``tiny``, or the ~100M Llama saved with ``tiny``'s tokenizer."""
    tiny = ensure_tiny_model(work / "models")
    if name == "tiny":
        return tiny
    big, _ = _llama_100m()
    target = work / "llama_100m"
    big.save_pretrained(str(target))
    load_base_model(tiny, device="cpu").tokenizer.save_pretrained(str(target))
    return target


async def bench_quantized(args, work: Path) -> dict[str, Any]:
    """Base bytes, mixed-adapter decode tokens/s and TTFT per quantization, side by side.

    Every quantization's engine is up for the whole run and the rounds are interleaved
    (none, int8, nf4, none, ...), so load drift on a shared machine hits all alike.
    """
    from transformers import AutoModelForCausalLM

    model_dir = _quantize_model_dir(args.quantize_model, work)
    plain = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    adapter_dirs = make_distinct_adapters(plain, work / "quantized-adapters", args.batch)
    del plain
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    distinct = [
        GenerationRequest(prompt=_prompt(i), adapter=bench_version(i), sampling=sampling)
        for i in range(args.batch)
    ]
    engines: dict[str, Engine] = {}
    results: dict[str, dict[str, Any]] = {}
    for quantization in args.quantize:
        base = load_base_model(model_dir, quantize=quantization, device="cpu")
        model = MultiLoraModel(base.model, max_slots=args.batch, max_rank=max(RANKS))
        slots = load_adapters(model, adapter_dirs)
        engine = Engine(base, model, _PreloadedSlots(slots), max_batch_size=args.batch)
        await engine.start()
        await _tokens_per_second(engine, distinct[:4], sequential=False)  # warm-up
        engines[quantization] = engine
        results[quantization] = {
            "base_bytes": base.weight_bytes,
            "full_precision_bytes": base.full_precision_bytes,
        }
    runs: dict[str, list[float]] = {q: [] for q in engines}
    ttfts: dict[str, list[float]] = {q: [] for q in engines}
    try:
        for _ in range(args.repeats):
            for quantization, engine in engines.items():
                runs[quantization].append(
                    await _tokens_per_second(engine, distinct, sequential=False)
                )
                ttfts[quantization].append(await _ttft_ms(engine, 3))
    finally:
        for engine in engines.values():
            await engine.aclose()
    reference = "none" if "none" in engines else None
    for quantization, figures in results.items():
        figures["decode_tokens_per_s_distinct_adapters"] = round(
            statistics.median(runs[quantization]), 1
        )
        figures["ttft_ms"] = round(statistics.median(ttfts[quantization]), 2)
        if reference is not None:
            figures["base_bytes_vs_none"] = round(
                figures["base_bytes"] / results[reference]["base_bytes"], 3
            )
            figures["decode_vs_none"] = round(
                statistics.median(runs[quantization]) / statistics.median(runs[reference]), 3
            )
    return {"model": args.quantize_model, "batch": args.batch, "by_quantization": results}


def _llama_100m():  # -> (model, parameter count)
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_100M)).eval()
    return model, sum(p.numel() for p in model.parameters())


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = decode_parser(__doc__.splitlines()[0], max_tokens=32, threads=1)
    parser.add_argument("--steps", type=int, default=20, help="decode steps per step-time point")
    parser.add_argument("--skip-100m", action="store_true", help="skip the ~100M model loads")
    parser.add_argument(
        "--quantize",
        type=lambda text: text.split(","),
        default=None,
        help="also compare these base quantizations side by side, e.g. none,int8,nf4",
    )
    parser.add_argument(
        "--quantize-model",
        choices=("tiny", "llama_100m"),
        default="tiny",
        help="the model the quantizations are compared on",
    )
    parser.add_argument(
        "--only-quantized", action="store_true", help="run only the quantized comparison"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.max_tokens, args.repeats, args.steps = 8, 8, 1, 3
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    if args.only_quantized:
        return {"quantized": await bench_quantized(args, work)}

    base = load_base_model("tiny", models_dir=work / "models")
    plain = copy.deepcopy(base.model)
    model = MultiLoraModel(base.model, max_slots=args.batch, max_rank=max(RANKS))
    slots = load_distinct_adapters(model, plain, work)

    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),
            "cpus": __import__("os").cpu_count(),
        },
        "model": base.name,
        "decode": await bench_decode(base, model, slots, args),
        "decode_step_ms": bench_step_time(model, base.tokenizer, args),
        "prefill_ms": bench_prefill(model, args),
    }
    loads = {"tiny": bench_loads(MultiLoraModel(copy.deepcopy(plain), max_slots=1), plain, work, 5)}
    if not args.skip_100m:
        big, parameters = _llama_100m()
        big_plain = copy.deepcopy(big)
        loads["llama_100m"] = bench_loads(MultiLoraModel(big, max_slots=1), big_plain, work, 3)
        report["llama_100m_parameters"] = parameters
    report["adapter_load_ms"] = loads
    if args.quantize:
        report["quantized"] = await bench_quantized(args, work)
    return report


if __name__ == "__main__":
    json.dump(asyncio.run(main(sys.argv[1:])), sys.stdout, indent=2)
    sys.stdout.write("\n")
