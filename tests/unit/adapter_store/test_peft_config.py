"""adapter_config.json parsing, and its semantics checked against PEFT's own functions."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from adapter_store import ALL_LINEAR
from adapter_store import InvalidConfigError
from adapter_store import LoraSpec
from adapter_store import UnsupportedFeatureError
from adapter_store import parse_lora_config
from adapter_store._peft_config import _UNSUPPORTED_FIELDS

MINIMAL = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}

MODULE_PATHS = [
    "q_proj",
    "lm_head",
    "model.embed_tokens",
    "model.layers.0.self_attn.q_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.self_attn.v_proj",
    "model.layers.3.self_attn.q_proj",
    "model.layers.12.mlp.down_proj",
    "model.layers.0.self_attn.q_proj_extra",
    "model.layers.0.self_attn.xq_proj",
    "model.layers.3.block_sparse_moe.experts.1.w1",
    "model.layers.1.block_sparse_moe.experts.3.w1",
    "transformer.h.0.attn.c_attn",
    "transformer.h.1.attn.c_attn",
    "model.decoder.layers.2.fc1",
]

# LoraConfig keyword sets covering every branch of PEFT's target matching.
TARGET_CONFIGS: list[dict[str, Any]] = [
    {"target_modules": ["q_proj", "v_proj"]},
    {"target_modules": ["q_proj"], "layers_to_transform": [1, 3]},
    {"target_modules": ["q_proj", "w1"], "layers_to_transform": 1, "layers_pattern": "layers"},
    {"target_modules": ["w1"], "layers_to_transform": [3], "layers_pattern": "experts"},
    {
        "target_modules": ["q_proj", "c_attn"],
        "layers_to_transform": [0],
        "layers_pattern": ["h", "layers"],
    },
    {"target_modules": r".*\.(q|k)_proj"},
    {
        "target_modules": ["model.layers.0.self_attn.q_proj", "down_proj"],
        "layers_to_transform": [12],
    },
    {"target_modules": ["model.layers.0.self_attn.q_proj", "q_proj"], "layers_to_transform": [3]},
    {"target_modules": ["q_proj", "down_proj"], "exclude_modules": ["down_proj"]},
    {"target_modules": r".*proj", "exclude_modules": r".*layers\.0\..*"},
    {"target_modules": ["self_attn.q_proj", "lm_head"]},
]


def peft_saved_config(**lora_kwargs: Any) -> dict[str, Any]:
    """The adapter_config.json PEFT would write for ``LoraConfig(**lora_kwargs)``."""
    from peft import LoraConfig

    config = LoraConfig(**lora_kwargs).to_dict()
    # PeftConfig.save_pretrained turns sets into lists the same way.
    return json.loads(json.dumps(config, default=sorted))


@pytest.mark.parametrize("kwargs", TARGET_CONFIGS, ids=lambda k: str(k["target_modules"])[:30])
def test_targets_agree_with_peft(kwargs):
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    peft_config = LoraConfig(**kwargs)
    spec = parse_lora_config(peft_saved_config(**kwargs))
    for path in MODULE_PATHS:
        assert spec.targets(path) == bool(check_target_module_exists(peft_config, path)), path


def test_rank_alpha_and_scaling_agree_with_peft_pattern_rules():
    from peft.utils.other import get_pattern_key

    rank_pattern = {
        "q_proj": 4,
        "layers.1.self_attn.v_proj": 2,
        r"layers\.\d+\.mlp\..*": 3,
        "proj": 5,
    }
    alpha_pattern = {"v_proj": 7, r"model\.layers\.12\..*": 1.5}
    spec = parse_lora_config(
        {**MINIMAL, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern, "lora_alpha": 16}
    )
    for path in MODULE_PATHS:
        rank = rank_pattern.get(get_pattern_key(rank_pattern.keys(), path), 8)
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), path), 16)
        assert (spec.rank_for(path), spec.alpha_for(path)) == (rank, alpha), path
        assert spec.scaling_for(path) == alpha / rank
    assert spec.rank_for("model.layers.0.self_attn.q_proj") == 4
    assert spec.rank_for("model.layers.1.self_attn.v_proj") == 2
    assert spec.max_rank == 8


def test_rslora_scales_by_the_square_root_of_each_modules_rank():
    spec = parse_lora_config(
        {**MINIMAL, "r": 16, "lora_alpha": 8, "use_rslora": True, "rank_pattern": {"v_proj": 4}}
    )
    assert spec.scaling_for("a.q_proj") == 8 / math.sqrt(16)
    assert spec.scaling_for("a.v_proj") == 8 / math.sqrt(4)


def test_a_real_peft_config_parses_and_unknown_fields_are_ignored():
    config = peft_saved_config(
        r=4, lora_alpha=32, target_modules=["q_proj"], fan_in_fan_out=True, lora_dropout=0.1
    )
    config["some_future_peft_field"] = {"anything": [1, 2]}
    spec = parse_lora_config(json.dumps(config).encode())
    assert spec == LoraSpec(r=4, lora_alpha=32, target_modules=("q_proj",), fan_in_fan_out=True)


def test_all_linear_is_recognized_in_any_case():
    spec = parse_lora_config({**MINIMAL, "target_modules": "ALL-Linear"})
    assert spec.target_modules == ALL_LINEAR and spec.targets_all_linear
    assert spec.targets("anything.at.all")


@pytest.mark.parametrize("key", ["peft_type", "r", "lora_alpha", "target_modules"])
def test_required_fields(key):
    config = {k: v for k, v in MINIMAL.items() if k != key}
    with pytest.raises(InvalidConfigError, match=f"missing '{key}'.*save_pretrained"):
        parse_lora_config(config)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"r": 0}, "r is 0; it must be an integer in [1, 1048576]"),
        ({"r": "8"}, "r is '8'; it must be an integer in [1, 1048576]"),
        ({"r": True}, "r is True"),
        ({"r": 8.0}, "r is 8.0"),
        (
            {"lora_alpha": float("nan")},
            "lora_alpha is nan; it must be a finite number in [-1e+06, 1e+06]",
        ),
        ({"lora_alpha": "16"}, "lora_alpha is '16'"),
        ({"use_rslora": "yes"}, "use_rslora is 'yes'; it must be true or false"),
        ({"target_modules": []}, "a non-empty list of module names or a regex"),
        ({"target_modules": ["q_proj", 3]}, "a non-empty string or a list of them"),
        ({"target_modules": "(unclosed"}, "a valid regular expression"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern['q_proj'] is 0"),
        ({"rank_pattern": {"[": 4}}, "a valid regular expression"),
        ({"rank_pattern": ["q_proj"]}, "an object mapping module names"),
        ({"alpha_pattern": {"q_proj": None}}, "alpha_pattern['q_proj'] is None"),
        ({"layers_to_transform": [-1]}, "a layer index in [0, 1048576]"),
        ({"layers_to_transform": "0"}, "a layer index in [0, 1048576]"),
        ({"layers_pattern": "layers"}, "layers_pattern is set without layers_to_transform"),
        ({"target_modules": ".*q_proj", "layers_to_transform": [0]}, "cannot be used with a regex"),
        ({"base_model_name_or_path": 7}, "base_model_name_or_path is 7"),
    ],
)
def test_invalid_values_name_the_field_and_the_rule(changes, message):
    with pytest.raises(InvalidConfigError) as excinfo:
        parse_lora_config({**MINIMAL, **changes})
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"{'r': 8}", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must hold a JSON object, got list"),
        (b'{"a":' + b"[" * 100_000, "not valid UTF-8 JSON"),
        (b" " * (2 << 20), "more than 1048576"),
    ],
    ids=["not_utf8", "not_json", "not_object", "deep_nesting", "huge"],
)
def test_unreadable_configs(data, message):
    with pytest.raises(InvalidConfigError) as excinfo:
        parse_lora_config(data)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("field", sorted(_UNSUPPORTED_FIELDS))
def test_features_beyond_plain_lora_are_rejected_with_the_reason(field):
    with pytest.raises(UnsupportedFeatureError) as excinfo:
        parse_lora_config({**MINIMAL, field: True})
    assert field in str(excinfo.value)
    assert re.search(r"; .*\b(retrain|merge|push|save)\b", str(excinfo.value))


def test_disabled_features_are_fine_as_peft_writes_them():
    config = peft_saved_config(r=8, lora_alpha=16, target_modules=["q_proj"])
    assert config["use_dora"] is False and config["modules_to_save"] is None
    assert parse_lora_config(config).r == 8


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_trained_biases_are_rejected(bias):
    with pytest.raises(UnsupportedFeatureError, match=f"bias='{bias}'.*retrain with bias='none'"):
        parse_lora_config({**MINIMAL, "bias": bias})


@pytest.mark.parametrize("peft_type", ["IA3", "LOHA", "PROMPT_TUNING", "lora"])
def test_other_peft_types_are_rejected(peft_type):
    with pytest.raises(UnsupportedFeatureError, match=f"peft_type '{peft_type}'"):
        parse_lora_config({**MINIMAL, "peft_type": peft_type})
