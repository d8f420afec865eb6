"""The built-in ``tiny`` base model and base model loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.engine import (
    TINY_MODEL_NAME,
    BaseModelLoadError,
    build_tiny_model,
    ensure_tiny_model,
    load_base_model,
)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny(models_dir: Path):
    return load_base_model(TINY_MODEL_NAME, models_dir=models_dir)


def test_tiny_is_a_normal_hugging_face_directory(tiny, models_dir: Path) -> None:
    files = {p.name for p in (models_dir / "tiny").iterdir()}

    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert tiny.name == "tiny" and tiny.path == models_dir / "tiny"
    assert type(tiny.model).__name__ == "LlamaForCausalLM"
    assert tiny.device.type == "cpu" and tiny.dtype == torch.float32
    assert tiny.max_context == 1024


def test_tiny_weights_are_deterministic(tmp_path: Path, models_dir: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    other_seed = build_tiny_model(tmp_path / "other", seed=1)

    original = (models_dir / "tiny" / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == original
    assert (other_seed / "model.safetensors").read_bytes() != original


def test_tokenizer_is_byte_level_and_round_trips_any_text(tiny) -> None:
    tokenizer = tiny.tokenizer
    text = "Grüße, 世界! \n\ttabs & emoji 🙂"

    ids = tokenizer(text)["input_ids"]

    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tiny.eos_token_ids == frozenset({tokenizer.eos_token_id})
    assert tokenizer.eos_token_id >= 256 and len(tokenizer) == tiny.model.config.vocab_size


def test_tiny_has_a_chat_template(tiny) -> None:
    rendered = tiny.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )

    assert rendered == "<|user|>hi\n<|assistant|>"


def test_manifest_lists_linear_modules_before_wrapping(tiny) -> None:
    manifest = tiny.manifest

    assert manifest.base_model == "tiny"
    assert manifest.modules["model.layers.1.mlp.down_proj"] == (128, 64)
    assert manifest.modules["model.layers.0.self_attn.k_proj"] == (64, 32)  # 2 KV heads
    assert manifest.output_module == "lm_head"


def test_ensure_tiny_model_reuses_a_built_directory(models_dir: Path) -> None:
    weights = models_dir / "tiny" / "model.safetensors"
    before = weights.stat().st_mtime_ns

    assert ensure_tiny_model(models_dir) == models_dir / "tiny"
    assert weights.stat().st_mtime_ns == before


def test_ensure_tiny_model_rebuilds_a_stale_directory(tmp_path: Path) -> None:
    stale = tmp_path / "tiny"
    stale.mkdir()
    (stale / "loramux_tiny.json").write_text('{"revision": 0}')

    ensure_tiny_model(tmp_path)

    assert (stale / "model.safetensors").is_file()


def test_loading_a_directory_by_path_uses_its_name(tmp_path: Path, models_dir: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "my-model")

    loaded = load_base_model(model_dir)

    assert loaded.name == "my-model" and loaded.manifest.base_model == "my-model"


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BaseModelLoadError, match="nothing is downloaded"):
        load_base_model(tmp_path / "no-such-model")
    with pytest.raises(BaseModelLoadError, match="nothing is downloaded"):
        load_base_model("meta-llama/Llama-3-8B")


def _tiny_tokenizer_with_model(path: Path, config_class: type, config_json: dict) -> Path:
    """A local directory with the tiny tokenizer and a small, freshly initialised
    ``config_class`` model whose config.json is then updated with ``config_json`` (as a
    published checkpoint's reads); nothing is downloaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    build_tiny_model(path)
    config = config_class(
        vocab_size=AutoConfig.from_pretrained(path).vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    written = json.loads((path / "config.json").read_text())
    written.pop("layer_types", None)  # published Mistral and Qwen2 configs have none
    (path / "config.json").write_text(json.dumps(written | config_json))
    return path


def test_sliding_window_model_is_refused_naming_the_layer_type(tmp_path: Path) -> None:
    from transformers import MistralConfig

    path = _tiny_tokenizer_with_model(tmp_path / "mistral", MistralConfig, {"sliding_window": 16})

    with pytest.raises(BaseModelLoadError, match=r"sliding_attention layers.*full attention"):
        load_base_model(path)


@pytest.mark.parametrize(
    ("config_class", "config_json"),
    [
        # As Qwen2.5's config.json: a window size that use_sliding_window switches off.
        ("Qwen2Config", {"sliding_window": 16, "use_sliding_window": False}),
        ("MistralConfig", {"sliding_window": None}),
    ],
)
def test_full_attention_models_with_window_settings_load(
    tmp_path: Path, config_class: str, config_json: dict[str, object]
) -> None:
    import transformers

    path = _tiny_tokenizer_with_model(
        tmp_path / "model", getattr(transformers, config_class), config_json
    )

    loaded = load_base_model(path)

    assert type(loaded.model.config).__name__ == config_class
    assert loaded.max_context == 256
