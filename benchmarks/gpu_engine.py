"""The ``hf`` engine on a GPU: a ~1B-parameter Llama in bf16 with 32 distinct adapters.

Prints one JSON object:

- ``numerics``: on a small Llama in fp32 on the device, the largest logit difference
  between our mixed-adapter forward and PEFT's ``PeftModel`` for each of 4 adapters in
  one batch, and whether greedy tokens agree (the exactness check of the CUDA path).
- ``decode``: tokens/s for 32 concurrent requests on the ~1B model (random weights,
  made locally) with (a) one adapter, (b) 32 distinct adapters of ranks 8-64, (c) no
  adapter; the ratios b/a (S-LoRA reports 0.90) and b/c; TTFT p50/p99 of the 32
  streams of (b).
- ``memory``: the base model's bytes and the peak CUDA memory.

Run on a CUDA machine from the repository root: ``python3 -m benchmarks.gpu_engine``
(``--config small`` for a smoke run on any device). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import ATTENTION_TARGETS
from benchmarks._common import LLAMA_1B
from benchmarks._common import RANKS
from benchmarks._common import bench_version
from benchmarks.bench_engine import _PreloadedSlots
from benchmarks.bench_engine import _prompt
from benchmarks.bench_engine import _tokens_per_second
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
from tests.factories import tiny_llama

CONFIGS = {
    "1b": LLAMA_1B,
    "small": {
        "vocab_size": 512,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
    },
}


def build_model_dir(config: dict[str, Any], work: Path, device: str, dtype: torch.dtype) -> Path:
    """A Llama with seeded random weights, saved with the built-in model's tokenizer
    (its ids fit any vocabulary of 512 or more)."""
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**config)).to(dtype).eval()
    out = work / "llama"
    model.save_pretrained(out)
    tiny = ensure_tiny_model(work / "models")
    for path in tiny.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")) or path.name == "vocab.json":
            shutil.copy(path, out / path.name)
    return out


def save_adapters(model, work: Path, count: int) -> list[Path]:
    """``count`` PEFT adapters of ranks cycling through :data:`RANKS`, seeded weights;
    one PEFT wrap per rank, re-randomized and saved per adapter."""
    from peft import LoraConfig
    from peft import get_peft_model

    dirs: list[Path] = [work / f"adapter-{i}" for i in range(count)]
    for rank in RANKS:
        peft_model = get_peft_model(
            model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ATTENTION_TARGETS)
        )
        for index in range(count):
            if RANKS[index % len(RANKS)] != rank:
                continue
            gen = torch.Generator().manual_seed(index)
            with torch.no_grad():
                for name, param in peft_model.named_parameters():
                    if "lora_" in name:
                        noise = torch.randn(param.shape, generator=gen) * 0.02
                        param.copy_(noise.to(param.device, param.dtype))
            peft_model.save_pretrained(dirs[index])
        model = peft_model.unload()
    return dirs


def check_numerics(device: str, work: Path) -> dict[str, Any]:
    """Mixed-batch logits vs PEFT on the device in fp32, 4 adapters in one batch."""
    from peft import PeftModel

    plain = tiny_llama(seed=1, hidden_size=128, num_attention_heads=4, num_key_value_heads=4)
    adapters = [
        make_peft_adapter(plain, work / f"num-{i}", seed=i, r=r, lora_alpha=a, **extra)
        for i, (r, a, extra) in enumerate(
            [
                (8, 16, {}),
                (16, 8, {"use_rslora": True, "target_modules": "all-linear"}),
                (64, 128, {"target_modules": ATTENTION_TARGETS}),
                (4, 4, {"target_modules": ["gate_proj", "down_proj"]}),
            ]
        )
    ]
    ours = MultiLoraModel(copy.deepcopy(plain).to(device), max_slots=4, max_rank=64)
    for slot, adapter in enumerate(adapters):
        ours.load_slot(slot, HostAdapter.from_dir(f"a{slot}", adapter, ours))
    prompt = list(range(3, 40))
    with torch.no_grad():
        _, logits = KvBatch.prefill(ours, [prompt] * 4, list(range(4)))
    result = {}
    for slot, adapter in enumerate(adapters):
        reference = PeftModel.from_pretrained(copy.deepcopy(plain), adapter).to(device).eval()
        with torch.no_grad():
            expected = reference(torch.tensor([prompt], device=device)).logits[0, -1]
        got = logits[slot].to(expected.dtype)
        result[f"adapter_{slot}"] = {
            "max_abs_logit_diff": float((got - expected).abs().max()),
            "greedy_equal": bool(got.argmax() == expected.argmax()),
        }
    return result


async def bench_decode(base, model: MultiLoraModel, slots, batch: int, max_tokens: int, repeats):
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)

    def requests(adapter_of) -> list[GenerationRequest]:
        return [
            GenerationRequest(
                prompt=_prompt(i),
                adapter=None if adapter_of(i) is None else bench_version(adapter_of(i)),
                sampling=sampling,
            )
            for i in range(batch)
        ]

    kinds = {
        "a_one_adapter": requests(lambda i: 0),
        "b_distinct_adapters": requests(lambda i: i),
        "c_no_adapter": requests(lambda i: None),
    }
    runs: dict[str, list[float]] = {kind: [] for kind in kinds}
    ttft: list[float] = []
    async with Engine(base, model, _PreloadedSlots(slots), max_batch_size=batch) as engine:
        await _tokens_per_second(engine, kinds["b_distinct_adapters"][:4], sequential=False)
        for _ in range(repeats):
            for kind, reqs in kinds.items():
                runs[kind].append(await _tokens_per_second(engine, reqs, sequential=False))

        async def first_token(request: GenerationRequest) -> float:
            start = time.perf_counter()
            async for _chunk in engine.generate(request):
                return (time.perf_counter() - start) * 1000
            return float("nan")

        ttft = list(await asyncio.gather(*map(first_token, kinds["b_distinct_adapters"])))
    tps = {kind: statistics.median(values) for kind, values in runs.items()}
    ttft.sort()
    return {
        "batch": batch,
        "max_tokens": max_tokens,
        "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "ratio_mixed_over_one": round(tps["b_distinct_adapters"] / tps["a_one_adapter"], 3),
        "ratio_mixed_over_no_adapter": round(tps["b_distinct_adapters"] / tps["c_no_adapter"], 3),
        "ttft_ms_distinct": {
            "p50": round(ttft[len(ttft) // 2], 1),
            "p99": round(ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))], 1),
        },
    }


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="1b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    work = Path(tempfile.mkdtemp(prefix="gpu-engine-"))
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "config": args.config,
        "dtype": str(dtype).removeprefix("torch."),
    }
    report["numerics"] = check_numerics(args.device, work)
    path = build_model_dir(CONFIGS[args.config], work, args.device, dtype)
    base = load_base_model(path, device=args.device, dtype=dtype, name="llama-bench")
    parameters = sum(p.numel() for p in base.model.parameters())
    adapter_dirs = save_adapters(base.model, work, args.batch)
    model = MultiLoraModel(base.model, max_slots=args.batch, max_rank=max(RANKS))
    slots = {}
    for index, adapter_dir in enumerate(adapter_dirs):
        model.load_slot(index, HostAdapter.from_dir(bench_version(index).key, adapter_dir, model))
        slots[bench_version(index).key] = index
    assert NO_ADAPTER_SLOT not in slots.values()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    report["parameters"] = parameters
    report["decode"] = await bench_decode(
        base, model, slots, args.batch, args.max_tokens, args.repeats
    )
    report["memory"] = {
        "base_bytes": sum(p.numel() * p.element_size() for p in base.model.parameters()),
        "peak_cuda_bytes": torch.cuda.max_memory_allocated()
        if args.device.startswith("cuda")
        else None,
    }
    return report


if __name__ == "__main__":
    json.dump(asyncio.run(main(sys.argv[1:])), sys.stdout, indent=2)
    sys.stdout.write("\n")
