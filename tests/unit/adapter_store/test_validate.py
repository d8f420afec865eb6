"""validate_adapter on real PEFT adapters, cross-checked against the PEFT model itself,
and on every case of the malformed corpus."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest

from adapter_store import AdapterLimits
from adapter_store import BaseModelManifest
from adapter_store import ValidatedAdapter
from adapter_store import lora_weight_names
from adapter_store import manifest_from_model
from adapter_store import read_adapter_source
from adapter_store import validate_adapter
from tests.factories import TinyBase
from tests.malformed import MALFORMED_CASES
from tests.malformed import write_valid_adapter

PEFT_PREFIX = "base_model.model."
# Every refusal is bounded work: milliseconds here, so 2 s is not a timing measurement
# but a fence against unbounded work (a backtracking regex takes minutes).
REFUSAL_BOUND_S = 2.0


def within_bound(call: Callable[[], object], bound_s: float = REFUSAL_BOUND_S) -> object:
    """Run ``call`` on a thread; fail if it has not ended after ``bound_s``, else return
    its result or raise its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the test thread below
            outcome.append((False, exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(bound_s)
    assert not worker.is_alive(), f"still running after {bound_s} s: unbounded work"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


@pytest.fixture(scope="module")
def llama(tiny_base: TinyBase) -> tuple[Any, BaseModelManifest]:
    return tiny_base.model, tiny_base.manifest


@pytest.fixture(scope="module")
def gpt2() -> tuple[Any, BaseModelManifest]:
    import transformers

    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256)
    model = transformers.GPT2LMHeadModel(config).eval()
    return model, manifest_from_model("tiny-gpt2", model)


@pytest.fixture(scope="module")
def valid_dir(llama, tmp_path_factory) -> Path:
    return write_valid_adapter(llama[0], tmp_path_factory.mktemp("valid"))


def save_peft_adapter(
    model: Any, out_dir: Path, *, save_kwargs: dict[str, Any] | None = None, **lora_kwargs: Any
) -> dict[str, tuple[int, float]]:
    """Save a PEFT adapter; return PEFT's own {module path: (rank, scaling)} for it."""
    from peft import LoraConfig
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**lora_kwargs))
    peft_model.save_pretrained(str(out_dir), **(save_kwargs or {}))
    truth = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            path = name.removeprefix(PEFT_PREFIX)
            truth[path] = (module.lora_A["default"].weight.shape[0], module.scaling["default"])
    return truth


def test_valid_adapter(valid_dir, llama):
    files = read_adapter_source(valid_dir)
    v = validate_adapter(files, llama[1])
    assert isinstance(v, ValidatedAdapter)
    assert sorted(v.modules) == [
        f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in ("q", "v")
    ]
    q = v.modules["model.layers.0.self_attn.q_proj"]
    assert (q.rank, q.in_features, q.out_features, q.scaling) == (8, 64, 64, 2.0)
    v0 = v.modules["model.layers.0.self_attn.v_proj"]
    assert (v0.in_features, v0.out_features) == (64, 32)
    weights = (valid_dir / "adapter_model.safetensors").read_bytes()
    config = (valid_dir / "adapter_config.json").read_bytes()
    assert v.digest == hashlib.sha256(weights).hexdigest()
    assert v.config_digest == hashlib.sha256(config).hexdigest()
    assert v.size_bytes == len(weights) + len(config)
    assert v.max_rank == 8 and v.files == files


def test_weight_names_are_peft_names(valid_dir, llama):
    from safetensors import safe_open

    v = validate_adapter(read_adapter_source(valid_dir), llama[1])
    with safe_open(str(valid_dir / "adapter_model.safetensors"), "np") as f:
        names = set(f.keys())
    assert names == {n for m in v.modules for n in lora_weight_names(m)}


