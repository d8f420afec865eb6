"""The loramux Python SDK: :class:`Client` and its asyncio twin :class:`AsyncClient`.

Light by design: it imports only httpx and pydantic, so ``pip install loramux`` (no
server extras) is enough to push adapters and generate text::

    from services.client import Client

    with Client() as client:  # LORAMUX_URL / LORAMUX_API_KEY or ~/.loramux/profile.json
        client.adapters.push("./my-adapter", "support-bot")
        reply = client.chat.create(
            model="support-bot", messages=[{"role": "user", "content": "Hi"}]
        )

Connection settings come from the arguments, else the environment (``LORAMUX_URL``,
``LORAMUX_API_KEY``), else the profile ``loramux up`` writes
(``~/.loramux/profile.json``: ``{"url", "api_key"}``; its key only for its URL), else
``http://127.0.0.1:8000`` without a key.

Retries: a 503 answer (honouring ``Retry-After``) and a failed connection are retried
with exponential backoff, ``max_retries`` times; a failure after the request may have
reached the server (a reset or a read timeout) is retried only for idempotent methods
(GET, PUT, DELETE), so a push or a generation is never run twice. Every other error
status raises at once, as the class :mod:`services.exceptions` maps it to.
"""

from __future__ import annotations

import asyncio
import os
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from typing import Any
from typing import Generic
from typing import Literal
from typing import TypeVar
from typing import cast
from typing import overload
from urllib.parse import quote

import httpx
from pydantic import BaseModel
from pydantic import ValidationError

from adapter_store import CONFIG_NAME
from adapter_store import WEIGHTS_NAME
from services.client._models import AdapterInfo
from services.client._models import AdapterPage
from services.client._models import AdapterVersionInfo
from services.client._models import AliasUpdate
from services.client._models import ChatCompletion
from services.client._models import ChatCompletionChunk
from services.client._models import ChatCompletionRequest
from services.client._models import Completion
from services.client._models import CompletionRequest
from services.client._models import Deleted
from services.client._models import ErrorBody
from services.client._models import Health
from services.client._models import KeyRevoke
from services.client._models import KeyRevoked
from services.client._models import ModelList
from services.client._models import Origin
from services.client._models import QuotaUpdate
from services.client._models import RequestLimits
from services.client._models import TenantCreate
from services.client._models import TenantCreated
from services.client._models import TenantLimitsInfo
from services.client._models import TenantUsage
from services.client._models import TrainingJob
from services.client._models import TrainingJobCreate
from services.client._models import TrainingOptions
from services.client._models import TrainingProgress
from services.client._profile import PROFILE_PATH
from services.client._profile import read_profile
from services.client._stats import ServiceStats
from services.exceptions import APIConnectionError
from services.exceptions import APIStatusError
from services.exceptions import InvalidAdapterPathError
from services.exceptions import error_for

__all__ = [
    "DEFAULT_URL",
    "PEFT_FILES",
    "AsyncClient",
    "Client",
    "ProgressCallback",
]

DEFAULT_URL = "http://127.0.0.1:8000"
PEFT_FILES = (CONFIG_NAME, WEIGHTS_NAME)
"""The files of a PEFT LoRA adapter that a push uploads and a download returns."""

ProgressCallback = Callable[[int, int], None]
"""``on_progress(bytes_done, bytes_total)``, called as an upload reads its files or a
download receives its bytes (``bytes_total`` 0 when the server did not say)."""

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
# Failures that happen before the request leaves: safe to retry for every method.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_DONE = "[DONE]"
_USER_AGENT = "loramux-python/0.1"

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)


# --- configuration ------------------------------------------------------------------


def _resolve_connection(
    base_url: str | None, api_key: str | None, profile_path: Path
) -> tuple[str, str | None]:
    """Arguments, else environment, else the profile file, else the local default.

    The profile's key is used only with the profile's own URL, so it never goes to
    another server.
    """
    url = base_url or os.environ.get("LORAMUX_URL")
    key = api_key or os.environ.get("LORAMUX_API_KEY")
    if url is None or key is None:
        profile = read_profile(profile_path)
        url = url or profile.get("url") or DEFAULT_URL
        if key is None and profile.get("url", "").rstrip("/") == url.rstrip("/"):
            key = profile.get("api_key")
    return url.rstrip("/"), key


