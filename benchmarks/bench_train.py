"""``loramux train`` speed: training tokens/s and the time to a published version.

    python -m benchmarks.bench_train [--data examples/moonberry-support.jsonl] [--repeats 2]

The README's example, trained as ``loramux train --local`` does (the same code runs in
the service's Ray task): load the built-in ``tiny-en`` base, train with the default
options, publish the adapter into a store of its own (an embedded redis-server and file
blobs in a temporary directory). Reported per repeat and as the median: training tokens
per second (every token of every batch, prompt included, padding excluded), the seconds
of each phase, and ``end_to_end_s`` from start to the published version. The goal (the first ten
minutes) is an end-to-end time under 120 s on two CPU cores. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from adapter_store import AdapterStore
from adapter_store import StoreSettings
from adapter_store import manifest_from_model
from services.client import TrainingOptions
from services.client import TrainingProgress
from services.engine import TINY_EN_MODEL_NAME
from services.engine import load_base_model
from services.training import parse_training_data
from services.training import train_adapter

ROOT = Path(__file__).resolve().parents[1]


def one_run(data: Path, scratch: Path) -> dict[str, float]:
    started = time.perf_counter()
    base = load_base_model(TINY_EN_MODEL_NAME, device="cpu")
    loaded = time.perf_counter()
    examples = parse_training_data(data.read_text().splitlines())
    options = TrainingOptions()
    steps: list[TrainingProgress] = []
    result = train_adapter(
        base.model,
        base.tokenizer,
        examples,
        options,
        scratch / "adapter",
        base_model_id=TINY_EN_MODEL_NAME,
        on_progress=steps.append,
    )
    trained = time.perf_counter()
    with AdapterStore.from_settings(StoreSettings(data_dir=scratch / "store")) as store:
        store.register_manifest(manifest_from_model(TINY_EN_MODEL_NAME, base.model))
        store.ensure_tenant("bench")
        version = store.push(
            "bench", "moonberry", result.directory, base_model=TINY_EN_MODEL_NAME, origin="trained"
        )
    published = time.perf_counter()
    return {
        "steps": result.steps,
        "train_tokens_per_s": round(result.tokens / (trained - loaded), 1),
        "load_s": round(loaded - started, 2),
        "train_s": round(trained - loaded, 2),
        "publish_s": round(published - trained, 2),
        "end_to_end_s": round(published - started, 2),
        "eval_loss": round(result.eval_loss or 0.0, 4),
        "version": version.version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "examples/moonberry-support.jsonl")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
            runs.append(one_run(args.data, Path(scratch)))
    summary = {
        key: round(statistics.median(run[key] for run in runs), 2)
        for key in ("train_tokens_per_s", "train_s", "end_to_end_s")
    }
    print(
        json.dumps(
            {
                "benchmark": "train",
                "data": str(args.data.relative_to(ROOT)),
                "runs": runs,
                "median": summary,
                "goal_end_to_end_s": 120,
                "goal_met": summary["end_to_end_s"] < 120,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
