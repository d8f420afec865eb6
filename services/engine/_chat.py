"""Rendering a conversation with tools: through the chat template when it knows tools.

A template that mentions ``tools`` gets the function definitions and the messages as they
are (``tool_calls`` on assistant turns, ``role: tool`` results), as transformers passes
them. A template without tool support (and the plain transcript of a model without a
template) gets the definitions as a system message and each tool call as JSON text, so
a conversation with tools still renders on any model; such a model has never learnt the
format, which is why ``tool_choice`` ``required`` and a named function constrain the
output with a grammar instead of trusting it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from services.engine._base_model import chat_prompt

__all__: list[str] = []

_TOOLS_PREAMBLE = (
    "You can call these functions. To call one, answer with a JSON array of "
    '{"name": ..., "arguments": {...}} objects.\n'
)


def render_chat(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
) -> str:
    """The prompt text for ``messages`` and ``tools``, ending in the assistant turn."""
    template = getattr(tokenizer, "chat_template", None)
    if tools and isinstance(template, str) and "tools" in template:
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=list(tools),
            add_generation_prompt=True,
            tokenize=False,
        )
    plain = [_as_text(m) for m in messages]
    if tools:
        listing = "\n".join(json.dumps(t, sort_keys=True) for t in tools)
        plain.insert(0, {"role": "system", "content": _TOOLS_PREAMBLE + listing})
    return chat_prompt(tokenizer, plain)


def _as_text(message: Mapping[str, Any]) -> dict[str, str]:
    """A message as role and string content: tool calls written out as JSON."""
    content = message.get("content") or ""
    calls = message.get("tool_calls")
    if calls:
        written = [
            {"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls
        ]
        content += json.dumps(written)
    return {"role": message["role"], "content": content}