@dataclass(frozen=True)
class _RetryPolicy:
    max_retries: int
    backoff_s: float
    max_backoff_s: float

    def settle(
        self,
        attempt: int,
        request: httpx.Request,
        outcome: httpx.Response | httpx.TransportError,
    ) -> float | None:
        """What follows attempt number ``attempt``: seconds to wait before the next one,
        or None when ``outcome`` is the success to return.

        Raises:
            APIConnectionError: the attempt failed in transport and may not be retried.
            APIStatusError: (a subclass) an error answer that may not be retried; its
                body has been read.
        """
        delay = self.delay(attempt, request, outcome)
        if delay is not None:
            return delay
        if isinstance(outcome, httpx.TransportError):
            raise _connection_error(request, outcome) from outcome
        if outcome.is_error:
            raise _error_from_response(outcome)
        return None

    def delay(
        self, attempt: int, request: httpx.Request, outcome: httpx.Response | Exception
    ) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``; None: do not retry."""
        if attempt >= self.max_retries:
            return None
        if isinstance(outcome, httpx.Response):
            if outcome.status_code != 503:
                return None
            retry_after = _retry_after_s(outcome)
            if retry_after is not None:
                return min(retry_after, self.max_backoff_s)
        elif not isinstance(outcome, _NOT_SENT) and request.method not in _IDEMPOTENT:
            return None
        return min(self.backoff_s * 2**attempt, self.max_backoff_s)


def _retry_after_s(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: use the backoff


# --- responses and streams ----------------------------------------------------------


def _error_from_response(response: httpx.Response) -> APIStatusError:
    """The exception for an error response whose body has been read."""
    try:
        detail = ErrorBody.model_validate_json(response.content).error
    except ValidationError:
        text = response.text.strip() or response.reason_phrase
        return error_for(response.status_code, "http_error", text[:500])
    return error_for(response.status_code, detail.type, detail.message)


def _parse(model: type[ModelT], payload: str | bytes) -> ModelT:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise APIStatusError(
            f"the server's answer is not a valid {model.__name__}: {exc}",
            type="invalid_response",
        ) from exc


class _ChunkReader(Generic[ModelT]):
    """Server-sent events of ``model`` chunks, fed line by line.

    :meth:`feed` returns a chunk once its event is complete; after the final
    ``[DONE]`` event ``done`` is True. An event that carries an error raises it.
    """

    def __init__(self, model: type[ModelT]) -> None:
        self._model = model
        self._data: list[str] = []
        self.done = False

    def feed(self, line: str) -> ModelT | None:
        if line.startswith("data:"):
            self._data.append(line[5:].removeprefix(" "))
            return None
        if line or not self._data:
            return None  # comments (":") and other fields (event:, id:) carry nothing we use
        data, self._data = "\n".join(self._data), []  # a blank line ends the event
        if data == _DONE:
            self.done = True
            return None
        if data.startswith('{"error"'):
            try:
                detail = ErrorBody.model_validate_json(data).error
            except ValidationError:
                pass  # not an error event after all; parse it as a chunk
            else:
                raise error_for(None, detail.type, detail.message)
        return _parse(self._model, data)


def _truncated(request: httpx.Request) -> APIConnectionError:
    return APIConnectionError(f"{request.method} {request.url}: the stream ended before [DONE]")


def _connection_error(request: httpx.Request, exc: Exception) -> APIConnectionError:
    return APIConnectionError(f"{request.method} {request.url} failed: {exc!r}")


# --- uploads and downloads ----------------------------------------------------------


class _ProgressFile:
    """A read-only file that reports the bytes read from it (httpx reads uploads so)."""

    def __init__(self, file: IO[bytes], progress: _UploadProgress) -> None:
        self._file = file
        self._progress = progress

    def fileno(self) -> int:  # lets httpx size the part without reading it
        return self._file.fileno()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._file.seek(offset, whence)
        self._progress.moved(self, position)
        return position

    def tell(self) -> int:
        return self._file.tell()

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._progress.moved(self, self._file.tell())
        return chunk


class _UploadProgress:
    def __init__(self, total: int, callback: ProgressCallback | None) -> None:
        self.total = total
        self._callback = callback
        self._positions: dict[int, int] = {}

    def moved(self, file: _ProgressFile, position: int) -> None:
        if self._positions.get(id(file)) == position:
            return
        self._positions[id(file)] = position
        if self._callback is not None:
            self._callback(sum(self._positions.values()), self.total)


def _upload_parts(path: Path) -> list[tuple[str, Path]]:
    """(multipart field, file) pairs for a PEFT directory or an adapter archive.

    Raises:
        InvalidAdapterPathError: the path is missing, or a directory without the PEFT files.
    """
    if path.is_file():
        if not path.name.endswith(_ARCHIVE_SUFFIXES):
            raise InvalidAdapterPathError(
                f"{path} is a file but not an archive ({', '.join(_ARCHIVE_SUFFIXES)}); "
                "pass the directory that model.save_pretrained() wrote, or an archive of it"
            )
        return [("archive", path)]
    if not path.is_dir():
        raise InvalidAdapterPathError(f"{path} does not exist")
    missing = [name for name in PEFT_FILES if not (path / name).is_file()]
    if missing:
        hint = (
            "; adapter_model.bin is pickle, which loramux never loads: save with "
            "model.save_pretrained(dir, safe_serialization=True)"
            if (path / "adapter_model.bin").is_file()
            else "; save the adapter with PEFT's model.save_pretrained(dir)"
        )
        raise InvalidAdapterPathError(f"{path} has no {' or '.join(missing)}{hint}")
    return [("files", path / name) for name in PEFT_FILES]


def _open_upload(
    stack: ExitStack, path: Path, on_progress: ProgressCallback | None
) -> list[tuple[str, tuple[str, _ProgressFile, str]]]:
    parts = _upload_parts(Path(path))
    progress = _UploadProgress(sum(file.stat().st_size for _, file in parts), on_progress)
    return [
        (
            field,
            (
                file.name,
                _ProgressFile(stack.enter_context(file.open("rb")), progress),
                "application/octet-stream",
            ),
        )
        for field, file in parts
    ]


def _extract_adapter(archive: Path, dest: Path) -> None:
    """Unpack the PEFT files of a downloaded tar.gz into ``dest``; nothing else.

    Raises:
        APIStatusError: (type ``invalid_response``) not a tar archive, or not the PEFT files.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [
                member
                for member in tar.getmembers()
                if member.isfile() and Path(member.name).name in PEFT_FILES
            ]
            for member in members:
                member.name = Path(member.name).name  # flatten: never write outside dest
            found = {member.name for member in members}
            if found != set(PEFT_FILES):
                raise APIStatusError(
                    f"the downloaded archive holds {sorted(found)}, not {list(PEFT_FILES)}",
                    type="invalid_response",
                )
            tar.extractall(dest, members=members, filter="data")
    except tarfile.TarError as exc:
        raise APIStatusError(
            f"the downloaded adapter is not a valid tar archive: {exc}", type="invalid_response"
        ) from exc


