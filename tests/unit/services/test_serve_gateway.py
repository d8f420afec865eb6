"""ServeGateway over a stand-in for the model deployment's handle: what a replica's death
becomes, and that a stream closed early is cancelled on the replica."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from ray.exceptions import ActorDiedError
from ray.exceptions import ActorUnavailableError

from services.engine import GenerationChunk
from services.engine import GenerationRequest
from services.exceptions import ReplicaLostError
from services.serve import ServeGateway
from tests.factories import adapter_version

CHUNK = GenerationChunk("r", "A", (65,))


class Response:
    """A streaming DeploymentResponseGenerator: ``script``'s chunks, then its error."""

    def __init__(self, script: list[GenerationChunk | BaseException]) -> None:
        self._script = script
        self.cancelled = False

    async def _items(self) -> AsyncIterator[GenerationChunk]:
        for item in self._script:
            if isinstance(item, BaseException):
                raise item
            yield item

    def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        return self._items()

    def cancel(self) -> None:
        self.cancelled = True


class Handle:
    """``handle.options(stream=True, multiplexed_model_id=key).generate.remote(request)``."""

    def __init__(self, script: list[GenerationChunk | BaseException]) -> None:
        self.response = Response(script)
        self.model_ids: list[str] = []
        self.generate = self

    def options(self, *, stream: bool, multiplexed_model_id: str) -> Handle:
        assert stream
        self.model_ids.append(multiplexed_model_id)
        return self

    def remote(self, request: GenerationRequest) -> Response:
        return self.response


def request() -> GenerationRequest:
    return GenerationRequest(prompt="x", adapter=adapter_version("bot"))


async def chunks_of(gateway: ServeGateway) -> list[Any]:
    return [chunk async for chunk in gateway.generate(request())]


@pytest.mark.parametrize("death", [ActorDiedError(), ActorUnavailableError("gone", None)])
async def test_a_dead_replica_becomes_replica_lost_naming_the_adapter(
    death: BaseException,
) -> None:
    handle = Handle([CHUNK, death])

    with pytest.raises(ReplicaLostError, match="serving acme/bot@1 died") as lost:
        await chunks_of(ServeGateway(handle, board=None))

    assert lost.value.__cause__ is death
    assert handle.model_ids == ["acme/bot@1"]  # routed by the adapter's key


async def test_a_replica_error_that_is_not_a_death_passes_through_unchanged() -> None:
    handle = Handle([ValueError("engine bug")])

    with pytest.raises(ValueError, match="engine bug"):
        await chunks_of(ServeGateway(handle, board=None))


async def test_a_finished_stream_is_not_cancelled_and_a_closed_one_is() -> None:
    finished, closed = Handle([CHUNK, CHUNK]), Handle([CHUNK, CHUNK])

    assert await chunks_of(ServeGateway(finished, board=None)) == [CHUNK, CHUNK]
    stream = ServeGateway(closed, board=None).generate(request())
    assert await anext(stream) == CHUNK
    await stream.aclose()  # the client went away

    assert (finished.response.cancelled, closed.response.cancelled) == (False, True)
