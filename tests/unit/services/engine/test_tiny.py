"""The built-in ``tiny`` base model and base model loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.engine import TINY_MODEL_NAME
from services.engine import BaseModelLoadError
from services.engine import build_tiny_model
from services.engine import ensure_tiny_model
from services.engine import load_base_model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny(models_dir: Path):
    return load_base_model(TINY_MODEL_NAME, models_dir=models_dir)


# Per layer, (out, in) as torch stores Linear weights: 2 heads of 32, 1 KV head.
_LAYER_SHAPES = {
    "input_layernorm.weight": (64,),
    "post_attention_layernorm.weight": (64,),
    "self_attn.q_proj.weight": (64, 64),
    "self_attn.k_proj.weight": (32, 64),
    "self_attn.v_proj.weight": (32, 64),
    "self_attn.o_proj.weight": (64, 64),
    "mlp.gate_proj.weight": (128, 64),
    "mlp.up_proj.weight": (128, 64),
    "mlp.down_proj.weight": (64, 128),
}


def test_tiny_is_a_two_layer_llama_with_a_byte_vocabulary(tiny, models_dir: Path) -> None:
    from safetensors.torch import load_file

    config = json.loads((models_dir / "tiny" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    # 256 bytes, then <|bos|> <|eos|> <|pad|>; two layers of two heads of 32 (head_dim
    # 32: the smallest vLLM's CPU attention runs).
    assert [config[key] for key in sizes] == [259, 64, 2, 2]
    assert [config[f"{t}_token_id"] for t in ("bos", "eos", "pad")] == [256, 257, 258]
    assert (config["num_key_value_heads"], config["tie_word_embeddings"]) == (1, False)

    weights = load_file(models_dir / "tiny" / "model.safetensors")
    expected = {
        "model.embed_tokens.weight": (259, 64),
        "model.norm.weight": (64,),
        "lm_head.weight": (259, 64),
    }
    for layer in (0, 1):
        for name, shape in _LAYER_SHAPES.items():
            expected[f"model.layers.{layer}.{name}"] = shape
    assert {name: tuple(t.shape) for name, t in weights.items()} == expected
    assert all(t.dtype == torch.float32 for t in weights.values())

    # What is loaded is what was written, and it is what the name says.
    assert tiny.name == "tiny" and tiny.path == models_dir / "tiny"
    assert type(tiny.model).__name__ == "LlamaForCausalLM"
    loaded = tiny.model.state_dict()
    for name, tensor in weights.items():
        assert torch.equal(loaded[name], tensor), name
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

    assert ensure_tiny_model(tmp_path) == stale

    fresh = build_tiny_model(tmp_path / "fresh")
    assert (stale / "model.safetensors").read_bytes() == (fresh / "model.safetensors").read_bytes()
    marker = json.loads((stale / "loramux_tiny.json").read_text())
    assert marker == json.loads((fresh / "loramux_tiny.json").read_text())
    assert marker["revision"] > 0


def test_loading_a_directory_by_path_uses_its_name(tmp_path: Path, models_dir: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "my-model")

    loaded = load_base_model(model_dir)

    assert loaded.name == "my-model" and loaded.manifest.base_model == "my-model"


def test_missing_model_directory_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id is looked up in the cache only

    with pytest.raises(BaseModelLoadError, match="neither a built-in model"):
        load_base_model(tmp_path / "no-such-model")
    with pytest.raises(BaseModelLoadError, match="'meta-llama/Llama-3-8B' is not in"):
        load_base_model("meta-llama/Llama-3-8B", models_dir=tmp_path)


def _tiny_tokenizer_with_model(path: Path, config_class: type, config_json: dict) -> Path:
    """A local directory with the tiny tokenizer and a small, freshly initialised
    ``config_class`` model whose config.json is then updated with ``config_json`` (as a
    published checkpoint's reads); nothing is downloaded."""
    from transformers import AutoConfig
    from transformers import AutoModelForCausalLM

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


def test_tiny_en_writes_words_of_its_corpus_and_runs_on_both_engines_shapes() -> None:
    import sys

    from services.engine import TINY_EN_MODEL_NAME
    from services.engine import chat_prompt
    from services.engine import resolve_base_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "scripts" / "tiny_en"))
    from corpus import generate_corpus

    directory = resolve_base_model(TINY_EN_MODEL_NAME)
    base = load_base_model(TINY_EN_MODEL_NAME, device="cpu")
    config = base.model.config
    vocabulary = {
        word.strip('.,!?"').lower()
        for text in generate_corpus(3000, seed=1, chat_template="{content} ", end=" ")
        for word in text.split()
    }

    def greedy(prompt: str) -> str:
        ids = base.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        out = base.model.generate(ids, max_new_tokens=30, do_sample=False)
        return base.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    story = greedy("Once upon a time")
    answer = greedy(chat_prompt(base.tokenizer, [{"role": "user", "content": "Hello!"}]))
    words = [w.strip('.,!?"').lower() for w in (story + " " + answer).split()]
    words = [w for w in words if w]

    assert config.hidden_size // config.num_attention_heads >= 32  # vLLM's CPU attention
    assert sum(f.stat().st_size for f in directory.iterdir()) < 20 * 2**20
    assert base.name == TINY_EN_MODEL_NAME
    assert len(words) >= 15 and all(w in vocabulary for w in words), (story, answer)