class _AdapterDownload:
    """A downloaded adapter archive as it arrives: written to a temporary file in
    ``directory``, counted against the answer's Content-Length for ``on_progress``, and
    unpacked into ``directory`` when the block ends without an error."""

    def __init__(
        self,
        dest: str | os.PathLike[str],
        response: httpx.Response,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.directory = Path(dest)
        self.directory.mkdir(parents=True, exist_ok=True)
        declared = response.headers.get("content-length", "")
        self._total = int(declared) if declared.isdigit() else 0
        self._received = 0
        self._on_progress = on_progress
        self._archive = tempfile.NamedTemporaryFile(dir=self.directory, suffix=".tar.gz")  # noqa: SIM115

    def __enter__(self) -> _AdapterDownload:
        return self

    def write(self, chunk: bytes) -> None:
        self._archive.write(chunk)
        self._received += len(chunk)
        if self._on_progress is not None:
            self._on_progress(self._received, self._total)

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        with self._archive:
            if exc_type is None:
                self._archive.flush()
                _extract_adapter(Path(self._archive.name), self.directory)


def _segment(text: str) -> str:
    """One URL path segment; ``@`` and ``:`` stay readable (``name@3``, ``name:prod``)."""
    return quote(str(text), safe="@:")


# --- the shared core ----------------------------------------------------------------


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One API call, built without I/O: the request and how to read its answer."""

    request: httpx.Request
    parse: Callable[[httpx.Response], T]


class _BaseClient:
    """Settings, request building and error mapping, shared by the sync and async twins."""

    _http: httpx.Client | httpx.AsyncClient

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        *,
        max_retries: int,
        backoff_s: float,
        max_backoff_s: float,
        profile_path: Path,
    ) -> None:
        if max_retries < 0 or backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("max_retries, backoff_s and max_backoff_s must be >= 0")
        self.base_url, self.api_key = _resolve_connection(base_url, api_key, profile_path)
        self._retry = _RetryPolicy(max_retries, backoff_s, max_backoff_s)

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": _USER_AGENT}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _call(
        self,
        method: str,
        path: str,
        answer: type[ModelT],
        *,
        params: Mapping[str, Any] | None = None,
        body: BaseModel | None = None,
        data: Mapping[str, str] | None = None,
        files: list[tuple[str, tuple[str, _ProgressFile, str]]] | None = None,
    ) -> _Call[ModelT]:
        request = self._http.build_request(
            method,
            path,
            params={key: value for key, value in (params or {}).items() if value is not None},
            json=body.model_dump(mode="json", exclude_unset=True) if body is not None else None,
            data=data,
            files=files,
        )
        return _Call(request, lambda response: _parse(answer, response.content))

    def _stream_request(self, path: str, body: BaseModel) -> httpx.Request:
        request = self._http.build_request(
            "POST", path, json=body.model_dump(mode="json", exclude_unset=True)
        )
        request.headers["Accept"] = "text/event-stream"
        return request


class Client(_BaseClient):
    """The loramux API, blocking. Use it as a context manager, or call :meth:`close`.

    ``timeout`` bounds each connect, read, write and pool wait (seconds), not a whole
    generation; ``max_retries``, ``backoff_s`` (doubling per retry) and ``max_backoff_s``
    shape the retries. ``transport`` replaces httpx's network transport (tests pass
    ``httpx.MockTransport``); ``sleep`` is the backoff's sleep.

    Raises (every method): :class:`~services.exceptions.APIStatusError` subclasses for error
    answers, :class:`~services.exceptions.APIConnectionError` when the server cannot be
    reached, both after the retries described in the module docstring; a
    ``pydantic.ValidationError`` naming the parameter for a bad argument, before sending.
    """

    _http: httpx.Client

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        profile_path: Path = PROFILE_PATH,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            profile_path=profile_path,
        )
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers(), timeout=timeout, transport=transport
        )
        self.adapters = Adapters(self)
        self.completions = Completions(self)
        self.chat = Chat(self)
        self.tenants = Tenants(self)
        self.training = Training(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def health(self) -> Health:
        return self._run(self._call("GET", "/healthz", Health))

    def stats(self) -> ServiceStats:
        """The service's cache and routing statistics (``GET /v1/stats``)."""
        return self._run(self._call("GET", "/v1/stats", ServiceStats))

    def models(self) -> ModelList:
        """The base model and this tenant's adapters, as ``GET /v1/models`` lists them."""
        return self._run(self._call("GET", "/v1/models", ModelList))

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send with retries; returns a success response, raises for anything else."""
        attempt = 0
        while True:
            try:
                outcome: httpx.Response | httpx.TransportError = self._http.send(
                    request, stream=stream
                )
            except httpx.TransportError as exc:
                outcome = exc
            else:
                if outcome.is_error:  # its body names the error; a retry drops it
                    outcome.read()
                    outcome.close()
            delay = self._retry.settle(attempt, request, outcome)
            if delay is None:
                return cast(httpx.Response, outcome)
            self._sleep(delay)
            attempt += 1

    def _run(self, call: _Call[T]) -> T:
        return call.parse(self._send(call.request))

    def _stream(self, request: httpx.Request, chunk: type[ModelT]) -> Iterator[ModelT]:
        response = self._send(request, stream=True)  # errors raise here, before iterating
        return self._iter_chunks(response, chunk)

    @staticmethod
    def _iter_chunks(response: httpx.Response, chunk: type[ModelT]) -> Iterator[ModelT]:
        reader = _ChunkReader(chunk)
        try:
            for line in response.iter_lines():
                if (parsed := reader.feed(line)) is not None:
                    yield parsed
                elif reader.done:
                    return
        except httpx.TransportError as exc:
            raise _connection_error(response.request, exc) from exc
        finally:
            response.close()
        raise _truncated(response.request)


class AsyncClient(_BaseClient):
    """The loramux API for asyncio; the twin of :class:`Client` (``aclose`` for ``close``)."""

    _http: httpx.AsyncClient

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        profile_path: Path = PROFILE_PATH,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            profile_path=profile_path,
        )
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers(), timeout=timeout, transport=transport
        )
        self.adapters = AsyncAdapters(self)
        self.completions = AsyncCompletions(self)
        self.chat = AsyncChat(self)
        self.tenants = AsyncTenants(self)
        self.training = AsyncTraining(self)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def health(self) -> Health:
        return await self._run(self._call("GET", "/healthz", Health))

    async def stats(self) -> ServiceStats:
        """The service's cache and routing statistics (``GET /v1/stats``)."""
        return await self._run(self._call("GET", "/v1/stats", ServiceStats))

    async def models(self) -> ModelList:
        """The base model and this tenant's adapters, as ``GET /v1/models`` lists them."""
        return await self._run(self._call("GET", "/v1/models", ModelList))

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send with retries; returns a success response, raises for anything else."""
        attempt = 0
        while True:
            try:
                outcome: httpx.Response | httpx.TransportError = await self._http.send(
                    request, stream=stream
                )
            except httpx.TransportError as exc:
                outcome = exc
            else:
                if outcome.is_error:  # its body names the error; a retry drops it
                    await outcome.aread()
                    await outcome.aclose()
            delay = self._retry.settle(attempt, request, outcome)
            if delay is None:
                return cast(httpx.Response, outcome)
            await self._sleep(delay)
            attempt += 1

    async def _run(self, call: _Call[T]) -> T:
        return call.parse(await self._send(call.request))

    async def _stream(self, request: httpx.Request, chunk: type[ModelT]) -> AsyncIterator[ModelT]:
        response = await self._send(request, stream=True)  # errors raise here
        return self._iter_chunks(response, chunk)

    @staticmethod
    async def _iter_chunks(response: httpx.Response, chunk: type[ModelT]) -> AsyncIterator[ModelT]:
        reader = _ChunkReader(chunk)
        try:
            async for line in response.aiter_lines():
                if (parsed := reader.feed(line)) is not None:
                    yield parsed
                elif reader.done:
                    return
        except httpx.TransportError as exc:
            raise _connection_error(response.request, exc) from exc
        finally:
            await response.aclose()
        raise _truncated(response.request)


# --- resources: calls built once, run by the sync or the async client ---------------


class _AdapterCalls:
    """The adapter endpoints as :class:`_Call` builders (no I/O)."""

    def __init__(self, client: _BaseClient) -> None:
        self._client = client

    def _list_page(self, cursor: str | None, limit: int) -> _Call[AdapterPage]:
        params = {"cursor": cursor, "limit": limit}
        return self._client._call("GET", "/v1/adapters", AdapterPage, params=params)

    def _get(self, name: str) -> _Call[AdapterInfo]:
        return self._client._call("GET", f"/v1/adapters/{_segment(name)}", AdapterInfo)

    def _get_version(self, name: str, version: int) -> _Call[AdapterVersionInfo]:
        path = f"/v1/adapters/{_segment(name)}/versions/{int(version)}"
        return self._client._call("GET", path, AdapterVersionInfo)

    def _alias(self, name: str, alias: str, version: int) -> _Call[AdapterInfo]:
        path = f"/v1/adapters/{_segment(name)}/aliases/{_segment(alias)}"
        return self._client._call("PUT", path, AdapterInfo, body=AliasUpdate(version=version))

    def _remove_alias(self, name: str, alias: str) -> _Call[AdapterInfo]:
        path = f"/v1/adapters/{_segment(name)}/aliases/{_segment(alias)}"
        return self._client._call("DELETE", path, AdapterInfo)

    def _delete(self, name: str, version: int | None) -> _Call[Deleted]:
        path = f"/v1/adapters/{_segment(name)}"
        if version is not None:
            path += f"/versions/{int(version)}"
        return self._client._call("DELETE", path, Deleted)

    def _push(
        self,
        stack: ExitStack,
        path: str | os.PathLike[str],
        name: str,
        on_progress: ProgressCallback | None,
        origin: Origin,
    ) -> _Call[AdapterVersionInfo]:
        files = _open_upload(stack, Path(path), on_progress)
        data = {"name": name, "origin": origin}
        return self._client._call(
            "POST", "/v1/adapters", AdapterVersionInfo, data=data, files=files
        )

    def _download_request(self, ref: str) -> httpx.Request:
        return self._client._http.build_request("GET", f"/v1/adapters/{_segment(ref)}/download")


class Adapters(_AdapterCalls):
    """``client.adapters``: push, list, get, alias, delete and download adapters."""

    _client: Client

    def push(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        on_progress: ProgressCallback | None = None,
        origin: Origin = "pushed",
    ) -> AdapterVersionInfo:
        """Upload a PEFT adapter directory (or a .tar.gz/.zip of one) as a new version.

        ``on_progress(bytes_sent, bytes_total)`` is called as the files are read.
        ``origin`` ``trained`` marks an adapter fine-tuned by ``loramux train --local``.

        Raises:
            InvalidAdapterPathError: ``path`` is not a PEFT adapter (checked before upload).
            BadRequestError: the server rejected the adapter; the message says why.
            PayloadTooLargeError, OverQuotaError, ResourceConflictError: as named.
        """
        with ExitStack() as stack:
            return self._client._run(self._push(stack, path, name, on_progress, origin))

    def list_page(self, *, cursor: str | None = None, limit: int = 100) -> AdapterPage:
        return self._client._run(self._list_page(cursor, limit))

    def list(self, *, limit: int = 100) -> Iterator[AdapterInfo]:
        """Every adapter of the tenant, fetching ``limit`` per page as iteration goes."""
        cursor: str | None = None
        while True:
            page = self.list_page(cursor=cursor, limit=limit)
            yield from page.data
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def get(self, name: str) -> AdapterInfo:
        return self._client._run(self._get(name))

    def get_version(self, name: str, version: int) -> AdapterVersionInfo:
        return self._client._run(self._get_version(name, version))

    def alias(self, name: str, alias: str, version: int) -> AdapterInfo:
        """Point ``alias`` (for example ``prod``) of adapter ``name`` at ``version``."""
        return self._client._run(self._alias(name, alias, version))

    def remove_alias(self, name: str, alias: str) -> AdapterInfo:
        """Remove ``alias`` of adapter ``name``; its version stays."""
        return self._client._run(self._remove_alias(name, alias))

    def delete(self, name: str, *, version: int | None = None) -> Deleted:
        """Delete one version, or (``version=None``) the adapter with all its versions."""
        return self._client._run(self._delete(name, version))

    def download(
        self,
        ref: str,
        dest: str | os.PathLike[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Fetch the PEFT files of ``ref`` (``name``, ``name@3``, ``name:prod``) into ``dest``.

        Returns the directory, which then loads with PEFT's ``PeftModel.from_pretrained``.
        ``on_progress(bytes_received, bytes_total)`` is called as the archive arrives.
        """
        response = self._client._send(self._download_request(ref), stream=True)
        with _AdapterDownload(dest, response, on_progress) as download:
            try:
                for chunk in response.iter_bytes():
                    download.write(chunk)
            except httpx.TransportError as exc:
                raise _connection_error(response.request, exc) from exc
            finally:
                response.close()
        return download.directory


