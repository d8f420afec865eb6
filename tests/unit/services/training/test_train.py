"""Fine-tuning with PEFT: it learns what it is shown, on the answer only, and writes an
ordinary PEFT directory; bad options and data fail before anything is written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from services.client import TrainingOptions
from services.client import TrainingProgress
from services.engine import BaseModel
from services.engine import chat_prompt
from services.engine import load_base_model
from services.training import TrainingDataError
from services.training import TrainingOptionsError
from services.training import parse_training_data
from services.training import train_adapter

PAIRS = [("color of sky?", " blue"), ("cat says?", " meow"), ("2 plus 2?", " four")]
MEMORIZE = TrainingOptions(epochs=60, batch_size=4, learning_rate=1e-2, validation_split=0)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> BaseModel:
    return load_base_model("tiny", models_dir=tmp_path_factory.mktemp("models"), device="cpu")


def greedy(model, tokenizer, prompt: str) -> str:
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(
        ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def prompt_completion_lines() -> list[str]:
    return [json.dumps({"prompt": p, "completion": c}) for p, c in PAIRS]


def test_the_adapter_learns_its_completions_and_loads_with_peft(
    base: BaseModel, tmp_path: Path
) -> None:
    from peft import PeftModel

    probe = base.tokenizer("cat says?", return_tensors="pt").input_ids
    with torch.no_grad():
        before = base.model(probe).logits
    seen: list[TrainingProgress] = []

    result = train_adapter(
        base.model,
        base.tokenizer,
        parse_training_data(prompt_completion_lines()),
        MEMORIZE,
        tmp_path / "bot",
        base_model_id="tiny",
        on_progress=seen.append,
    )

    with torch.no_grad():
        assert torch.equal(base.model(probe).logits, before), "the caller's model is untouched"
    config = json.loads((tmp_path / "bot" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny" and config["r"] == 8
    assert result.steps == 60 and [p.step for p in seen] == list(range(1, 61))
    assert seen[-1].loss is not None and seen[-1].loss < seen[0].loss / 10
    tuned = PeftModel.from_pretrained(base.model, str(tmp_path / "bot")).eval()
    try:
        assert [greedy(tuned, base.tokenizer, p) for p, _ in PAIRS] == [c for _, c in PAIRS]
    finally:
        tuned.unload()


def test_chat_examples_learn_the_last_assistant_message(base: BaseModel, tmp_path: Path) -> None:
    from peft import PeftModel

    chats = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": a.strip()}]
        for q, a in PAIRS
    ]
    lines = [json.dumps({"messages": m}) for m in chats]

    train_adapter(
        base.model,
        base.tokenizer,
        parse_training_data(lines),
        MEMORIZE,
        tmp_path / "chat",
        base_model_id="tiny",
    )

    tuned = PeftModel.from_pretrained(base.model, str(tmp_path / "chat")).eval()
    try:
        answers = [greedy(tuned, base.tokenizer, chat_prompt(base.tokenizer, m[:1])) for m in chats]
    finally:
        tuned.unload()
    # The template closes an assistant turn with a newline, which the adapter learns too.
    assert [a.strip() for a in answers] == [m[1]["content"] for m in chats]


def test_the_same_seed_gives_the_same_adapter(base: BaseModel, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    options = TrainingOptions(max_steps=3, batch_size=2, seed=7, validation_split=0.34)
    examples = parse_training_data(prompt_completion_lines())
    runs = [
        train_adapter(base.model, base.tokenizer, examples, options, tmp_path / name,
                      base_model_id="tiny")
        for name in ("one", "two")
    ]  # fmt: skip

    first, second = (load_file(str(r.directory / "adapter_model.safetensors")) for r in runs)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert runs[0].eval_examples == 1 and runs[0].eval_loss == runs[1].eval_loss


def test_an_unknown_target_module_is_refused_naming_the_real_ones(
    base: BaseModel, tmp_path: Path
) -> None:
    options = TrainingOptions(target_modules=["qkv"], max_steps=1)

    with pytest.raises(TrainingOptionsError, match=r"target_modules \['qkv'\].*q_proj"):
        train_adapter(base.model, base.tokenizer, parse_training_data(prompt_completion_lines()),
                      options, tmp_path / "out", base_model_id="tiny")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_a_prompt_that_fills_max_length_is_refused_naming_its_line(
    base: BaseModel, tmp_path: Path
) -> None:
    lines = [*prompt_completion_lines(), json.dumps({"prompt": "x" * 40, "completion": "y"})]

    with pytest.raises(TrainingDataError, match="line 4: the prompt fills max_length"):
        train_adapter(base.model, base.tokenizer, parse_training_data(lines),
                      TrainingOptions(max_length=16), tmp_path / "out", base_model_id="tiny")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_without_epochs_a_tiny_set_trains_100_epochs(base: BaseModel, tmp_path: Path) -> None:
    examples = parse_training_data(prompt_completion_lines())
    options = TrainingOptions(batch_size=2, validation_split=0)

    result = train_adapter(
        base.model, base.tokenizer, examples, options, tmp_path / "auto", base_model_id="tiny"
    )

    # Two steps an epoch: 300 steps would be 150 epochs, capped at 100.
    assert result.steps == 200
