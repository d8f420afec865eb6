"""Measure the constants of the simulator's ``cpu`` cost profile through our engine.

Everything runs on the built-in ``tiny`` base model (hidden 64, 2 layers, 4 query and 2
KV heads, fp32 on CPU) wrapped in :class:`MultiLoraModel`, with the measurement
functions of :mod:`benchmarks.bench_engine`:

* decode step: :func:`bench_step_time`'s ``lora_mixed`` points, one decode step with
  every row on a distinct adapter, batch 1..32; a least-squares line gives
  ``step_base_s`` and ``step_per_seq_s``;
* prefill: :func:`bench_prefill`, one prompt of 16..256 tokens through the same
  forward; the slope is ``prefill_per_token_s``;
* adapter loads: :func:`bench_loads`, real PEFT adapters of rank 8/16/32/64 on
  q,k,v,o: a cold ``DiskCache.ensure`` from the embedded ``file://`` blob store (copy
  plus sha256) stands for the S3 fetch, ``HostAdapter.from_dir`` is disk -> host and
  ``MultiLoraModel.load_slot`` is host -> slot (on CPU the "device" is host memory).
  Each point is the fastest of ``--repeats`` rounds of the median of ``--load-repeats``
  loads; a line through the four sizes (the adapters' tensor bytes) gives each tier's
  fixed cost and bytes per second.

Prints one JSON object with the fitted constants and the raw medians (milliseconds).
Run: ``python -m benchmarks.calibrate_cpu_profile`` (torch on 1 thread by default).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_engine import BATCH_SIZES
from benchmarks.bench_engine import RANKS
from benchmarks.bench_engine import bench_loads
from benchmarks.bench_engine import bench_prefill
from benchmarks.bench_engine import bench_step_time
from benchmarks.bench_engine import load_distinct_adapters
from services.engine import MultiLoraModel
from services.engine import load_base_model

# Profile tier -> bench_loads key.
_TIERS = {"s3": "blob_fetch_ms", "disk": "disk_to_host_ms", "h2d": "host_to_slot_ms"}


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope of ``ys`` over ``xs``."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    return mean_y - slope * mean_x, slope


def _fit_ms(points: dict[str, float]) -> tuple[float, float]:
    """Intercept (s) and slope (s per unit of x) of ``{str(x): milliseconds}``."""
    return _fit_line([float(x) for x in points], [ms / 1000 for ms in points.values()])


def _fastest(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per rank and tier, the fastest round's median: like :func:`bench_step_time`, the
    round least disturbed by other processes on a shared machine."""
    return {
        rank: {key: min(r[rank][key] for r in rounds) for key in point}
        for rank, point in rounds[0].items()
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds per point (fastest kept)")
    parser.add_argument("--steps", type=int, default=20, help="runs per round (median)")
    parser.add_argument("--load-repeats", type=int, default=100, help="runs per adapter load")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="calibrate-cpu-") as tmp:
        work = Path(tmp)
        base = load_base_model("tiny", models_dir=work / "models")
        plain = copy.deepcopy(base.model)
        model = MultiLoraModel(base.model, max_slots=max(BATCH_SIZES), max_rank=max(RANKS))
        load_distinct_adapters(model, plain, work)
        steps = bench_step_time(model, base.tokenizer, args)["lora_mixed"]
        prefill = bench_prefill(model, args)
        slot_model = MultiLoraModel(copy.deepcopy(plain), max_slots=1)
        rounds = [
            bench_loads(slot_model, plain, work / f"loads-{i}", args.load_repeats)
            for i in range(args.repeats)
        ]
    loads = _fastest(rounds)

    step_base_s, step_per_seq_s = _fit_ms(steps)
    _, prefill_per_token_s = _fit_ms(prefill)
    tiers = {}
    for tier, key in _TIERS.items():
        fixed_s, seconds_per_byte = _fit_ms({str(p["size_bytes"]): p[key] for p in loads.values()})
        tiers[tier] = {
            "fixed_s": fixed_s,
            "bytes_per_s": 1 / seconds_per_byte if seconds_per_byte > 0 else None,
        }
    return {
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["python -m benchmarks.calibrate_cpu_profile", *(argv or [])]),
        "torch_threads": torch.get_num_threads(),
        "model": base.name,
        "step_base_s": step_base_s,
        "step_per_seq_s": step_per_seq_s,
        "prefill_per_token_s": prefill_per_token_s,
        "bytes_per_rank": {rank: p["size_bytes"] / int(rank) for rank, p in loads.items()},
        "tiers": tiers,
        "raw_ms": {"decode_step_by_batch": steps, "prefill_by_tokens": prefill, "loads": loads},
    }


if __name__ == "__main__":
    json.dump(main(sys.argv[1:]), sys.stdout, indent=2)
    sys.stdout.write("\n")