class AsyncAdapters(_AdapterCalls):
    """``client.adapters`` of :class:`AsyncClient`; see :class:`Adapters`."""

    _client: AsyncClient

    async def push(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        on_progress: ProgressCallback | None = None,
        origin: Origin = "pushed",
    ) -> AdapterVersionInfo:
        with ExitStack() as stack:
            return await self._client._run(self._push(stack, path, name, on_progress, origin))

    async def list_page(self, *, cursor: str | None = None, limit: int = 100) -> AdapterPage:
        return await self._client._run(self._list_page(cursor, limit))

    async def list(self, *, limit: int = 100) -> AsyncIterator[AdapterInfo]:
        cursor: str | None = None
        while True:
            page = await self.list_page(cursor=cursor, limit=limit)
            for adapter in page.data:
                yield adapter
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def get(self, name: str) -> AdapterInfo:
        return await self._client._run(self._get(name))

    async def get_version(self, name: str, version: int) -> AdapterVersionInfo:
        return await self._client._run(self._get_version(name, version))

    async def alias(self, name: str, alias: str, version: int) -> AdapterInfo:
        return await self._client._run(self._alias(name, alias, version))

    async def remove_alias(self, name: str, alias: str) -> AdapterInfo:
        return await self._client._run(self._remove_alias(name, alias))

    async def delete(self, name: str, *, version: int | None = None) -> Deleted:
        return await self._client._run(self._delete(name, version))

    async def download(
        self,
        ref: str,
        dest: str | os.PathLike[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        response = await self._client._send(self._download_request(ref), stream=True)
        with _AdapterDownload(dest, response, on_progress) as download:
            try:
                async for chunk in response.aiter_bytes():
                    download.write(chunk)
            except httpx.TransportError as exc:
                raise _connection_error(response.request, exc) from exc
            finally:
                await response.aclose()
        return download.directory


class _GenerationCalls:
    """``POST`` of a completions-style endpoint, plain or streamed (no I/O)."""

    _path: str
    _request_model: type[CompletionRequest] | type[ChatCompletionRequest]

    def __init__(self, client: _BaseClient) -> None:
        self._client = client

    def _body(self, params: Mapping[str, Any]) -> BaseModel:
        """The validated request body.

        Raises:
            pydantic.ValidationError: a parameter is unknown or out of range (checked
                before anything is sent).
        """
        return self._request_model(**params)


class _CompletionCalls(_GenerationCalls):
    _path = "/v1/completions"
    _request_model = CompletionRequest


class _ChatCalls(_GenerationCalls):
    _path = "/v1/chat/completions"
    _request_model = ChatCompletionRequest


class Completions(_CompletionCalls):
    """``client.completions`` (OpenAI's ``/v1/completions``)."""

    _client: Client

    @overload
    def create(
        self,
        *,
        model: str,
        prompt: str | Iterable[str],
        stream: Literal[False] = False,
        **params: Any,
    ) -> Completion: ...
    @overload
    def create(
        self, *, model: str, prompt: str | Iterable[str], stream: Literal[True], **params: Any
    ) -> Iterator[Completion]: ...
    def create(
        self, *, model: str, prompt: str | Iterable[str], stream: bool = False, **params: Any
    ) -> Completion | Iterator[Completion]:
        """Complete ``prompt`` with ``model`` (an adapter reference or the base model).

        ``params`` are OpenAI's (``max_tokens``, ``temperature``, ``top_p``, ``stop``,
        ``seed``...). With ``stream=True`` the chunks arrive as the tokens do.
        """
        prompt = prompt if isinstance(prompt, str) else list(prompt)
        body = self._body(dict(params, model=model, prompt=prompt, stream=stream))
        if stream:
            return self._client._stream(self._client._stream_request(self._path, body), Completion)
        return self._client._run(self._client._call("POST", self._path, Completion, body=body))


class Chat(_ChatCalls):
    """``client.chat`` (OpenAI's ``/v1/chat/completions``)."""

    _client: Client

    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[False] = False,
        **params: Any,
    ) -> ChatCompletion: ...
    @overload
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[True],
        **params: Any,
    ) -> Iterator[ChatCompletionChunk]: ...
    def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: bool = False,
        **params: Any,
    ) -> ChatCompletion | Iterator[ChatCompletionChunk]:
        """Answer ``messages`` (``{"role", "content"}``) with ``model``; see
        :meth:`Completions.create` for ``params`` and ``stream``."""
        body = self._body(dict(params, model=model, messages=list(messages), stream=stream))
        if stream:
            request = self._client._stream_request(self._path, body)
            return self._client._stream(request, ChatCompletionChunk)
        return self._client._run(self._client._call("POST", self._path, ChatCompletion, body=body))


