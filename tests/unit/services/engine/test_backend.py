"""The engine seam as a replica uses it: settings -> options -> the hf backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from services._settings import ServiceSettings
from services.engine import CPU_DEFAULT_SLOTS
from services.engine import BaseModelLoadError
from services.engine import CacheHooks
from services.engine import EngineOptions
from services.engine import GenerationRequest
from services.engine import SamplingParams
from services.engine import open_engine
from services.engine import vllm_installed
from services.serve import engine_options


def no_fetch(version: object) -> Path:
    raise AssertionError("no adapter is fetched here")


def test_a_replicas_options_come_from_its_settings(tmp_path: Path) -> None:
    settings = ServiceSettings(
        models_dir=tmp_path, gpu_slots=3, quantize="int8", max_lora_rank=16, max_batch_size=5
    )

    options = engine_options(settings)

    assert (options.base_model, options.name, options.models_dir) == ("tiny", "tiny", tmp_path)
    assert (options.gpu_slots, options.quantize, options.max_lora_rank) == (3, "int8", 16)
    assert options.max_batch_size == 5


async def test_the_hf_backend_sizes_its_slots_and_reports_the_base(tmp_path: Path) -> None:
    options = EngineOptions(base_model="tiny", models_dir=tmp_path, gpu_slots=None, device="cpu")

    engine = open_engine("hf", options, CacheHooks(fetch_to_disk=no_fetch))
    async with engine:
        result = await engine.complete(
            GenerationRequest(prompt="Hi", sampling=SamplingParams(max_tokens=3, min_tokens=3))
        )

    assert engine.kind == "hf" and engine.gpu_slots == CPU_DEFAULT_SLOTS
    assert engine.cache.residency().gpu == {}
    facts = engine.facts
    assert (facts.manifest.base_model, facts.manifest.quantization) == ("tiny", "none")
    # Unquantized, what the base holds is its full-precision size (up to the norms).
    assert abs(facts.weight_bytes - facts.full_precision_bytes) < facts.weight_bytes / 100
    assert result.usage.completion_tokens == 3


def test_vllm_without_vllm_installed_names_what_to_install(tmp_path: Path) -> None:
    if vllm_installed():
        pytest.skip("vLLM is installed here: the refusal cannot happen")
    options = EngineOptions(base_model="tiny", models_dir=tmp_path)

    with pytest.raises(BaseModelLoadError, match=r"engine 'vllm' needs vLLM: pip install"):
        open_engine("vllm", options, CacheHooks(fetch_to_disk=no_fetch))