LLAMA_VARIANTS: dict[str, dict[str, Any]] = {
    "rank_and_alpha_patterns": {
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "rank_pattern": {"v_proj": 4, "layers.1.self_attn.q_proj": 2},
        "alpha_pattern": {"down_proj": 5, r"model\.layers\.0\..*q_proj": 3},
    },
    "rslora": {
        "r": 16,
        "lora_alpha": 8,
        "use_rslora": True,
        "target_modules": ["k_proj", "o_proj"],
    },
    "rslora_with_rank_pattern": {
        "r": 16,
        "lora_alpha": 8,
        "use_rslora": True,
        "target_modules": ["q_proj", "up_proj"],
        "rank_pattern": {"up_proj": 4},
    },
    "regex_targets": {
        "r": 4,
        "lora_alpha": 4,
        "target_modules": r".*\.layers\.1\..*\.(q|k|gate)_proj",
    },
    "all_linear": {"r": 2, "lora_alpha": 7, "target_modules": "all-linear"},
    "layers_to_transform": {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "down_proj"],
        "layers_to_transform": [1],
    },
    "layers_pattern": {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["v_proj"],
        "layers_to_transform": 0,
        "layers_pattern": "layers",
    },
    "exclude_modules": {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": "all-linear",
        "exclude_modules": ["o_proj", "up_proj"],
    },
    "lm_head_by_name": {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["lm_head", "q_proj"],
        "save_kwargs": {"save_embedding_layers": False},
    },
}


@pytest.mark.parametrize("kwargs", list(LLAMA_VARIANTS.values()), ids=list(LLAMA_VARIANTS))
def test_peft_variants_validate_with_peft_ranks_and_scalings(llama, tmp_path, kwargs):
    model, manifest = llama
    truth = save_peft_adapter(model, tmp_path, **kwargs)
    v = validate_adapter(read_adapter_source(tmp_path), manifest)
    assert set(v.modules) == set(truth) == set(manifest.modules_targeted_by(v.spec))
    for path, (rank, scaling) in truth.items():
        assert v.modules[path].rank == v.spec.rank_for(path) == rank, path
        assert math.isclose(v.modules[path].scaling, scaling), path
        assert math.isclose(v.spec.scaling_for(path), scaling), path
        assert (v.modules[path].in_features, v.modules[path].out_features) == manifest.modules[path]


def test_hand_written_all_linear_config_means_what_peft_means(llama, tmp_path):
    model, manifest = llama
    truth = save_peft_adapter(model, tmp_path, r=2, lora_alpha=4, target_modules="all-linear")
    # PEFT expands "all-linear" before saving; a hand-written config keeps the shorthand.
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["target_modules"] = "all-linear"
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    v = validate_adapter(read_adapter_source(tmp_path), manifest)
    assert v.spec.targets_all_linear
    assert set(v.modules) == set(truth) and "lm_head" not in truth


def test_saved_embedding_layers_are_rejected_with_the_fix(llama, tmp_path):
    from adapter_store import UnsupportedFeatureError

    # PEFT's default save_embedding_layers="auto" copies lm_head's base weight when
    # target_modules names it.
    save_peft_adapter(llama[0], tmp_path, r=4, lora_alpha=8, target_modules=["lm_head"])
    with pytest.raises(
        UnsupportedFeatureError, match=r"lm_head\.base_layer\.weight.*save_embedding_layers=False"
    ):
        validate_adapter(read_adapter_source(tmp_path), llama[1])


def test_gpt2_conv1d_fan_in_fan_out(gpt2, tmp_path):
    model, manifest = gpt2
    truth = save_peft_adapter(
        model,
        tmp_path,
        r=4,
        lora_alpha=12,
        target_modules=["c_attn", "c_proj"],
        fan_in_fan_out=True,
    )
    v = validate_adapter(read_adapter_source(tmp_path), manifest)
    assert v.spec.fan_in_fan_out
    assert set(v.modules) == set(truth)
    assert len(truth) == 6  # per layer: attn.c_attn, attn.c_proj and mlp.c_proj
    c_attn = v.modules["transformer.h.0.attn.c_attn"]
    assert (c_attn.rank, c_attn.in_features, c_attn.out_features, c_attn.scaling) == (
        4,
        64,
        192,
        3.0,
    )
    mlp_out = v.modules["transformer.h.1.mlp.c_proj"]
    assert (mlp_out.in_features, mlp_out.out_features) == (256, 64)


