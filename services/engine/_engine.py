"""The engine: continuous batching of generation requests across adapters.

Scheduling policy (iteration-level, as Orca/vLLM): one loop task alternates between the
event loop (bookkeeping, streaming) and one model thread (forward passes). Each
iteration

1. drops rows that finished or whose client went away, releasing their adapter pins;
2. admits waiting requests in FIFO order while the batch has fewer than
   ``max_batch_size`` rows and the reserved tokens (prompt + ``max_tokens`` of every row)
   stay within ``max_batch_tokens``; a request that does not fit waits, and so does
   everyone behind it (no starvation of long requests);
3. on the model thread: one decode step for all running rows (each with its own adapter
   slot), then one prefill for the admitted requests, which join the batch;
4. streams each row's new token to its client.

A request with ``n`` choices is ``n`` rows that share the prompt and the stream; each row
has its own generator, penalties and grammar matcher. Reserving the worst case up front
means a running request never has to be preempted.
A request's prompt is rendered and tokenized on a tokenizer thread (a long prompt would
otherwise stall every stream on the event loop), one request at a time in arrival order;
then its adapter is acquired (pinned in a GPU slot, loading it if needed) before it
queues, so a cold load delays only the requests for that adapter.

Failure modes: a full waiting queue raises :class:`EngineOverloadedError` at once (a
request counts as waiting from then until it runs: while tokenized, while its adapter
loads, in the queue); a row whose logits hold inf or NaN (an adapter whose weights or
scaling overflow) ends that request alone with :class:`AdapterOverflowError`: the other
rows are sampled without it, and rows never mix in the forward pass, so they produce
exactly what they would alone; a failed forward pass fails the requests in that batch
with :class:`EngineError` and the engine keeps serving; :meth:`Engine.aclose` ends
pending requests with :class:`RequestCancelledError`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from typing import Protocol

import torch

from adapter_store import AdapterVersion
from adapter_store import BaseModelManifest
from services.engine._base_model import BaseModel
from services.engine._batching import KvBatch
from services.engine._chat import render_chat
from services.engine._engine_options import StartedOnEnter
from services.engine._grammar import CompiledGrammar
from services.engine._grammar import GrammarCompiler
from services.engine._grammar import RowGrammar
from services.engine._lora_layers import NO_ADAPTER_SLOT
from services.engine._lora_layers import MultiLoraModel
from services.engine._requests import FinishReason
from services.engine._requests import GenerationChunk
from services.engine._requests import GenerationRequest
from services.engine._requests import GenerationResult
from services.engine._requests import TokenLogprob
from services.engine._requests import TopLogprob
from services.engine._requests import Usage
from services.engine._sampling import SampledToken
from services.engine._sampling import SamplingParams
from services.engine._sampling import sample_batch
from services.engine._text import TextStream
from services.engine.exceptions import AdapterOverflowError
from services.engine.exceptions import EngineError
from services.engine.exceptions import EngineOverloadedError
from services.engine.exceptions import InvalidRequestError
from services.engine.exceptions import RequestCancelledError

__all__ = ["AdapterLease", "AdapterLeaseSource", "Engine"]

logger = logging.getLogger(__name__)


class AdapterLease(Protocol):
    """An adapter pinned in a GPU slot until :meth:`release`."""

    @property
    def slot(self) -> int: ...

    def release(self) -> None: ...


class AdapterLeaseSource(Protocol):
    """What the engine needs from the adapter cache."""

    async def acquire(self, version: AdapterVersion) -> AdapterLease: ...


@dataclass(eq=False)
class _Sequence:
    """One choice of a request inside the engine (a batch row)."""

    request: GenerationRequest
    prompt_ids: list[int]
    text: TextStream
    generator: torch.Generator | None
    queue: asyncio.Queue[GenerationChunk | BaseException]
    index: int = 0
    grammar: RowGrammar | None = None
    lease: AdapterLease | None = None
    slot: int = NO_ADAPTER_SLOT
    output_ids: list[int] = field(default_factory=list)
    state: str = "new"  # new -> waiting -> running -> retired
    done: bool = False  # finished, failed or cancelled: leaves the batch next iteration

    @property
    def sampling(self) -> SamplingParams:
        return self.request.sampling

    @property
    def reserved_tokens(self) -> int:
        return len(self.prompt_ids) + self.request.sampling.max_tokens


class Engine(StartedOnEnter):
    """Generation over one base model with per-request adapters, continuously batched.

    ``adapters`` pins adapters in ``model``'s slots (the adapter cache). ``on_manifest``
    receives the base model's manifest in :meth:`start` (the store's
    ``register_manifest``; it may be a coroutine function). Use as ``async with``.
    """

    def __init__(
        self,
        base: BaseModel,
        model: MultiLoraModel,
        adapters: AdapterLeaseSource,
        *,
        max_batch_size: int = 32,
        max_batch_tokens: int = 32768,
        max_waiting: int = 1024,
        on_manifest: Callable[[BaseModelManifest], Awaitable[object] | object] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1 or max_waiting < 0:
            raise ValueError("max_batch_size and max_batch_tokens must be >= 1, max_waiting >= 0")
        self.base = base
        self.model = model
        self._adapters = adapters
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_waiting = max_waiting
        self._on_manifest = on_manifest
        self._waiting: deque[_Sequence] = deque()
        self._preparing = 0  # requests being tokenized; they count as queued
        self._acquiring = 0  # requests waiting for their adapter; they count as queued
        self._running: list[_Sequence] = []
        self._batch: KvBatch | None = None
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        self._grammars: GrammarCompiler | None = None  # built on the first grammar
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loramux-model")
        # One thread: prompts are prepared in arrival order, and the tokenizer is never
        # used by two preparations at once.
        self._tokenizing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loramux-tokenize")

    @property
    def num_running(self) -> int:
        """Requests in the running batch."""
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        """Requests queued for the batch, including those being tokenized or waiting
        for their adapter."""
        return len(self._waiting) + self._preparing + self._acquiring

    async def start(self) -> None:
        """Register the base model manifest and start the scheduling loop."""
        if self._on_manifest is not None:
            result = self._on_manifest(self.base.manifest)
            if inspect.isawaitable(result):
                await result
        self._ensure_loop()

    async def aclose(self) -> None:
        """Stop the loop; pending requests end with :class:`RequestCancelledError`."""
        self._closing = True
        self._wakeup.set()
        if self._loop_task is not None:
            await self._loop_task
            self._loop_task = None
        self._fail_all(RequestCancelledError("the engine shut down"))
        self._executor.shutdown(wait=True)
        # Not waited for: a preparation still running ends in RequestCancelledError.
        self._tokenizing.shutdown(wait=False)

    async def complete(self, request: GenerationRequest) -> GenerationResult:
        """Run a single-choice ``request`` to the end and return the joined result.

        Raises:
            as :meth:`generate`; ValueError for a request with ``n`` above 1 (use
            :meth:`complete_choices`).
        """
        return GenerationResult.from_chunks([chunk async for chunk in self.generate(request)])

    async def complete_choices(self, request: GenerationRequest) -> list[GenerationResult]:
        """Run ``request`` to the end; one result per choice, in choice order.

        Raises:
            as :meth:`generate`.
        """
        chunks = [chunk async for chunk in self.generate(request)]
        return GenerationResult.choices_from_chunks(chunks)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream ``request``'s tokens as chunks; each choice's last one has its finish
        reason, and the stream ends when every choice has finished.

        Closing or cancelling the iterator (the client went away) removes the request
        from the batch before the next step and releases its adapter.

        Raises:
            InvalidRequestError: the prompt plus ``max_tokens`` does not fit the model's
                context or the engine's token budget, the prompt is empty, a token id
                is outside the vocabulary, or the grammar does not compile.
            EngineOverloadedError: the waiting queue is full.
            RequestCancelledError: the engine shut down.
            AdapterLoadError, AdapterMismatchError: from the adapter cache.
            AdapterOverflowError: this request's logits were not finite.
            EngineError: the forward pass failed.
        """
        if self._closing:
            raise RequestCancelledError("the engine is shutting down")
        queued = self.num_waiting
        if queued >= self.max_waiting:
            raise EngineOverloadedError(
                f"{queued} requests are waiting (max_waiting={self.max_waiting}); retry later"
            )
        # From here to the queue the request is counted in exactly one of _preparing,
        # _acquiring and _waiting, so the max_waiting check above stays exact.
        self._preparing += 1
        try:
            prompt_ids, compiled = await asyncio.get_running_loop().run_in_executor(
                self._tokenizing, self._prepare, request
            )
        finally:
            self._preparing -= 1
        if self._closing:
            raise RequestCancelledError("the engine shut down while the prompt was tokenized")
        sequences = self._new_sequences(request, prompt_ids, compiled)
        queue = sequences[0].queue
        self._ensure_loop()
        try:
            for sequence in sequences:
                if request.adapter is not None:
                    self._acquiring += 1
                    try:
                        sequence.lease = await self._adapters.acquire(request.adapter)
                    finally:
                        self._acquiring -= 1
                    sequence.slot = sequence.lease.slot
            for sequence in sequences:
                sequence.state = "waiting"
                self._waiting.append(sequence)
            self._wakeup.set()
            unfinished = len(sequences)
            while unfinished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    unfinished -= 1
        finally:
            for sequence in sequences:
                self._abandon(sequence)

    def _prepare(self, request: GenerationRequest) -> tuple[list[int], CompiledGrammar | None]:
        """On the tokenizer thread: render and tokenize the prompt, check it fits, and
        compile the grammar (None without one)."""
        tokenizer = self.base.tokenizer
        if request.messages is not None:
            text = render_chat(tokenizer, request.messages, request.tools)
            prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            prompt_ids = tokenizer(request.prompt)["input_ids"]
        if not prompt_ids:
            raise InvalidRequestError("prompt encodes to zero tokens; send a non-empty prompt")
        max_tokens = request.sampling.max_tokens
        limit = min(self.base.max_context, self.max_batch_tokens)
        if len(prompt_ids) + max_tokens > limit:
            raise InvalidRequestError(
                f"max_tokens: the prompt has {len(prompt_ids)} tokens and max_tokens is "
                f"{max_tokens}, more than the {limit} this engine allows in total; "
                "lower max_tokens or shorten the prompt"
            )
        vocab = self.model.model.config.vocab_size
        outside = sorted(t for t in request.sampling.token_ids() if t >= vocab)
        if outside:
            raise InvalidRequestError(
                f"token ids {outside[:5]} in logit_bias or stop_token_ids are outside the "
                f"vocabulary (0 to {vocab - 1})"
            )
        grammar = request.sampling.grammar
        if grammar is None:
            return list(prompt_ids), None
        if self._grammars is None:
            self._grammars = GrammarCompiler(tokenizer, vocab, self.base.eos_token_ids)
        return list(prompt_ids), self._grammars.compile(grammar)

    def _new_sequences(
        self, request: GenerationRequest, prompt_ids: list[int], compiled: CompiledGrammar | None
    ) -> list[_Sequence]:
        sampling = request.sampling
        queue: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        return [
            _Sequence(
                request=request,
                prompt_ids=prompt_ids,
                text=TextStream(self.base.tokenizer, sampling.stop),
                generator=sampling.make_generator(index),
                queue=queue,
                index=index,
                grammar=None if compiled is None else RowGrammar(compiled),
            )
            for index in range(sampling.n)
        ]

    def _abandon(self, sequence: _Sequence) -> None:
        """The client stopped listening: retire now if queued, else at the next iteration."""
        if sequence.state == "waiting":
            self._waiting.remove(sequence)
            self._retire(sequence)
        elif sequence.state == "new":  # a later choice's adapter failed to load
            self._retire(sequence)
        elif sequence.state == "running":
            sequence.done = True
            self._wakeup.set()

    def _retire(self, sequence: _Sequence) -> None:
        sequence.state = "retired"
        sequence.done = True
        if sequence.lease is not None:
            lease, sequence.lease = sequence.lease, None
            lease.release()

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(
                self._run(), name="loramux-engine-loop"
            )

    async def _run(self) -> None:
        try:
            await self._schedule()
        except Exception as exc:
            # A bug in bookkeeping: fail the requests rather than leave clients waiting
            # forever; the next generate() starts a fresh loop.
            logger.exception("engine loop crashed")
            self._fail_all(EngineError(f"engine loop crashed: {exc!r}"))

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            if not self._running and not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            keep = [i for i, s in enumerate(self._running) if not s.done]
            for sequence in self._running:
                if sequence.done:
                    self._retire(sequence)
            decoding = [self._running[i] for i in keep]
            admitted = self._admit(decoding)
            self._running = decoding + admitted
            try:
                decoded, prefilled = await loop.run_in_executor(
                    self._executor, self._model_step, keep, decoding, admitted
                )
            except Exception as exc:
                logger.exception("forward pass failed; failing %d requests", len(self._running))
                failed, self._running, self._batch = self._running, [], None
                for sequence in failed:
                    sequence.queue.put_nowait(EngineError(f"generation failed: {exc!r}"))
                    self._retire(sequence)
                continue
            for sequence, token in zip(decoding + admitted, decoded + prefilled, strict=True):
                if token is None:
                    self._fail_overflowed(sequence)
                else:
                    self._accept(sequence, token)
            # Let clients run (and cancel) between steps even when the batch is busy.
            await asyncio.sleep(0)

    def _admit(self, running: Sequence[_Sequence]) -> list[_Sequence]:
        reserved = sum(s.reserved_tokens for s in running)
        admitted: list[_Sequence] = []
        while self._waiting and len(running) + len(admitted) < self.max_batch_size:
            candidate = self._waiting[0]
            if reserved + candidate.reserved_tokens > self.max_batch_tokens:
                break
            self._waiting.popleft()
            candidate.state = "running"
            reserved += candidate.reserved_tokens
            admitted.append(candidate)
        return admitted

    def _model_step(
        self, keep: list[int], decoding: list[_Sequence], admitted: list[_Sequence]
    ) -> tuple[list[SampledToken | None], list[SampledToken | None]]:
        """On the model thread: drop finished rows, decode the rest, prefill newcomers.

        A row whose logits are not finite gets ``None`` instead of a token.
        """
        decoded: list[SampledToken | None] = []
        prefilled: list[SampledToken | None] = []
        if self._batch is not None:
            if keep:
                self._batch.select(keep)
            else:
                self._batch = None
        if decoding:
            assert self._batch is not None
            logits = self._batch.decode(
                [s.output_ids[-1] for s in decoding], [s.slot for s in decoding]
            )
            decoded = self._sample(logits, decoding)
        if admitted:
            joining, logits = KvBatch.prefill(
                self.model, [s.prompt_ids for s in admitted], [s.slot for s in admitted]
            )
            prefilled = self._sample(logits, admitted)
            if self._batch is None:
                self._batch = joining
            else:
                self._batch.merge(joining)
        return decoded, prefilled

    def _sample(
        self, logits: torch.Tensor, sequences: Sequence[_Sequence]
    ) -> list[SampledToken | None]:
        """Sample the rows whose logits are all finite; ``None`` for the others.

        Sampling is row-wise, so leaving a row out changes nothing for the rest; a
        non-finite row would otherwise make the batch's multinomial draw raise.
        """
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        healthy = [i for i, ok in enumerate(finite) if ok]
        if len(healthy) < len(sequences):
            logits = logits[healthy]
        sampled = (
            sample_batch(logits, [sequences[i] for i in healthy], self.base.eos_token_ids)
            if healthy
            else []
        )
        tokens: list[SampledToken | None] = [None] * len(sequences)
        for i, token in zip(healthy, sampled, strict=True):
            tokens[i] = token
        return tokens

    def _fail_overflowed(self, sequence: _Sequence) -> None:
        """End one request whose logits were not finite; its row leaves the batch next
        iteration."""
        if sequence.done:  # cancelled during the step
            return
        adapter = sequence.request.adapter
        position = len(sequence.output_ids) + 1
        if adapter is None:
            error: EngineError = EngineError(
                f"the base model produced non-finite logits at output token {position}"
            )
        else:
            error = AdapterOverflowError(
                f"adapter {adapter.key} produced non-finite logits (inf or NaN) at output "
                f"token {position}: its weights or lora_alpha overflow with base model "
                f"{adapter.base_model!r}. Only this request failed; the adapter's owner "
                "should check its lora_alpha and weights and push a fixed version"
            )
        logger.warning("%s", error)
        sequence.queue.put_nowait(error)
        sequence.done = True

    def _accept(self, sequence: _Sequence, sampled: SampledToken) -> None:
        """Record one token and stream what it completed."""
        if sequence.done:  # cancelled during the step
            return
        sampling = sequence.request.sampling
        token = sampled.token_id
        sequence.output_ids.append(token)
        if sequence.grammar is not None and not sequence.grammar.accept(token):
            # Unreachable while the mask is applied; fail the request, not the batch.
            sequence.queue.put_nowait(EngineError(f"the grammar refused token {token}"))
            sequence.done = True
            return
        finish: FinishReason | None = None
        if token in sampling.stop_token_ids or (
            not sampling.ignore_eos and token in self.base.eos_token_ids
        ):
            finish = "stop"
            text = sequence.text.finish()
        else:
            text = sequence.text.push(token)
            if sequence.text.stopped or (
                sequence.grammar is not None and sequence.grammar.is_terminated
            ):
                finish = "stop"
                text += sequence.text.finish()
            elif len(sequence.output_ids) >= sampling.max_tokens:
                finish = "length"
                text += sequence.text.finish()
        sequence.queue.put_nowait(
            GenerationChunk(
                request_id=sequence.request.request_id,
                text=text,
                token_ids=(sampled.token_id,),
                logprobs=None if sampling.logprobs is None else (self._token_logprob(sampled),),
                finish_reason=finish,
                usage=None
                if finish is None
                else Usage(len(sequence.prompt_ids), len(sequence.output_ids)),
                index=sequence.index,
            )
        )
        if finish is not None:
            sequence.done = True

    def _token_logprob(self, sampled: SampledToken) -> TokenLogprob:
        decode = self.base.tokenizer.decode
        return TokenLogprob(
            token_id=sampled.token_id,
            token=decode([sampled.token_id]),
            logprob=sampled.logprob,
            top_logprobs=tuple(
                TopLogprob(token_id, decode([token_id]), logprob)
                for token_id, logprob in sampled.top_logprobs
            ),
        )

    def _fail_all(self, error: EngineError) -> None:
        for sequence in [*self._waiting, *self._running]:
            if not sequence.done:
                sequence.queue.put_nowait(error)
            self._retire(sequence)
        self._waiting.clear()
        self._running = []
        self._batch = None
