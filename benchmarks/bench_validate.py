"""Push-time validation of a real rank-64 PEFT adapter: this tree vs a baseline git ref.

Builds a Llama-shaped model from a config (random weights, nothing downloaded), saves a
rank-64 ``all-linear`` PEFT adapter for it, then times ``validate_adapter`` on it (read
from memory, with the base model manifest) in two fresh interpreters: one importing
``adapter_store`` from this tree, one from ``--baseline-ref`` (default: the commit
before the hardening work, whose validation used Python's ``re`` and no value bounds),
extracted with ``git archive``. Sides alternate, each repetition in its own process.

Prints one JSON object: the adapter's size, each side's median seconds, and the ratio
of the medians (current / baseline).

Usage: python benchmarks/bench_validate.py [--repetitions 5] [--baseline-ref 166f4b4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Validation of the adapter in ARGV[1] against the manifest in ARGV[2]; prints seconds.
_TIMED = """
import sys, time
from pathlib import Path
from adapter_store import BaseModelManifest, read_adapter_source, validate_adapter
files = read_adapter_source(Path(sys.argv[1]))
manifest = BaseModelManifest.from_json(Path(sys.argv[2]).read_text())
started = time.perf_counter()
validate_adapter(files, manifest)
print(time.perf_counter() - started)
"""


def make_adapter(out: Path) -> Path:
    """A rank-64 adapter on every linear layer of a 12-layer, 1024-wide Llama."""
    import torch
    import transformers
    from peft import LoraConfig
    from peft import get_peft_model

    from adapter_store import manifest_from_model

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=1024,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    (out / "manifest.json").write_text(manifest_from_model("bench-llama", model).to_json())
    peft_model = get_peft_model(
        model, LoraConfig(r=64, lora_alpha=128, target_modules="all-linear")
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero; a trained adapter's is not
                param.normal_(0, 0.01)
    peft_model.save_pretrained(str(out / "adapter"))
    return out / "adapter"


def time_once(code_root: Path, adapter: Path, manifest: Path) -> float:
    """One validation in a fresh interpreter whose ``adapter_store`` comes from
    ``code_root`` (the script runs from there, so it shadows any installed copy)."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    result = subprocess.run(
        [sys.executable, "-c", _TIMED, str(adapter), str(manifest)],
        cwd=code_root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--baseline-ref", default="166f4b4")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="loramux-bench-validate-") as tmp:
        work = Path(tmp)
        baseline = work / "baseline"
        baseline.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline_ref, "adapter_store"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        adapter = make_adapter(work)
        manifest = work / "manifest.json"
        times: dict[str, list[float]] = {"current": [], "baseline": []}
        sides = [("current", ROOT), ("baseline", baseline)]
        for repetition in range(args.repetitions):
            for name, code_root in sides if repetition % 2 == 0 else sides[::-1]:
                times[name].append(time_once(code_root, adapter, manifest))
        size = sum(f.stat().st_size for f in adapter.iterdir())

    current, base = statistics.median(times["current"]), statistics.median(times["baseline"])
    print(
        json.dumps(
            {
                "adapter_bytes": size,
                "rank": 64,
                "baseline_ref": args.baseline_ref,
                "repetitions": args.repetitions,
                "current_median_s": round(current, 4),
                "baseline_median_s": round(base, 4),
                "ratio_current_over_baseline": round(current / base, 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
