"""GPU benchmark of QLoRA serving: a ~1B-parameter Llama in bf16 against NF4, through the engine.

Builds a Llama with TinyLlama-1.1B's shape (random weights, bf16, saved locally with the
built-in ``tiny`` tokenizer), then for each of bf16 (``none``) and ``nf4``: loads it
with :func:`load_base_model`, fills 32 slots with 32 distinct adapters (ranks 8-64 on
the attention projections, written in PEFT's format), and measures through
:class:`Engine`:

- ``base_gpu_bytes``: CUDA memory the loaded base takes (allocated after minus before),
  next to ``base_bytes`` as the engine counts it;
- ``derived_gpu_slots``: what :func:`plan_gpu_slots` makes of the memory then free
  (rank 64, ``max_batch_tokens`` 32768); ``slots_freed_by_nf4`` is NF4's minus bf16's;
- ``decode_tokens_per_s``: 32 concurrent greedy requests on 32 distinct adapters;
- ``ttft_ms``: median time to first token of one request on an idle engine.

Prints one JSON object. Run from the repository root: ``python3 benchmarks/gpu_qlora.py``
(``--smoke`` runs a small model, on the CPU if there is no GPU, to check the script).
Without bitsandbytes the NF4 entry says "bitsandbytes unavailable"; a phase that fails
reports its error instead of its figures. Takes well under 4 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks._common import LLAMA_1B
from benchmarks._common import bench_version
from benchmarks.bench_engine import RANKS
from benchmarks.bench_engine import _PreloadedSlots
from benchmarks.bench_engine import _prompt
from benchmarks.bench_engine import _tokens_per_second
from benchmarks.bench_engine import _ttft_ms
from benchmarks.bench_engine import load_adapters
from services.engine import Engine
from services.engine import GenerationRequest
from services.engine import MultiLoraModel
from services.engine import SamplingParams
from services.engine import ensure_tiny_model
from services.engine import load_base_model
from services.engine import plan_gpu_slots

SMOKE = {
    **LLAMA_1B,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
ADAPTERS = 32
MAX_RANK = 64
MAX_BATCH_TOKENS = 32768
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def build_model(shape: dict[str, int], directory: Path, device: torch.device) -> int:
    """Save a random bf16 Llama of ``shape`` with ``tiny``'s tokenizer; return its
    parameter count. Built on ``device``: initialising 1B weights on a CPU is slow."""
    from transformers import AutoTokenizer
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16).eval()
    model.save_pretrained(str(directory))
    parameters = sum(p.numel() for p in model.parameters())
    del model
    tiny = ensure_tiny_model(directory.parent / "models")
    AutoTokenizer.from_pretrained(str(tiny)).save_pretrained(str(directory))
    return parameters


def write_adapters(shape: dict[str, int], root: Path) -> list[Path]:
    """:data:`ADAPTERS` LoRA adapters in PEFT's files, ranks cycling through ``RANKS``.

    Written directly (config + safetensors) rather than with ``peft``, which would copy
    the 1B model once per adapter.
    """
    from safetensors.torch import save_file

    hidden = shape["hidden_size"]
    kv = hidden // shape["num_attention_heads"] * shape["num_key_value_heads"]
    out_features = {"q_proj": hidden, "k_proj": kv, "v_proj": kv, "o_proj": hidden}
    generator = torch.Generator().manual_seed(0)
    paths = []
    for index in range(ADAPTERS):
        rank = RANKS[index % len(RANKS)]
        tensors = {}
        for layer in range(shape["num_hidden_layers"]):
            for name in TARGETS:
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{name}"
                a = torch.randn(rank, hidden, generator=generator) * 0.02
                b = torch.randn(out_features[name], rank, generator=generator) * 0.02
                tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16)
                tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16)
        path = root / f"adapter-{index}"
        path.mkdir(parents=True)
        save_file(tensors, str(path / "adapter_model.safetensors"))
        config = {
            "peft_type": "LORA",
            "r": rank,
            "lora_alpha": 2 * rank,
            "target_modules": list(TARGETS),
        }
        (path / "adapter_config.json").write_text(json.dumps(config))
        paths.append(path)
    return paths


async def measure(
    model_dir: Path, adapters: list[Path], quantize: str, device: torch.device, args
) -> dict[str, Any]:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    base = load_base_model(model_dir, quantize=quantize, device=device)
    load_s = time.perf_counter() - start
    figures: dict[str, Any] = {
        "quantization": base.quantization,
        "load_s": round(load_s, 2),
        "base_bytes": base.weight_bytes,
        "full_precision_bytes": base.full_precision_bytes,
    }
    if cuda:
        torch.cuda.synchronize()
        figures["base_gpu_bytes"] = torch.cuda.memory_allocated(device) - before
        figures["gpu_free_bytes_after_load"] = torch.cuda.mem_get_info(device)[0]
    figures["derived_gpu_slots"] = plan_gpu_slots(
        base, max_rank=MAX_RANK, max_batch_tokens=MAX_BATCH_TOKENS
    )
    model = MultiLoraModel(base.model, max_slots=ADAPTERS, max_rank=MAX_RANK)
    slots = load_adapters(model, adapters)
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    requests = [
        GenerationRequest(prompt=_prompt(i), adapter=bench_version(i), sampling=sampling)
        for i in range(ADAPTERS)
    ]
    async with Engine(base, model, _PreloadedSlots(slots), max_batch_size=ADAPTERS) as engine:
        await _tokens_per_second(engine, requests[:4], sequential=False)  # warm-up
        runs = [
            await _tokens_per_second(engine, requests, sequential=False)
            for _ in range(args.repeats)
        ]
        figures["ttft_ms"] = round(await _ttft_ms(engine, 10), 2)
    figures["decode_tokens_per_s"] = round(statistics.median(runs), 1)
    del engine, model, base
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return figures


async def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small model, CPU if no GPU")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    shape = SMOKE if args.smoke else LLAMA_1B
    if args.smoke:
        args.max_tokens, args.repeats = min(args.max_tokens, 8), 1
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "adapters": ADAPTERS,
        "max_tokens": args.max_tokens,
    }
    if not cuda and not args.smoke:
        report["error"] = "no CUDA device: run with --smoke to check the script on a CPU"
        return report
    try:
        import transformers

        report["transformers"] = transformers.__version__
        bnb_available = importlib.util.find_spec("bitsandbytes") is not None
        if bnb_available:
            import bitsandbytes

            report["bitsandbytes"] = bitsandbytes.__version__
        work = Path(tempfile.mkdtemp(prefix="gpu-qlora-"))
        model_dir = work / "llama"
        report["parameters"] = build_model(shape, model_dir, device)
        adapters = write_adapters(shape, work / "adapters")
    except Exception:
        report["error"] = traceback.format_exc(limit=4)
        return report
    results: dict[str, Any] = {}
    for quantize in ("none", "nf4"):
        if quantize != "none" and not bnb_available:
            results[quantize] = {"error": "bitsandbytes unavailable"}
            continue
        try:
            results[quantize] = await measure(model_dir, adapters, quantize, device, args)
        except Exception:
            results[quantize] = {"error": traceback.format_exc(limit=6)}
    report["by_quantization"] = results
    bf16, nf4 = results.get("none", {}), results.get("nf4", {})
    if "base_bytes" in bf16 and "base_bytes" in nf4:
        report["nf4_vs_bf16"] = {
            "base_bytes": round(nf4["base_bytes"] / bf16["base_bytes"], 3),
            "decode_tokens_per_s": round(
                nf4["decode_tokens_per_s"] / bf16["decode_tokens_per_s"], 3
            ),
            "ttft_ms": round(nf4["ttft_ms"] / bf16["ttft_ms"], 3),
            "slots_freed_by_nf4": nf4["derived_gpu_slots"] - bf16["derived_gpu_slots"],
        }
    return report


if __name__ == "__main__":
    json.dump(asyncio.run(main(sys.argv[1:])), sys.stdout, indent=2)
    sys.stdout.write("\n")
