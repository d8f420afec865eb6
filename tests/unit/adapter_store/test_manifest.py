"""Base model manifests: built from real models, serialized, and used for all-linear."""

from __future__ import annotations

import pytest

from adapter_store import BaseModelManifest
from adapter_store import InvalidManifestError
from adapter_store import InvalidNameError
from adapter_store import manifest_from_model
from adapter_store import parse_lora_config
from tests.factories import TinyBase

LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16}


@pytest.fixture(scope="module")
def llama_manifest(tiny_base: TinyBase) -> BaseModelManifest:
    return tiny_base.manifest


def test_llama_manifest_lists_every_linear_layer_with_in_out_features(llama_manifest):
    m = llama_manifest
    assert m.base_model == "tiny-llama"
    assert len(m.modules) == 2 * 7 + 1  # q k v o gate up down per layer, and lm_head
    assert m.modules["model.layers.0.self_attn.q_proj"] == (64, 64)
    assert m.modules["model.layers.1.self_attn.k_proj"] == (64, 32)  # 2 kv heads of 16
    assert m.modules["model.layers.0.mlp.down_proj"] == (128, 64)
    assert m.modules["lm_head"] == (64, 256)
    assert m.output_module == "lm_head"


def test_gpt2_conv1d_shapes_are_read_as_in_out():
    import transformers

    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256)
    m = manifest_from_model("tiny-gpt2", transformers.GPT2LMHeadModel(config))
    assert m.modules["transformer.h.0.attn.c_attn"] == (64, 192)
    assert m.modules["transformer.h.1.mlp.c_fc"] == (64, 256)
    assert m.modules["transformer.h.1.mlp.c_proj"] == (256, 64)
    assert m.output_module == "lm_head"


def test_plain_torch_module_has_no_output_head():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    m = manifest_from_model("mlp", model)
    assert dict(m.modules) == {"0": (4, 8), "2": (8, 2)}
    assert m.output_module is None


def test_json_round_trip_is_stable(llama_manifest):
    text = llama_manifest.to_json()
    again = BaseModelManifest.from_json(text)
    assert again == llama_manifest
    assert again.to_json() == text
    reordered = BaseModelManifest(
        "tiny-llama", dict(reversed(list(llama_manifest.modules.items()))), "lm_head"
    )
    assert reordered.to_json() == text


def test_all_linear_leaves_out_the_output_head_but_a_named_head_is_targeted(llama_manifest):
    all_linear = llama_manifest.modules_targeted_by(
        parse_lora_config({**LORA, "target_modules": "all-linear"})
    )
    assert len(all_linear) == 14 and "lm_head" not in all_linear
    named = llama_manifest.modules_targeted_by(
        parse_lora_config({**LORA, "target_modules": ["lm_head", "q_proj"]})
    )
    assert named == (
        "lm_head",
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    )


def test_base_model_id_follows_the_naming_rules():
    with pytest.raises(InvalidNameError, match="invalid base model id"):
        BaseModelManifest("a/b/c", {"x": (1, 2)})
    assert BaseModelManifest("meta-llama/Llama-3.2-1B", {}).modules == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"base_model": "m"}', "a 'modules' object"),
        ('{"base_model": "m", "modules": {"a": [1]}}', "module 'a' has shape [1]"),
        ('{"base_model": "m", "modules": {"a": [0, 4]}}', "module 'a' has shape [0, 4]"),
        ('{"base_model": "m", "modules": {"a": [true, 4]}}', "module 'a' has shape [True, 4]"),
        ('{"base_model": "m", "modules": {"": [1, 4]}}', "empty module name"),
        (
            '{"base_model": "m", "modules": {"a": [1, 4]}, "output_module": "b"}',
            "output_module 'b'",
        ),
    ],
)
def test_malformed_manifests_are_rejected(text, message):
    with pytest.raises(InvalidManifestError) as excinfo:
        BaseModelManifest.from_json(text)
    assert message in str(excinfo.value)
