"""Training data: three JSON-lines formats, and one bad line refuses the file, named."""

from __future__ import annotations

import json

import pytest

from services.training import TrainingDataError
from services.training import TrainingExample
from services.training import parse_training_data


def lines(*records: object) -> list[str]:
    return [json.dumps(r) if not isinstance(r, str) else r for r in records]


def test_each_format_parses_into_its_example() -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}

    examples = parse_training_data(
        lines(chat, {"prompt": "Q: 1+1", "completion": " 2"}, "", {"text": "Once upon a time"})
    )

    assert examples == [
        TrainingExample(line=1, messages=({"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": "Yo"})),
        TrainingExample(line=2, prompt="Q: 1+1", completion=" 2"),
        TrainingExample(line=4, completion="Once upon a time"),
    ]  # fmt: skip
    assert [e.is_chat for e in examples] == [True, False, False]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "line 2: not JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        ({"prompt": "x"}, "line 2: keys ['prompt'] match no format"),
        ({"text": ""}, 'line 2: "text" is empty'),
        ({"text": 3}, 'line 2: "text" must be a string, not int'),
        ({"messages": []}, 'line 2: "messages" must be a non-empty list'),
        ({"messages": [{"role": "robot", "content": "x"}]}, "line 2, message 0: role 'robot'"),
        ({"messages": [{"role": "user", "content": 1}]}, "line 2, message 0: content must be"),
        (
            {"messages": [{"role": "user", "content": "Hi"}]},
            "line 2: the last message must be a non-empty assistant message",
        ),
        ({"text": "a", "extra": 1}, "line 2: keys ['extra', 'text'] match no format"),
    ],
)
def test_a_bad_line_is_refused_naming_its_number_and_the_fix(bad: object, message: str) -> None:
    with pytest.raises(
        TrainingDataError, match="^" + message.replace("[", r"\[").replace("(", r"\(")
    ):
        parse_training_data(lines({"text": "fine"}, bad, {"text": "fine too"}))


def test_a_file_without_examples_is_refused_showing_the_formats() -> None:
    with pytest.raises(TrainingDataError, match=r'no example in the data.*"prompt"'):
        parse_training_data(["", "   "])
