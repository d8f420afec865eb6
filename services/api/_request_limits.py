"""What one generation request may ask for: pure checks the ingress runs before routing.

Policy: every check is bounded by the request's size, which the body limit bounds
first, so none can be made slow. The prompt is bounded in UTF-8 bytes at the ingress
(no tokenizer there); the replica still refuses a prompt whose tokens and ``max_tokens``
do not fit the model's context. Each refusal is a 400 (413 for the body) whose message
names the limit, its value and the setting that raises it.

The token estimate that tenant limits charge is the prompt's bytes over
:data:`BYTES_PER_TOKEN` (rounded up) plus ``max_tokens``: a fair count for text, cheap,
and never dependent on the adapter.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from collections.abc import Sequence

from starlette.responses import JSONResponse
from starlette.types import ASGIApp
from starlette.types import Message
from starlette.types import Receive
from starlette.types import Scope
from starlette.types import Send

from services._settings import LimitSettings
from services.api._errors import status_and_body
from services.client._models import ChatCompletionRequest
from services.client._models import CompletionRequest
from services.exceptions import BadRequestError
from services.exceptions import PayloadTooLargeError

__all__ = [
    "BYTES_PER_TOKEN",
    "BodySizeLimit",
    "BodyTooLargeError",
    "LimitExceededError",
    "check_body_size",
    "check_generation",
]

BYTES_PER_TOKEN = 4


class LimitExceededError(BadRequestError):
    """A request above one of the ingress limits (400); ``limit`` names the setting."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class BodyTooLargeError(PayloadTooLargeError):
    """A request body above ``max_body_bytes`` (413)."""

    limit = "max_body_bytes"


def _at_most(what: str, value: int, setting: str, limits: LimitSettings) -> None:
    """Refuse ``value`` above the limit ``setting`` names, naming both and the fix."""
    limit = getattr(limits, setting)
    if value > limit:
        raise LimitExceededError(
            f"{what} is {value}, above this service's limit of {limit} "
            f"(setting LORAMUX_{setting.upper()}); {_HOW[setting]}",
            limit=setting,
        )


_HOW = {
    "max_prompt_bytes": "send a shorter prompt",
    "max_tokens_limit": "ask for fewer tokens",
    "max_stop_sequences": "send fewer stop sequences",
    "max_stop_bytes": "send shorter stop sequences",
    "max_messages": "send fewer messages",
    "max_n": "ask for fewer choices",
}


def check_body_size(size: int, limits: LimitSettings) -> None:
    """Refuse a body of ``size`` bytes (declared, or read so far) above the limit.

    Raises:
        BodyTooLargeError (413): naming ``max_body_bytes``.
    """
    if size > limits.max_body_bytes:
        raise BodyTooLargeError(
            f"the request body is over {limits.max_body_bytes} bytes, this service's limit "
            "(setting LORAMUX_MAX_BODY_BYTES); send a shorter prompt"
        )


def check_generation(
    body: CompletionRequest | ChatCompletionRequest, max_tokens: int, limits: LimitSettings
) -> int:
    """Check a parsed request against the limits; return its token estimate.

    ``max_tokens`` is what the request will generate at most (its own, or the default).

    Raises:
        LimitExceededError (400): the first limit exceeded, named.
    """
    _at_most("n", body.n, "max_n", limits)
    _at_most("max_tokens", max_tokens, "max_tokens_limit", limits)
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    _at_most("the number of stop sequences", len(stops), "max_stop_sequences", limits)
    for stop in stops:
        _at_most("a stop sequence's size in bytes", _utf8_len(stop), "max_stop_bytes", limits)
    if isinstance(body, ChatCompletionRequest):
        _at_most("the number of messages", len(body.messages), "max_messages", limits)
        # A tool-calling turn has no content; its arguments are bounded by the body size.
        texts: Sequence[str] = [message.content or "" for message in body.messages]
    else:
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    prompt_bytes = sum(_utf8_len(text) for text in texts)
    _at_most("the prompt's size in bytes", prompt_bytes, "max_prompt_bytes", limits)
    return math.ceil(prompt_bytes / BYTES_PER_TOKEN) + max_tokens


def _utf8_len(text: str) -> int:
    """The UTF-8 size of ``text`` without encoding it (surrogates count as 3 bytes)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


class BodySizeLimit:
    """ASGI middleware: a body above ``max_body_bytes`` on one of ``paths`` is answered
    413 before the app parses it.

    A declared ``Content-Length`` is checked before anything is read (the server then
    holds the client to it); a chunked body is read here, up to the limit and no
    further, and handed on whole. Memory per request is therefore bounded by the limit.
    """

    def __init__(self, app: ASGIApp, *, limits: LimitSettings, paths: Collection[str]) -> None:
        self._app = app
        self._limits = limits
        self._paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self._paths:
            await self._app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        try:
            if declared.isdigit():
                check_body_size(int(declared), self._limits)
            else:
                receive = await self._buffered(receive)
        except BodyTooLargeError as exc:
            status, body = status_and_body(exc)
            response = JSONResponse(body.model_dump(exclude_none=True), status_code=status)
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)

    async def _buffered(self, receive: Receive) -> Receive:
        """Read the whole body (raising past the limit) and replay it as one message."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _replay(message, receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            check_body_size(size, self._limits)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return _replay({"type": "http.request", "body": b"".join(chunks)}, receive)


def _replay(first: Message, receive: Receive) -> Receive:
    """A ``receive`` that answers ``first`` once, then defers to ``receive``."""
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed
