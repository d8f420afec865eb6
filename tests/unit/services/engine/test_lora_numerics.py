"""Multi-LoRA layers against the real ``peft`` package: same logits within 1e-4 (fp32).

Each PEFT option that changes the LoRA product is checked on its own; mixed batches must
give every row exactly its single-adapter result, and a row without adapter the base
model's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from services.engine import NO_ADAPTER_SLOT
from services.engine import AdapterLoadError
from services.engine import AdapterMismatchError
from services.engine import HostAdapter
from services.engine import MultiLoraModel
from tests.factories import make_peft_adapter
from tests.factories import tiny_llama

ATOL = 1e-4


def tiny_gpt2():  # -> transformers.GPT2LMHeadModel, whose linear layers are Conv1D
    from transformers import GPT2Config
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=256,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def peft_logits(base: torch.nn.Module, adapter_dir: Path, input_ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dir)).eval()
    with torch.no_grad():
        return peft_model(input_ids=input_ids).logits


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def multi(llama: torch.nn.Module) -> MultiLoraModel:
    return MultiLoraModel(copy.deepcopy(llama), max_slots=4, max_rank=64)


@pytest.fixture(scope="module")
def input_ids() -> torch.Tensor:
    return torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(1))


# Every option of the LoRA product that PEFT applies, one at a time.
LLAMA_OPTIONS: dict[str, dict[str, Any]] = {
    "list-targets": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    "regex-targets": {"r": 4, "lora_alpha": 8, "target_modules": r".*\.(k_proj|down_proj)"},
    "all-linear": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
    "rslora": {
        "r": 16,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "o_proj"],
        "use_rslora": True,
    },
    "rank-and-alpha-pattern": {
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj", "up_proj"],
        "rank_pattern": {"v_proj": 4, r"layers\.1\.self_attn\.q_proj": 32},
        "alpha_pattern": {"up_proj": 3.0, "q_proj": 64},
    },
    "layers-to-transform": {
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "gate_proj"],
        "layers_to_transform": [1],
    },
    "max-rank": {"r": 64, "lora_alpha": 16, "target_modules": ["v_proj"]},
}


@pytest.mark.parametrize("option", sorted(LLAMA_OPTIONS))
def test_adapter_in_a_slot_matches_peft(
    option: str, llama, multi: MultiLoraModel, input_ids, tmp_path: Path
) -> None:
    adapter_dir = make_peft_adapter(llama, tmp_path / option, **LLAMA_OPTIONS[option])
    expected = peft_logits(llama, adapter_dir, input_ids)
    multi.load_slot(1, HostAdapter.from_dir(option, adapter_dir, multi))

    got = multi.forward(input_ids, [1, 1, 1]).logits

    with torch.no_grad():
        base = llama(input_ids=input_ids).logits
    assert (expected - base).abs().max() > 1e-2, "the adapter must change the output"
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_conv1d_fan_in_fan_out_matches_peft(tmp_path: Path, input_ids) -> None:
    gpt2 = tiny_gpt2()
    adapter_dir = make_peft_adapter(
        gpt2,
        tmp_path / "gpt2",
        r=8,
        lora_alpha=16,
        target_modules=["c_attn", "c_fc"],
        fan_in_fan_out=True,
    )
    expected = peft_logits(gpt2, adapter_dir, input_ids)
    multi = MultiLoraModel(copy.deepcopy(gpt2), max_slots=2)
    multi.load_slot(0, HostAdapter.from_dir("gpt2", adapter_dir, multi))

    got = multi.forward(input_ids, [0, 0, 0]).logits

    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert "lm_head" not in multi.layers and "transformer.h.0.attn.c_attn" in multi.layers


def test_mixed_batch_gives_each_row_its_own_adapter(
    llama, multi: MultiLoraModel, input_ids, tmp_path: Path
) -> None:
    small = make_peft_adapter(llama, tmp_path / "small", seed=1, r=8, lora_alpha=16)
    large = make_peft_adapter(
        llama, tmp_path / "large", seed=2, r=32, lora_alpha=16, target_modules="all-linear"
    )
    multi.load_slot(0, HostAdapter.from_dir("small", small, multi))
    multi.load_slot(3, HostAdapter.from_dir("large", large, multi))

    got = multi.forward(input_ids, [3, NO_ADAPTER_SLOT, 0]).logits

    with torch.no_grad():
        base = llama(input_ids=input_ids).logits
    torch.testing.assert_close(got[0], peft_logits(llama, large, input_ids)[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(got[1], base[1], atol=0, rtol=0)
    torch.testing.assert_close(got[2], peft_logits(llama, small, input_ids)[2], atol=ATOL, rtol=0)


def test_reloading_a_slot_with_smaller_rank_leaves_nothing_behind(
    llama, multi: MultiLoraModel, input_ids, tmp_path: Path
) -> None:
    wide = make_peft_adapter(llama, tmp_path / "wide", seed=3, r=64, target_modules="all-linear")
    narrow = make_peft_adapter(llama, tmp_path / "narrow", seed=4, r=4, target_modules=["q_proj"])
    multi.load_slot(2, HostAdapter.from_dir("wide", wide, multi))
    multi.load_slot(2, HostAdapter.from_dir("narrow", narrow, multi))

    got = multi.forward(input_ids, [2, 2, 2]).logits

    torch.testing.assert_close(got, peft_logits(llama, narrow, input_ids), atol=ATOL, rtol=0)
    multi.clear_slot(2)
    with torch.no_grad():
        base = llama(input_ids=input_ids).logits
    torch.testing.assert_close(multi.forward(input_ids, [2, 2, 2]).logits, base, atol=0, rtol=0)


def test_host_adapter_folds_scaling_and_reports_its_size(
    llama, multi: MultiLoraModel, tmp_path: Path
) -> None:
    adapter_dir = make_peft_adapter(llama, tmp_path / "a", r=8, lora_alpha=4, use_rslora=True)

    adapter = HostAdapter.from_dir("acme/a@1", adapter_dir, multi)

    path = "model.layers.0.self_attn.q_proj"
    a_t, b_t = adapter.modules[path]
    assert a_t.shape == (64, 8) and b_t.shape == (8, 64)
    from safetensors.torch import load_file

    raw_b = load_file(str(adapter_dir / "adapter_model.safetensors"))[
        f"base_model.model.{path}.lora_B.weight"
    ]
    torch.testing.assert_close(b_t, raw_b.t() * (4 / 8**0.5))
    assert adapter.key == "acme/a@1" and adapter.max_rank == 8
    assert adapter.size_bytes == sum(a.nbytes + b.nbytes for a, b in adapter.modules.values())
    assert len(adapter.modules) == 4  # q_proj and v_proj of two layers


def test_adapter_for_another_model_is_incompatible(multi: MultiLoraModel, tmp_path: Path) -> None:
    wider = tiny_llama(hidden_size=128, intermediate_size=256)
    adapter_dir = make_peft_adapter(wider, tmp_path / "wider")

    with pytest.raises(AdapterMismatchError, match=r"q_proj.*\(8, 128\)"):
        HostAdapter.from_dir("wider", adapter_dir, multi)


def test_rank_above_max_rank_is_incompatible(llama, tmp_path: Path) -> None:
    small_slots = MultiLoraModel(copy.deepcopy(llama), max_slots=1, max_rank=8)
    adapter_dir = make_peft_adapter(llama, tmp_path / "r16", r=16)

    with pytest.raises(AdapterMismatchError, match="max_rank 8"):
        HostAdapter.from_dir("r16", adapter_dir, small_slots)


def test_dora_adapter_is_rejected(llama, multi: MultiLoraModel, tmp_path: Path) -> None:
    adapter_dir = make_peft_adapter(llama, tmp_path / "dora", use_dora=True)

    with pytest.raises(AdapterMismatchError, match="use_dora"):
        HostAdapter.from_dir("dora", adapter_dir, multi)


@pytest.mark.parametrize(
    ("config_change", "message"),
    [
        ({"target_modules": ["q_proj"]}, "v_proj.*which its config does not target"),
        ({"r": 4}, r"lora_A \(8, 64\).*need \(4, 64\)"),
    ],
)
def test_config_that_disagrees_with_the_weights_is_incompatible(
    llama, multi: MultiLoraModel, tmp_path: Path, config_change: dict, message: str
) -> None:
    import json

    adapter_dir = make_peft_adapter(llama, tmp_path / "edited")
    config_path = adapter_dir / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **config_change}))

    with pytest.raises(AdapterMismatchError, match=message):
        HostAdapter.from_dir("edited", adapter_dir, multi)


def test_extra_tensors_are_rejected(llama, multi: MultiLoraModel, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from safetensors.torch import save_file

    adapter_dir = make_peft_adapter(llama, tmp_path / "extra")
    weights = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({**tensors, "base_model.model.lm_head.weight": torch.zeros(256, 64)}, str(weights))

    with pytest.raises(AdapterMismatchError, match="unsupported tensors"):
        HostAdapter.from_dir("extra", adapter_dir, multi)


def test_missing_files_are_a_load_error(multi: MultiLoraModel, tmp_path: Path) -> None:
    with pytest.raises(AdapterLoadError, match="cannot read"):
        HostAdapter.from_dir("gone", tmp_path / "nothing-here", multi)


def test_slot_arguments_are_checked(multi: MultiLoraModel, input_ids) -> None:
    with pytest.raises(ValueError, match="slot must be"):
        multi.clear_slot(4)
    with pytest.raises(ValueError, match="slot ids out of range"):
        multi.forward(input_ids, [0, 4, 0])
    with pytest.raises(ValueError, match="3 rows"):
        multi.forward(input_ids, [0])
