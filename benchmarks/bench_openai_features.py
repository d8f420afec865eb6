"""Cost of the OpenAI request features on decode throughput: grammars and penalties.

Prints one JSON object. 32 concurrent requests, each on its own adapter (ranks 8-64),
through :class:`Engine` end to end, in one process; every scenario is the same prompts,
adapters and ``max_tokens``, and differs only in the feature:

- ``plain``: no feature (the baseline);
- ``structured``: every row constrained by a JSON schema (xgrammar, one matcher per row);
- ``structured_half``: half the rows constrained, half free (a mixed batch);
- ``penalties``: presence, frequency and repetition penalties and a logit bias on every row.

Decode tokens/s is completion tokens over wall time. A constrained row may finish before
``max_tokens`` (its document is complete), so the schema's string is unbounded and long
rows dominate; ``mean_completion_tokens`` shows how long rows ran. Scenarios are
interleaved over ``--repeats`` rounds and the median taken, so machine load drifts hit
all alike. Goal: ``structured`` / ``plain`` >= 0.85 (grammars cost at most 15%).

Run: ``python -m benchmarks.bench_openai_features`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import platform
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
from benchmarks.bench_engine import _PreloadedSlots
from benchmarks.bench_engine import _prompt
from benchmarks.bench_engine import load_distinct_adapters
from services.engine import Engine
from services.engine import GenerationRequest
from services.engine import Grammar
from services.engine import MultiLoraModel
from services.engine import SamplingParams
from services.engine import load_base_model

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 4},
        "text": {"type": "string"},
    },
    "required": ["id", "tags", "text"],
    "additionalProperties": False,
}
PENALTIES = {
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "repetition_penalty": 1.2,
    "logit_bias": {65: 2.0, 66: -2.0},
}


def scenarios(batch: int, max_tokens: int) -> dict[str, list[GenerationRequest]]:
    grammar = Grammar.json_schema(SCHEMA)

    def requests(feature_of) -> list[GenerationRequest]:
        return [
            GenerationRequest(
                prompt=_prompt(i),
                adapter=bench_version(i),
                sampling=SamplingParams(
                    max_tokens=max_tokens, temperature=1.0, seed=i, ignore_eos=True, **feature_of(i)
                ),
            )
            for i in range(batch)
        ]

    return {
        "plain": requests(lambda i: {}),
        "structured": requests(lambda i: {"grammar": grammar}),
        "structured_half": requests(lambda i: {"grammar": grammar} if i % 2 else {}),
        "penalties": requests(lambda i: PENALTIES),
    }


async def run(engine: Engine, requests: list[GenerationRequest]) -> tuple[float, float]:
    """(decode tokens/s, mean completion tokens) of the requests run concurrently."""
    start = time.perf_counter()
    results = await asyncio.gather(*(engine.complete(r) for r in requests))
    elapsed = time.perf_counter() - start
    tokens = [r.usage.completion_tokens for r in results]
    return sum(tokens) / elapsed, statistics.mean(tokens)


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = decode_parser(__doc__.splitlines()[0], max_tokens=64, threads=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.max_tokens, args.repeats = 8, 16, 1
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-openai-"))
    base = load_base_model("tiny", models_dir=work / "models")
    plain = copy.deepcopy(base.model)  # before the LoRA layers wrap it: PEFT needs nn.Linear
    model = MultiLoraModel(base.model, max_slots=args.batch, max_rank=max(RANKS))
    slots = load_distinct_adapters(model, plain, work)
    cases = scenarios(args.batch, args.max_tokens)
    rates: dict[str, list[float]] = {name: [] for name in cases}
    lengths: dict[str, list[float]] = {name: [] for name in cases}
    async with Engine(base, model, _PreloadedSlots(slots), max_batch_size=args.batch) as engine:
        for requests in cases.values():  # warm-up: first compile, first matcher
            await run(engine, requests[:4])
        for _ in range(args.repeats):
            for name, requests in cases.items():
                rate, mean_tokens = await run(engine, requests)
                rates[name].append(rate)
                lengths[name].append(mean_tokens)
    tokens_per_s = {name: statistics.median(values) for name, values in rates.items()}
    ratios = {
        f"{name}_over_plain": round(rate / tokens_per_s["plain"], 3)
        for name, rate in tokens_per_s.items()
        if name != "plain"
    }
    return {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "batch": args.batch,
        "max_tokens": args.max_tokens,
        "tokens_per_s": {name: round(rate, 1) for name, rate in tokens_per_s.items()},
        "mean_completion_tokens": {
            name: round(statistics.mean(values), 1) for name, values in lengths.items()
        },
        "ratios": ratios,
        "goals": {
            "structured_over_plain_min": 0.85,
            "met": ratios["structured_over_plain"] >= 0.85,
        },
    }


if __name__ == "__main__":
    json.dump(asyncio.run(main(sys.argv[1:])), sys.stdout, indent=2)
    sys.stdout.write("\n")
