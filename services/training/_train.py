"""Fine-tune a LoRA adapter on a base model with PEFT, and write an ordinary PEFT directory.

The loop is plain PyTorch over ``peft.get_peft_model``: examples are tokenized with the
base model's own tokenizer and chat template, the loss is taken on the answer only
(completion, last assistant message, or the whole ``text``), each answer ends with the
end-of-sequence token so the adapter learns to stop, and the optimizer is AdamW with a
short warm-up and a linear decay. Training runs on the full-precision base: an adapter
trained there serves unchanged on its NF4 or int8 twin (the module shapes are the same).

Failure mode: any error is raised before the output directory is written, so a failed run
publishes nothing.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from services.client._models import TrainingOptions
from services.client._models import TrainingProgress
from services.training._data import TrainingExample
from services.training.exceptions import TrainingDataError
from services.training.exceptions import TrainingOptionsError

if TYPE_CHECKING:
    import torch

__all__ = ["ProgressSink", "TrainingResult", "train_adapter"]

ProgressSink = Callable[[TrainingProgress], None]
_IGNORE = -100


@dataclass(frozen=True, slots=True)
class TrainingResult:
    """What a finished run wrote and how well it fits its held-out examples."""

    directory: Path
    steps: int
    train_loss: float
    eval_loss: float | None
    tokens: int
    """Tokens the optimizer steps ran forward and backward (padding excluded)."""
    train_examples: int
    eval_examples: int
    seconds: float


@dataclass(frozen=True, slots=True)
class _Tokenized:
    input_ids: list[int]
    labels: list[int]


def train_adapter(
    model: Any,
    tokenizer: Any,
    examples: Sequence[TrainingExample],
    options: TrainingOptions,
    out_dir: Path,
    *,
    base_model_id: str,
    on_progress: ProgressSink | None = None,
) -> TrainingResult:
    """Train a LoRA adapter on ``model`` (a transformers causal LM, not modified) and save it.

    Raises:
        TrainingDataError: an example has no answer token left after ``max_length``.
        TrainingOptionsError: ``target_modules`` names no module of the model.
    """
    import torch
    from peft import LoraConfig
    from peft import get_peft_model

    started = time.monotonic()
    tokenized = [_tokenize(tokenizer, example, options.max_length) for example in examples]
    train_rows, eval_rows = _split(tokenized, options)
    torch.manual_seed(options.seed)
    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise TrainingOptionsError(
            f"target_modules {options.target_modules}: {exc}; name modules of the base "
            "model (for a Llama: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
        ) from None
    pad_id = _pad_id(tokenizer)
    steps_per_epoch = math.ceil(len(train_rows) / options.batch_size)
    total = max(1, math.ceil(epochs_for(steps_per_epoch, options.epochs) * steps_per_epoch))
    if options.max_steps is not None:
        total = min(total, options.max_steps)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=0.0)
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    order = random.Random(options.seed)
    device = next(model.parameters()).device
    peft_model.train()
    losses: list[float] = []
    tokens = 0
    batches = _batches(train_rows, options.batch_size, order)
    for step in range(1, total + 1):
        rows = next(batches)
        tokens += sum(len(row.input_ids) for row in rows)
        batch = _collate(rows, pad_id, device)
        loss = peft_model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_progress is not None:
            on_progress(
                TrainingProgress(
                    step=step, total_steps=total, loss=losses[-1], epoch=step / steps_per_epoch
                )
            )
    peft_model.eval()
    eval_loss = _mean_loss(peft_model, eval_rows, options.batch_size, pad_id, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    _name_base(out_dir, base_model_id)
    # The caller's model goes back as it came: unwrap the LoRA layers.
    peft_model.unload()
    window = losses[-max(1, steps_per_epoch) :]
    return TrainingResult(
        directory=out_dir,
        steps=total,
        train_loss=sum(window) / len(window),
        eval_loss=eval_loss,
        tokens=tokens,
        train_examples=len(train_rows),
        eval_examples=len(eval_rows),
        seconds=time.monotonic() - started,
    )


AUTO_EPOCH_STEPS = 300
"""The optimizer steps ``epochs=None`` aims for, within 3 to 100 epochs."""


def epochs_for(steps_per_epoch: int, chosen: float | None) -> float:
    """``chosen``, or the automatic count (see :class:`TrainingOptions`)."""
    if chosen is not None:
        return chosen
    return float(min(100, max(3, math.ceil(AUTO_EPOCH_STEPS / steps_per_epoch))))


def _tokenize(tokenizer: Any, example: TrainingExample, max_length: int) -> _Tokenized:
    prompt, answer = _prompt_and_answer(tokenizer, example)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and answer_ids[-1:] != [tokenizer.eos_token_id]:
        answer_ids.append(tokenizer.eos_token_id)
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([_IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    # The first label is never predicted (nothing precedes it), so one answer token in
    # the window is not enough unless a prompt token comes before it.
    if sum(1 for label in labels[1:] if label != _IGNORE) == 0:
        raise TrainingDataError(
            f"line {example.line}: the prompt fills max_length ({max_length} tokens) and "
            "leaves no answer to learn; shorten it or raise max_length"
        )
    return _Tokenized(ids, labels)


def _prompt_and_answer(tokenizer: Any, example: TrainingExample) -> tuple[str, str]:
    """The text before the answer and the answer, as the model will see them served."""
    from services.engine import chat_prompt

    if not example.is_chat:
        return example.prompt, example.completion
    messages = [dict(m) for m in example.messages]
    prompt = chat_prompt(tokenizer, messages[:-1])
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if full.startswith(prompt):
            return prompt, full[len(prompt) :]
    return prompt, messages[-1]["content"]


def _split(
    rows: list[_Tokenized], options: TrainingOptions
) -> tuple[list[_Tokenized], list[_Tokenized]]:
    shuffled = rows[:]
    random.Random(options.seed).shuffle(shuffled)
    held = 0
    if options.validation_split > 0 and len(rows) >= 2:
        held = min(len(rows) - 1, max(1, round(options.validation_split * len(rows))))
    return shuffled[held:], shuffled[:held]


def _batches(rows: list[_Tokenized], size: int, order: random.Random):
    """Endless epochs of shuffled batches."""
    while True:
        epoch = rows[:]
        order.shuffle(epoch)
        for start in range(0, len(epoch), size):
            yield epoch[start : start + size]


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _collate(rows: list[_Tokenized], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    import torch

    width = max(len(row.input_ids) for row in rows)
    ids = [row.input_ids + [pad_id] * (width - len(row.input_ids)) for row in rows]
    labels = [row.labels + [_IGNORE] * (width - len(row.labels)) for row in rows]
    mask = [[1] * len(row.input_ids) + [0] * (width - len(row.input_ids)) for row in rows]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def _mean_loss(
    model: Any, rows: list[_Tokenized], size: int, pad_id: int, device: torch.device
) -> float | None:
    """Token-weighted mean loss over ``rows`` (None for none)."""
    import torch

    if not rows:
        return None
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), size):
            batch = _collate(rows[start : start + size], pad_id, device)
            count = int((batch["labels"][:, 1:] != _IGNORE).sum())
            total += model(**batch).loss.item() * count
            tokens += count
    return total / tokens


def _name_base(directory: Path, base_model_id: str) -> None:
    """Record the service's base model id, not the local path it was loaded from."""
    import json

    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model_id
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