def test_adapter_for_another_model_is_incompatible(gpt2, valid_dir):
    from adapter_store import IncompatibleAdapterError

    with pytest.raises(
        IncompatibleAdapterError, match="base model 'tiny-gpt2' has no linear module"
    ):
        validate_adapter(read_adapter_source(valid_dir), gpt2[1])


def test_rank_cap_on_the_weights(valid_dir, llama):
    from adapter_store import AdapterTooLargeError

    with pytest.raises(AdapterTooLargeError, match="rank 8, above the cap of 4"):
        validate_adapter(read_adapter_source(valid_dir), llama[1], AdapterLimits(max_rank=4))


def test_size_cap_on_the_files(valid_dir, llama):
    from adapter_store import AdapterTooLargeError

    files = read_adapter_source(valid_dir)
    with pytest.raises(AdapterTooLargeError, match=f"the adapter is {files.size_bytes} bytes"):
        validate_adapter(files, llama[1], AdapterLimits(max_bytes=files.size_bytes - 1))


# ---- the malformed corpus --------------------------------------------------------------


def test_corpus_is_large_and_each_case_has_its_own_error():
    assert len(MALFORMED_CASES) >= 15
    assert len({c.id for c in MALFORMED_CASES}) == len(MALFORMED_CASES)
    assert len({c.message for c in MALFORMED_CASES}) == len(MALFORMED_CASES)


@pytest.mark.parametrize("case", MALFORMED_CASES, ids=[c.id for c in MALFORMED_CASES])
def test_malformed_adapter_is_rejected(case, valid_dir, llama, tmp_path):
    source = case.write(valid_dir, tmp_path / case.id)
    with pytest.raises(case.error) as excinfo:
        within_bound(
            lambda: validate_adapter(
                read_adapter_source(source, case.limits), llama[1], case.limits
            )
        )
    assert type(excinfo.value) is case.error
    assert case.message in str(excinfo.value)
    # Every message also says how to fix it, after the description of the problem.
    assert re.search(
        r"[;:] .*\b(re-?\w+|save|push|use|give|archive|add|fix|merge|train)\b", str(excinfo.value)
    )


@pytest.mark.parametrize(
    "case", [c for c in MALFORMED_CASES if c.needs_manifest], ids=lambda c: c.id
)
def test_base_model_cases_pass_without_a_manifest(case, valid_dir, tmp_path):
    """Without a manifest the modules come from the weights alone: exactly the ones with
    LoRA tensors in the file, with the file's shapes and the config's scaling."""
    source = case.write(valid_dir, tmp_path / case.id)
    v = validate_adapter(read_adapter_source(source), None)
    assert {m: astuple(lora) for m, lora in v.modules.items()} == _modules_in_file(source)
    # And the case's edit is what the weights now say.
    valid = {f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in ("q", "v")}
    q0 = "model.layers.0.self_attn.q_proj"
    edited = {
        "shape_not_in_base": valid,
        "unknown_target_module": valid - {q0} | {"model.layers.0.self_attn.qq_proj"},
        "targeted_module_without_weights": valid - {"model.layers.1.self_attn.q_proj"},
    }
    assert set(v.modules) == edited[case.id]
    assert all(lora.rank == 8 and lora.scaling == 2.0 for lora in v.modules.values())
    if case.id == "shape_not_in_base":
        assert (v.modules[q0].in_features, v.modules[q0].out_features) == (32, 64)


def _modules_in_file(adapter_dir: Path) -> dict[str, tuple[str, int, int, int, float]]:
    """{module: (module, rank, in, out, scaling)} read straight from the saved files."""
    from safetensors import safe_open

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    shapes = {}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "np") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open handles are not iterable)
            shapes[name.removeprefix(PEFT_PREFIX)] = f.get_slice(name).get_shape()
    modules = {}
    for name, (rank, in_features) in shapes.items():
        if name.endswith(".lora_A.weight"):
            module = name.removesuffix(".lora_A.weight")
            out_features = shapes[f"{module}.lora_B.weight"][0]
            scaling = config["lora_alpha"] / config["r"]
            modules[module] = (module, rank, in_features, out_features, scaling)
    return modules