class AsyncCompletions(_CompletionCalls):
    """``client.completions`` of :class:`AsyncClient`; see :class:`Completions`."""

    _client: AsyncClient

    @overload
    async def create(
        self,
        *,
        model: str,
        prompt: str | Iterable[str],
        stream: Literal[False] = False,
        **params: Any,
    ) -> Completion: ...
    @overload
    async def create(
        self, *, model: str, prompt: str | Iterable[str], stream: Literal[True], **params: Any
    ) -> AsyncIterator[Completion]: ...
    async def create(
        self, *, model: str, prompt: str | Iterable[str], stream: bool = False, **params: Any
    ) -> Completion | AsyncIterator[Completion]:
        prompt = prompt if isinstance(prompt, str) else list(prompt)
        body = self._body(dict(params, model=model, prompt=prompt, stream=stream))
        if stream:
            request = self._client._stream_request(self._path, body)
            return await self._client._stream(request, Completion)
        return await self._client._run(
            self._client._call("POST", self._path, Completion, body=body)
        )


class AsyncChat(_ChatCalls):
    """``client.chat`` of :class:`AsyncClient`; see :class:`Chat`."""

    _client: AsyncClient

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[False] = False,
        **params: Any,
    ) -> ChatCompletion: ...
    @overload
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: Literal[True],
        **params: Any,
    ) -> AsyncIterator[ChatCompletionChunk]: ...
    async def create(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        stream: bool = False,
        **params: Any,
    ) -> ChatCompletion | AsyncIterator[ChatCompletionChunk]:
        body = self._body(dict(params, model=model, messages=list(messages), stream=stream))
        if stream:
            request = self._client._stream_request(self._path, body)
            return await self._client._stream(request, ChatCompletionChunk)
        return await self._client._run(
            self._client._call("POST", self._path, ChatCompletion, body=body)
        )


