"""Measure the constants of the simulator's ``cpu`` cost profile on this machine.

What is measured (medians of repeated runs, torch on CPU, the tiny Llama of
``tests.factories.tiny_llama``: hidden 64, 2 layers, fp32):

* decode step: one forward of ``b`` sequences of one new token each over a 32-token KV
  cache, for b in 1..32; a least-squares line gives ``step_base_s`` and
  ``step_per_seq_s``;
* prefill: one forward of a single prompt of 32..224 tokens without cache; the slope is
  ``prefill_per_token_s``;
* adapter loads, for real PEFT adapters of rank 8, 32 and 128 on q,v (``make_peft_adapter``):
  the embedded blob store's read (file read plus sha256 verification) stands for the S3
  fetch, ``safetensors.torch.load_file`` from disk for the disk read, and cloning every
  tensor for the host-to-device copy (on CPU the "device" is host memory). A line through
  the three sizes gives each tier's fixed cost and bytes per second.

Prints one JSON object with the fitted constants and the raw medians. Run:
``python benchmarks/calibrate_cpu_profile.py``.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.factories import make_peft_adapter, tiny_llama


def _median_seconds(action: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    return mean_y - slope * mean_x, slope


def _decode_steps(model: torch.nn.Module) -> dict[int, float]:
    steps = {}
    for batch in (1, 2, 4, 8, 16, 32):
        prompt = torch.randint(0, 256, (batch, 32))
        with torch.no_grad():
            out = model(input_ids=prompt, use_cache=True)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            token = out.logits[:, -1:].argmax(-1)

            def step(cache=cache, token=token, batch=batch) -> None:
                position = torch.full((batch, 1), 32)
                model(input_ids=token, cache=cache, use_cache=True, position_ids=position)
                cache.crop(-1)  # drop the new token: the context stays 32 across repeats

            steps[batch] = _median_seconds(step, 30)
    return steps


def _prefill(model: torch.nn.Module) -> dict[int, float]:
    times = {}
    for length in (32, 96, 160, 224):
        prompt = torch.randint(0, 256, (1, length))
        with torch.no_grad():
            times[length] = _median_seconds(lambda p=prompt: model(input_ids=p), 20)
    return times


def _adapter_tiers(model: torch.nn.Module, root: Path) -> dict[str, dict[int, float]]:
    sizes: dict[int, float] = {}
    fetch: dict[int, float] = {}
    disk: dict[int, float] = {}
    copy: dict[int, float] = {}
    for rank in (8, 32, 128):
        folder = make_peft_adapter(model, root / f"r{rank}", r=rank, lora_alpha=2 * rank)
        weights = folder / "adapter_model.safetensors"
        size = weights.stat().st_size
        sizes[rank] = size

        def read_and_verify(path: Path = weights) -> None:
            hashlib.sha256(path.read_bytes()).hexdigest()

        fetch[size] = _median_seconds(read_and_verify, 50)
        disk[size] = _median_seconds(lambda path=weights: load_file(str(path)), 50)
        tensors = load_file(str(weights))
        copy[size] = _median_seconds(
            lambda tensors=tensors: [t.clone() for t in tensors.values()], 50
        )
    return {"s3": fetch, "disk": disk, "h2d": copy, "bytes_by_rank": sizes}


def main() -> None:
    torch.set_num_threads(1)
    model = tiny_llama()
    steps = _decode_steps(model)
    step_base, step_per_seq = _fit_line(list(map(float, steps)), list(steps.values()))
    prefill = _prefill(model)
    _, per_token = _fit_line(list(map(float, prefill)), list(prefill.values()))
    with tempfile.TemporaryDirectory() as tmp:
        tiers = _adapter_tiers(model, Path(tmp))
    fitted = {}
    for tier in ("s3", "disk", "h2d"):
        fixed, per_byte = _fit_line(list(map(float, tiers[tier])), list(tiers[tier].values()))
        fitted[tier] = {"fixed_s": fixed, "bytes_per_s": 1 / per_byte if per_byte > 0 else None}
    print(
        json.dumps(
            {
                "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "torch_threads": torch.get_num_threads(),
                "step_base_s": step_base,
                "step_per_seq_s": step_per_seq,
                "prefill_per_token_s": per_token,
                "tiers": fitted,
                "raw": {
                    "decode_step_s_by_batch": steps,
                    "prefill_s_by_tokens": prefill,
                    **{tier: tiers[tier] for tier in ("s3", "disk", "h2d")},
                    "adapter_bytes_by_rank": tiers["bytes_by_rank"],
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