def test_all_linear_config_does_not_cover_output_head_weights(llama, tmp_path):
    from adapter_store import InvalidConfigError

    save_peft_adapter(
        llama[0],
        tmp_path,
        save_kwargs={"save_embedding_layers": False},
        r=2,
        lora_alpha=4,
        target_modules=["lm_head", "q_proj"],
    )
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["target_modules"] = "all-linear"
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    files = read_adapter_source(tmp_path)
    with pytest.raises(InvalidConfigError, match="output layer of 'tiny-llama'"):
        validate_adapter(files, llama[1])
    assert "lm_head" in validate_adapter(files, None).modules  # unknowable without a manifest


# ---- bounds on scaling, weights and time, checked against real adapters ---------------

# Real adapters: PEFT's initialisations (default, PiSSA, OLoRA), ranks 4-256, rsLoRA,
# each trained a few steps so that B is no longer zero.
REAL_ADAPTERS = [
    {"r": 4, "lora_alpha": 8},
    {"r": 256, "lora_alpha": 512, "use_rslora": True},
    {"r": 16, "lora_alpha": 16, "init_lora_weights": "pissa"},
    {"r": 16, "lora_alpha": 16, "init_lora_weights": "olora"},
]


def train_briefly(model: Any, out_dir: Path, steps: int = 3, **lora_kwargs: Any) -> Path:
    import torch
    from peft import LoraConfig
    from peft import get_peft_model

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls; threads only contend on a shared CI box
    try:
        peft_model = get_peft_model(
            copy.deepcopy(model), LoraConfig(target_modules="all-linear", **lora_kwargs)
        )
        trained = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=1e-3)
        for _ in range(steps):
            ids = torch.randint(0, model.config.vocab_size, (2, 16))
            peft_model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        peft_model.save_pretrained(str(out_dir))
    finally:
        torch.set_num_threads(threads)
    return out_dir


@pytest.mark.parametrize("kwargs", REAL_ADAPTERS, ids=lambda k: "-".join(map(str, k.values())))
def test_real_adapters_are_far_inside_the_scaling_and_weight_bounds(kwargs, llama, tmp_path):
    from safetensors.numpy import load_file

    limits = AdapterLimits()
    adapter = validate_adapter(
        read_adapter_source(train_briefly(llama[0], tmp_path, **kwargs)), llama[1]
    )
    largest_weight = max(
        float(abs(array).max())
        for array in load_file(str(tmp_path / "adapter_model.safetensors")).values()
    )
    largest_scaling = max(abs(m.scaling) for m in adapter.modules.values())
    # Measured: weights <= 0.6 and scalings <= 32 (rsLoRA r=256); the bounds are 1024.
    assert largest_weight * 100 < limits.max_weight_abs
    assert largest_scaling * 10 < limits.max_scaling


def test_validation_past_its_budget_is_refused_naming_the_step(valid_dir, llama):
    from adapter_store import ValidationBudgetExceededError

    ticks = iter(range(1000))
    files = read_adapter_source(valid_dir)
    limits = AdapterLimits(validation_budget_s=3)
    with pytest.raises(ValidationBudgetExceededError) as excinfo:
        validate_adapter(files, llama[1], limits, clock=lambda: float(next(ticks)))
    message = str(excinfo.value)
    assert "took more than its budget of 3 s (stopped while checking module" in message
    assert "LORAMUX_VALIDATION_BUDGET_S" in message
    # The same files within the budget pass: the clock, not the adapter, decided.
    assert validate_adapter(files, llama[1], limits).modules


def test_budget_is_checked_while_scanning_and_hashing(llama, tmp_path, monkeypatch):
    """A large adapter is refused in the middle of its value scan, not after it."""
    import adapter_store._safetensors as safetensors_module
    from adapter_store import ValidationBudgetExceededError

    monkeypatch.setattr(safetensors_module, "_SCAN_CHUNK", 16)
    files = read_adapter_source(train_briefly(llama[0], tmp_path, steps=0, r=64, lora_alpha=64))
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001
        return now[0]

    limits = AdapterLimits(validation_budget_s=0.5)
    with pytest.raises(ValidationBudgetExceededError, match="while scanning the weights"):
        validate_adapter(files, llama[1], limits, clock=clock)
