"""The engine's request and response value objects."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    model's chat template. ``adapter`` is the exact version to apply, ``None`` for the
    base model alone.

    Raises:
        InvalidRequestError: on construction, naming the field that is wrong.
    """

    prompt: str | None = None
    messages: Sequence[Mapping[str, str]] | None = None
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
                if (
                    not isinstance(message, Mapping)
                    or message.get("role") not in _ROLES
                    or not isinstance(message.get("content"), str)
                ):
                    raise InvalidRequestError(
                        f"messages[{n}] must have a 'role' in {list(_ROLES)} and a string "
                        f"'content', got {message!r}"
                    )
            object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        if self.adapter is not None and not isinstance(self.adapter, AdapterVersion):
            raise InvalidRequestError(
                f"adapter must be a resolved AdapterVersion or None, got {self.adapter!r}"
            )
        if not isinstance(self.sampling, SamplingParams):
            raise InvalidRequestError(f"sampling must be SamplingParams, got {self.sampling!r}")
        if not isinstance(self.request_id, str) or not self.request_id:
            raise InvalidRequestError("request_id must be a non-empty string")


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
    stop string). The last chunk has ``finish_reason`` and ``usage``. ``logprobs`` is
    ``None`` unless the request asked for logprobs.
    """

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A finished request: all its chunks joined."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    logprobs: tuple[TokenLogprob, ...] | None = None

    @classmethod
    def from_chunks(cls, chunks: Sequence[GenerationChunk]) -> GenerationResult:
        """Join the chunks of one request; the last must carry the finish reason."""
        last = chunks[-1]
        if last.finish_reason is None or last.usage is None:
            raise ValueError("the last chunk of a finished request has a finish_reason")
        has_logprobs = last.logprobs is not None
        return cls(
            request_id=last.request_id,
            text="".join(c.text for c in chunks),
            token_ids=tuple(t for c in chunks for t in c.token_ids),
            finish_reason=last.finish_reason,
            usage=last.usage,
            logprobs=tuple(lp for c in chunks for lp in c.logprobs or ()) if has_logprobs else None,
        )