class _TenantCalls:
    """The admin endpoints as :class:`_Call` builders (no I/O)."""

    def __init__(self, client: _BaseClient) -> None:
        self._client = client

    def _create(self, name: str) -> _Call[TenantCreated]:
        body = TenantCreate(name=name)
        return self._client._call("POST", "/v1/tenants", TenantCreated, body=body)

    def _add_key(self, name: str) -> _Call[TenantCreated]:
        path = f"/v1/tenants/{_segment(name)}/keys"
        return self._client._call("POST", path, TenantCreated)

    def _revoke_key(self, api_key: str) -> _Call[KeyRevoked]:
        body = KeyRevoke(api_key=api_key)
        return self._client._call("POST", "/v1/keys/revoke", KeyRevoked, body=body)

    def _set_quota(
        self, name: str, max_adapters: int | None, max_bytes: int | None
    ) -> _Call[TenantUsage]:
        # Both fields are sent, null included: an omitted quota becomes unlimited.
        body = QuotaUpdate(max_adapters=max_adapters, max_bytes=max_bytes)
        path = f"/v1/tenants/{_segment(name)}/quota"
        return self._client._call("PUT", path, TenantUsage, body=body)

    def _usage(self, name: str) -> _Call[TenantUsage]:
        path = f"/v1/tenants/{_segment(name)}/usage"
        return self._client._call("GET", path, TenantUsage)

    def _set_limits(self, name: str, limits: RequestLimits) -> _Call[TenantLimitsInfo]:
        # Every field is sent, null included: an omitted limit falls back to the default.
        body = RequestLimits.model_validate(limits.model_dump())
        path = f"/v1/tenants/{_segment(name)}/limits"
        return self._client._call("PUT", path, TenantLimitsInfo, body=body)

    def _limits(self, name: str) -> _Call[TenantLimitsInfo]:
        path = f"/v1/tenants/{_segment(name)}/limits"
        return self._client._call("GET", path, TenantLimitsInfo)


