"""Quantized base loading: pre-quantized checkpoints, every refused combination, and the
GPU-slot arithmetic."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from services.engine import CPU_DEFAULT_SLOTS
from services.engine import BaseModelLoadError
from services.engine import VllmQuantization
from services.engine import derive_gpu_slots
from services.engine import ensure_tiny_model
from services.engine import kv_cache_bytes_per_token
from services.engine import load_base_model
from services.engine import lora_slot_bytes
from services.engine import plan_gpu_slots
from services.engine import plan_quantization
from services.engine import plan_vllm_quantization

pytest.importorskip("bitsandbytes", reason="bitsandbytes is a server dependency")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


def with_quantization_config(tiny_dir: Path, target: Path, spec: dict) -> Path:
    """A copy of ``tiny`` whose config.json claims ``spec`` as quantization_config."""
    shutil.copytree(tiny_dir, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "quantization_config": spec}))
    return target


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_pre_quantized_checkpoint_loads_as_it_is(
    tiny_dir: Path, tmp_path: Path, quantization: str
) -> None:
    quantized = load_base_model(tiny_dir, quantize=quantization, device="cpu")
    saved = tmp_path / f"tiny-{quantization}"
    quantized.model.save_pretrained(str(saved))
    quantized.tokenizer.save_pretrained(str(saved))

    again = load_base_model(saved, device="cpu", name="tiny")

    assert again.quantization == again.manifest.quantization == quantization
    assert again.weight_bytes == quantized.weight_bytes
    assert (saved / "model.safetensors").stat().st_size < 0.6 * again.full_precision_bytes
    input_ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(
            again.model(input_ids=input_ids).logits,
            quantized.model(input_ids=input_ids).logits,
            atol=0,
            rtol=0,
        )
    # Asking for the kind it already is changes nothing.
    assert load_base_model(saved, quantize=quantization, device="cpu").quantization == quantization


def test_unquantized_load_reports_its_bytes(tiny_dir: Path) -> None:
    base = load_base_model(tiny_dir, device="cpu")

    params = sum(p.numel() * p.element_size() for p in base.model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in base.model.buffers())  # rotary
    assert base.quantization == base.manifest.quantization == "none"
    assert base.full_precision_bytes == params
    assert base.weight_bytes == params + buffers


# -- refusals: one per unsupported combination, each before any weight is read ----------


def test_unknown_quantization_is_refused(tiny_dir: Path) -> None:
    with pytest.raises(BaseModelLoadError, match=r"quantize must be one of none, nf4, int8.*'fp8'"):
        load_base_model(tiny_dir, quantize="fp8")


@pytest.mark.parametrize(("method", "name"), [("awq", "AWQ"), ("gptq", "GPTQ")])
def test_awq_and_gptq_checkpoints_are_refused(
    tiny_dir: Path, tmp_path: Path, method: str, name: str
) -> None:
    path = with_quantization_config(
        tiny_dir, tmp_path / method, {"quant_method": method, "bits": 4}
    )

    with pytest.raises(BaseModelLoadError, match=rf"{name} checkpoint.*engine 'vllm'"):
        plan_quantization(path, "none")


def test_other_quantization_methods_are_refused(tiny_dir: Path, tmp_path: Path) -> None:
    path = with_quantization_config(tiny_dir, tmp_path / "fp8", {"quant_method": "fp8"})

    with pytest.raises(BaseModelLoadError, match="'fp8' checkpoint"):
        load_base_model(path)


@pytest.mark.parametrize(("saved", "asked"), [("int8", "nf4"), ("nf4", "int8")])
def test_requantizing_a_bitsandbytes_checkpoint_is_refused(
    tiny_dir: Path, tmp_path: Path, saved: str, asked: str
) -> None:
    spec = (
        {"quant_method": "bitsandbytes", "load_in_8bit": True}
        if saved == "int8"
        else {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    )
    path = with_quantization_config(tiny_dir, tmp_path / saved, spec)

    with pytest.raises(BaseModelLoadError, match=rf"already quantized as {saved}.*'none'"):
        plan_quantization(path, asked)


def test_quantizing_without_bitsandbytes_is_refused(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a),
    )

    with pytest.raises(BaseModelLoadError, match="needs the bitsandbytes package"):
        plan_quantization(tiny_dir, "nf4")
    assert plan_quantization(tiny_dir, "none").label == "none"


# -- GPU-slot sizing ---------------------------------------------------------------------


def test_slot_bytes_count_a_and_b_of_every_module() -> None:
    shapes = {"q": (4096, 4096), "k": (4096, 1024)}

    assert lora_slot_bytes(shapes, max_rank=16, dtype_bytes=2) == (8192 + 5120) * 16 * 2


def test_kv_bytes_per_token_use_kv_heads_and_head_dim() -> None:
    llama3_8b = SimpleNamespace(
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_size=4096
    )
    explicit_head_dim = SimpleNamespace(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=None, head_dim=32
    )

    assert kv_cache_bytes_per_token(llama3_8b, 2) == 2 * 32 * 8 * 128 * 2  # 128 KiB
    assert kv_cache_bytes_per_token(explicit_head_dim, 4) == 2 * 2 * 4 * 32 * 4


def test_derived_slots_fill_what_headroom_and_kv_leave() -> None:
    mib = 1 << 20
    # 1000 MiB free, 10% headroom, 400 MiB KV: 500 MiB for slots of 10 MiB, one of them
    # the empty slot.
    assert (
        derive_gpu_slots(free_bytes=1000 * mib, slot_bytes=10 * mib, kv_reserve_bytes=400 * mib)
        == 49
    )
    # The memory a quantized base frees becomes slots.
    assert (
        derive_gpu_slots(free_bytes=2000 * mib, slot_bytes=10 * mib, kv_reserve_bytes=400 * mib)
        == 139
    )
    assert (
        derive_gpu_slots(free_bytes=1 << 40, slot_bytes=mib, kv_reserve_bytes=0, max_slots=64) == 64
    )


def test_no_room_for_a_slot_is_refused_with_the_numbers() -> None:
    with pytest.raises(BaseModelLoadError, match=r"no adapter slot fits.*set gpu_slots"):
        derive_gpu_slots(free_bytes=100, slot_bytes=50, kv_reserve_bytes=50)


@pytest.mark.parametrize(
    "arguments",
    [
        {"free_bytes": -1, "slot_bytes": 1, "kv_reserve_bytes": 0},
        {"free_bytes": 1, "slot_bytes": 0, "kv_reserve_bytes": 0},
        {"free_bytes": 1, "slot_bytes": 1, "kv_reserve_bytes": 0, "headroom_fraction": 1.0},
    ],
)
def test_bad_sizing_arguments_are_value_errors(arguments: dict) -> None:
    with pytest.raises(ValueError):
        derive_gpu_slots(**arguments)


def test_slot_plan_on_cpu_is_the_explicit_value_or_the_default(tiny_dir: Path) -> None:
    base = load_base_model(tiny_dir, device="cpu")

    assert plan_gpu_slots(base, max_rank=64, max_batch_tokens=4096) == CPU_DEFAULT_SLOTS
    assert plan_gpu_slots(base, max_rank=64, max_batch_tokens=4096, explicit=3) == 3


def test_int8_does_not_log_its_expected_cast_on_every_matmul(
    tiny_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = load_base_model(tiny_dir, quantize="int8", device="cpu")

    with caplog.at_level("WARNING"), torch.no_grad():
        base.model(input_ids=torch.tensor([[5, 6, 7]]))

    assert not [r for r in caplog.records if "will be cast" in r.getMessage()]


# -- the vllm engine: what vLLM runs, refused before it starts otherwise -----------------

WITH_BNB = ["awq", "gptq", "bitsandbytes"]


@pytest.mark.parametrize(
    ("quantize", "methods", "cuda", "match"),
    [
        ("nf4", WITH_BNB, False, "'nf4' on engine 'vllm' needs .* on a CUDA GPU"),
        ("nf4", ["awq", "gptq"], True, "'nf4' on engine 'vllm' needs .* in this vLLM build"),
        ("int8", WITH_BNB, True, "'int8' on engine 'vllm' has no counterpart in vLLM"),
        ("int8", WITH_BNB, False, "'int8' on engine 'vllm' has no counterpart in vLLM"),
        ("fp8", WITH_BNB, True, "quantize must be one of"),
    ],
)
def test_vllm_refuses_what_it_cannot_quantize_naming_the_fix(
    tiny_dir: Path, quantize: str, methods: list[str], cuda: bool, match: str
) -> None:
    with pytest.raises(BaseModelLoadError, match=match) as refused:
        plan_vllm_quantization(tiny_dir, quantize, methods=methods, cuda=cuda)
    assert quantize == "fp8" or "choose engine 'hf'" in str(refused.value)


def test_vllm_quantizes_nf4_in_flight_with_bitsandbytes_on_cuda(tiny_dir: Path) -> None:
    plan = plan_vllm_quantization(tiny_dir, "nf4", methods=WITH_BNB, cuda=True)
    unquantized = plan_vllm_quantization(tiny_dir, "none", methods=[], cuda=False)

    assert plan == VllmQuantization("nf4", "bitsandbytes")
    assert unquantized == VllmQuantization("none", None)


@pytest.mark.parametrize("method", ["awq", "gptq", "compressed-tensors"])
def test_vllm_loads_a_saved_quantized_checkpoint_as_it_is(
    tiny_dir: Path, tmp_path: Path, method: str
) -> None:
    path = with_quantization_config(tiny_dir, tmp_path / method, {"quant_method": method})

    plan = plan_vllm_quantization(path, "none", methods=WITH_BNB, cuda=False)
    with pytest.raises(BaseModelLoadError, match=f"already quantized as {method}"):
        plan_vllm_quantization(path, "nf4", methods=WITH_BNB, cuda=True)

    # vLLM reads the method from the checkpoint; the manifest shows it.
    assert plan == VllmQuantization(method, None)
