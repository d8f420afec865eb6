"""Training data: JSON lines in one of three formats, checked before any training.

- OpenAI's fine-tuning format, ``{"messages": [{"role": ..., "content": ...}, ...]}``:
  rendered with the base model's chat template; the loss is taken on the last
  assistant message only (what the adapter should learn to answer).
- ``{"prompt": ..., "completion": ...}``: the loss on the completion only.
- ``{"text": ...}``: the loss on the whole text.

Parsing is pure Python (no torch), so the API refuses a bad file in milliseconds and the
CLI before it loads a model. Policy: one bad line refuses the whole file, with its line
number and what to write instead; a silently skipped line would train a different adapter
than the user asked for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.training.exceptions import TrainingDataError

__all__ = ["MAX_TRAINING_EXAMPLES", "TrainingExample", "parse_training_data"]

# A fine-tune of a few MB learns from hundreds to tens of thousands of examples; past
# this a file is more likely a mistake than a dataset (and the API holds it in memory).
MAX_TRAINING_EXAMPLES = 100_000
_ROLES = frozenset({"system", "user", "assistant"})
_FORMATS = (
    '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}, '
    '{"prompt": ..., "completion": ...} or {"text": ...}'
)


@dataclass(frozen=True, slots=True)
class TrainingExample:
    """One example: ``messages`` (chat) or ``prompt`` + ``completion`` (text).

    A ``{"text"}`` line is a completion with an empty prompt.
    """

    line: int
    prompt: str = ""
    completion: str = ""
    messages: tuple[Mapping[str, str], ...] = ()

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)


def parse_training_data(lines: Iterable[str]) -> list[TrainingExample]:
    """The examples of a JSON-lines file (blank lines skipped).

    Raises:
        TrainingDataError: a line is not a JSON object in one of the three formats, the
            file has no example, or more than :data:`MAX_TRAINING_EXAMPLES`.
    """
    examples: list[TrainingExample] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if len(examples) == MAX_TRAINING_EXAMPLES:
            raise TrainingDataError(
                f"more than {MAX_TRAINING_EXAMPLES} examples; split the file or sample it"
            )
        examples.append(_example(number, raw))
    if not examples:
        raise TrainingDataError(
            f"no example in the data; write one JSON object per line: {_FORMATS}"
        )
    return examples


def _example(line: int, raw: str) -> TrainingExample:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TrainingDataError(
            f"line {line}: not JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if not isinstance(record, dict):
        raise TrainingDataError(f"line {line}: expected a JSON object, one of {_FORMATS}")
    keys = set(record)
    if keys == {"messages"}:
        return TrainingExample(line=line, messages=_messages(line, record["messages"]))
    if keys == {"prompt", "completion"}:
        return TrainingExample(
            line=line,
            prompt=_text(line, record, "prompt", empty_ok=True),
            completion=_text(line, record, "completion"),
        )
    if keys == {"text"}:
        return TrainingExample(line=line, completion=_text(line, record, "text"))
    raise TrainingDataError(
        f"line {line}: keys {sorted(keys)} match no format; write one of {_FORMATS}"
    )


def _text(line: int, record: Mapping[str, Any], key: str, *, empty_ok: bool = False) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise TrainingDataError(
            f'line {line}: "{key}" must be a string, not {type(value).__name__}'
        )
    if not value and not empty_ok:
        raise TrainingDataError(f'line {line}: "{key}" is empty; give the text to learn')
    return value


def _messages(line: int, value: Any) -> tuple[Mapping[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise TrainingDataError(f'line {line}: "messages" must be a non-empty list of messages')
    messages = []
    for index, message in enumerate(value):
        where = f"line {line}, message {index}"
        if not isinstance(message, dict):
            raise TrainingDataError(f"{where}: expected an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES:
            raise TrainingDataError(f"{where}: role {role!r} is not one of {sorted(_ROLES)}")
        if not isinstance(content, str):
            raise TrainingDataError(f"{where}: content must be a string")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"]:
        raise TrainingDataError(
            f"line {line}: the last message must be a non-empty assistant message "
            "(the answer the adapter learns)"
        )
    return tuple(messages)