class Tenants(_TenantCalls):
    """``client.tenants``: tenants, their API keys and quotas (admin key only).

    Raises (every method): PermissionDeniedError when the client's key is not the
    admin key; ResourceNotFoundError for an unknown tenant (or key, for ``revoke_key``).
    """

    _client: Client

    def create(self, name: str) -> TenantCreated:
        """Create tenant ``name``; the answer holds its API key, shown only this once.

        Raises:
            ResourceConflictError: the tenant exists already.
        """
        return self._client._run(self._create(name))

    def add_key(self, name: str) -> str:
        """Issue another API key for tenant ``name`` and return it (shown only this once)."""
        return self._client._run(self._add_key(name)).api_key

    def revoke_key(self, api_key: str) -> KeyRevoked:
        """Revoke ``api_key`` at once; the answer names the tenant it belonged to."""
        return self._client._run(self._revoke_key(api_key))

    def set_quota(
        self, name: str, *, max_adapters: int | None = None, max_bytes: int | None = None
    ) -> TenantUsage:
        """Set both quotas of tenant ``name`` (None: unlimited); returns its usage."""
        return self._client._run(self._set_quota(name, max_adapters, max_bytes))

    def usage(self, name: str) -> TenantUsage:
        """Tenant ``name``'s adapter count and stored bytes, with its quotas."""
        return self._client._run(self._usage(name))

    def set_limits(self, name: str, limits: RequestLimits) -> TenantLimitsInfo:
        """Replace tenant ``name``'s own request limits (a ``None`` field: the service
        default); returns its own and effective limits."""
        return self._client._run(self._set_limits(name, limits))

    def limits(self, name: str) -> TenantLimitsInfo:
        """Tenant ``name``'s own request limits and the effective ones."""
        return self._client._run(self._limits(name))


