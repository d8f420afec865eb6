"""The engine's request and response value objects."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Literal

from adapter_store import AdapterVersion
from services.engine._sampling import SamplingParams
from services.engine.exceptions import InvalidRequestError

__all__ = [
    "FinishReason",
    "GenerationChunk",
    "GenerationRequest",
    "GenerationResult",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
]

FinishReason = Literal["stop", "length"]
_ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: a ``prompt`` or chat ``messages`` (exactly one), an optional adapter.

    ``messages`` are ``{"role": ..., "content": ...}`` mappings rendered with the base
    model's chat template; an assistant message may carry ``tool_calls`` instead of
    content, and a ``tool`` message its ``tool_call_id``. ``tools`` (OpenAI function
    definitions) are rendered with them. ``adapter`` is the exact version to apply,
    ``None`` for the base model alone.

    Raises:
        InvalidRequestError: on construction, naming the field that is wrong.
    """

    prompt: str | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    tools: Sequence[Mapping[str, Any]] = ()
    adapter: AdapterVersion | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("give exactly one of prompt and messages")
        if self.prompt is not None and (not isinstance(self.prompt, str) or not self.prompt):
            raise InvalidRequestError(f"prompt must be a non-empty string, got {self.prompt!r}")
        if self.messages is not None:
            if isinstance(self.messages, str | bytes) or not self.messages:
                raise InvalidRequestError("messages must be a non-empty list of messages")
            for n, message in enumerate(self.messages):
                if not _valid_message(message):
                    raise InvalidRequestError(
                        f"messages[{n}] must have a 'role' in {list(_ROLES)} and a string "
                        f"'content' (an assistant message may have 'tool_calls' instead), "
                        f"got {message!r}"
                    )
            object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        if isinstance(self.tools, str | bytes) or not all(
            isinstance(t, Mapping) for t in self.tools
        ):
            raise InvalidRequestError("tools must be a list of function definitions")
        if self.tools and self.messages is None:
            raise InvalidRequestError("tools need chat messages, not a prompt")
        object.__setattr__(self, "tools", tuple(dict(t) for t in self.tools))
        if self.adapter is not None and not isinstance(self.adapter, AdapterVersion):
            raise InvalidRequestError(
                f"adapter must be a resolved AdapterVersion or None, got {self.adapter!r}"
            )
        if not isinstance(self.sampling, SamplingParams):
            raise InvalidRequestError(f"sampling must be SamplingParams, got {self.sampling!r}")
        if not isinstance(self.request_id, str) or not self.request_id:
            raise InvalidRequestError("request_id must be a non-empty string")


def _valid_message(message: object) -> bool:
    if not isinstance(message, Mapping) or message.get("role") not in _ROLES:
        return False
    content = message.get("content")
    if isinstance(content, str):
        return True
    return content is None and message["role"] == "assistant" and bool(message.get("tool_calls"))


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """An alternative token at one position and its logprob."""

    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The chosen token's logprob and the ``logprobs`` most likely alternatives."""

    token_id: int
    token: str
    logprob: float
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request; ``completion_tokens`` includes a final EOS token."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """What one step produced for a request: new tokens and the text they completed.

    ``text`` may be empty while text is held back (an incomplete character, a possible
    stop string). The last chunk of each choice has ``finish_reason`` and ``usage`` (that
    choice's tokens). ``index`` is the choice (0 to ``n - 1``); a request's choices are
    interleaved. ``logprobs`` is ``None`` unless the request asked for logprobs.
    """

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    index: int = 0


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A finished choice of a request: all its chunks joined."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    logprobs: tuple[TokenLogprob, ...] | None = None
    index: int = 0

    @classmethod
    def from_chunks(cls, chunks: Sequence[GenerationChunk]) -> GenerationResult:
        """Join the chunks of one choice; the last must carry the finish reason.

        Raises:
            ValueError: the chunks are of several choices, or the choice is unfinished.
        """
        last = chunks[-1]
        if last.finish_reason is None or last.usage is None:
            raise ValueError("the last chunk of a finished request has a finish_reason")
        if any(c.index != last.index for c in chunks):
            raise ValueError("chunks of several choices: join them with choices_from_chunks")
        has_logprobs = last.logprobs is not None
        return cls(
            request_id=last.request_id,
            text="".join(c.text for c in chunks),
            token_ids=tuple(t for c in chunks for t in c.token_ids),
            finish_reason=last.finish_reason,
            usage=last.usage,
            logprobs=tuple(lp for c in chunks for lp in c.logprobs or ()) if has_logprobs else None,
            index=last.index,
        )

    @classmethod
    def choices_from_chunks(cls, chunks: Sequence[GenerationChunk]) -> list[GenerationResult]:
        """Join the interleaved chunks of every choice; results in choice order."""
        by_index: dict[int, list[GenerationChunk]] = {}
        for chunk in chunks:
            by_index.setdefault(chunk.index, []).append(chunk)
        return [cls.from_chunks(by_index[i]) for i in sorted(by_index)]