class AsyncTenants(_TenantCalls):
    """``client.tenants`` of :class:`AsyncClient`; see :class:`Tenants`."""

    _client: AsyncClient

    async def create(self, name: str) -> TenantCreated:
        return await self._client._run(self._create(name))

    async def add_key(self, name: str) -> str:
        return (await self._client._run(self._add_key(name))).api_key

    async def revoke_key(self, api_key: str) -> KeyRevoked:
        return await self._client._run(self._revoke_key(api_key))

    async def set_quota(
        self, name: str, *, max_adapters: int | None = None, max_bytes: int | None = None
    ) -> TenantUsage:
        return await self._client._run(self._set_quota(name, max_adapters, max_bytes))

    async def usage(self, name: str) -> TenantUsage:
        return await self._client._run(self._usage(name))

    async def set_limits(self, name: str, limits: RequestLimits) -> TenantLimitsInfo:
        return await self._client._run(self._set_limits(name, limits))

    async def limits(self, name: str) -> TenantLimitsInfo:
        return await self._client._run(self._limits(name))


class _TrainingCalls:
    """The training job endpoints as :class:`_Call` builders (no I/O)."""

    _TERMINAL = frozenset({"succeeded", "failed"})

    def __init__(self, client: _BaseClient) -> None:
        self._client = client

    def _create(
        self,
        data: str | Path,
        name: str,
        options: TrainingOptions | None,
        aliases: Sequence[str],
    ) -> _Call[TrainingJob]:
        text = data.read_text(encoding="utf-8") if isinstance(data, Path) else data
        body = TrainingJobCreate(
            name=name, data=text, options=options or TrainingOptions(), aliases=list(aliases)
        )
        return self._client._call("POST", "/v1/training/jobs", TrainingJob, body=body)

    def _get(self, job_id: str) -> _Call[TrainingJob]:
        return self._client._call("GET", f"/v1/training/jobs/{_segment(job_id)}", TrainingJob)

    def _finished(
        self,
        job: TrainingJob,
        on_progress: Callable[[TrainingProgress], None] | None,
        deadline: float | None,
    ) -> bool:
        """One poll of ``wait``: report progress; whether the job has ended."""
        if on_progress is not None and job.progress is not None:
            on_progress(job.progress)
        if job.status in self._TERMINAL:
            return True
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"training job {job.id} is still {job.status}")
        return False


class Training(_TrainingCalls):
    """``client.training``: fine-tune an adapter on the service and publish it.

    Raises (every method): BadRequestError naming the data line or option at fault
    (nothing is trained); ResourceNotFoundError for a job of another tenant.
    """

    _client: Client

    def create(
        self,
        data: str | Path,
        *,
        name: str,
        options: TrainingOptions | None = None,
        aliases: Sequence[str] = (),
    ) -> TrainingJob:
        """Start a job training ``name``'s next version on ``data`` (JSON lines, or a
        path to them); it runs on the service's Ray cluster."""
        return self._client._run(self._create(data, name, options, aliases))

    def get(self, job_id: str) -> TrainingJob:
        """The job's status, progress and, once done, its version or error."""
        return self._client._run(self._get(job_id))

    def wait(
        self,
        job_id: str,
        *,
        on_progress: Callable[[TrainingProgress], None] | None = None,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> TrainingJob:
        """Poll until the job ends (succeeded or failed); ``on_progress`` sees each poll.

        Raises:
            TimeoutError: the job is still queued or running after ``timeout_s``.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if self._finished(job, on_progress, deadline):
                return job
            self._client._sleep(poll_s)


class AsyncTraining(_TrainingCalls):
    """``client.training`` of :class:`AsyncClient`; see :class:`Training`."""

    _client: AsyncClient

    async def create(
        self,
        data: str | Path,
        *,
        name: str,
        options: TrainingOptions | None = None,
        aliases: Sequence[str] = (),
    ) -> TrainingJob:
        return await self._client._run(self._create(data, name, options, aliases))

    async def get(self, job_id: str) -> TrainingJob:
        return await self._client._run(self._get(job_id))

    async def wait(
        self,
        job_id: str,
        *,
        on_progress: Callable[[TrainingProgress], None] | None = None,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> TrainingJob:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = await self.get(job_id)
            if self._finished(job, on_progress, deadline):
                return job
            await self._client._sleep(poll_s)
