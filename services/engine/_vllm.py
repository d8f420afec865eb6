"""The ``vllm`` backend: vLLM's ``AsyncLLM`` with LoRA enabled, residency decided by loramux.

Tiers: loramux's :class:`AdapterCache` drives vLLM's LoRA registry. Its GPU tier is the
set of adapters registered in vLLM (``add_lora`` then ``pin_lora`` on activation,
``remove_lora`` on eviction), with vLLM's ``max_loras`` and ``max_cpu_loras`` both set
to the slot count, so vLLM's own LRU never has to evict: what ``list_loras()`` holds is
exactly the GPU tier loramux reports, and eviction follows loramux's policy. The host
tier holds the adapter checked and ready to register (vLLM reads its weights from the
disk tier's directory on ``add_lora``). The disk tier and the object-store pull
(verified, single-flight) are the store's, as with ``hf``.

Failure modes: vLLM's engine core runs in its own process; if it dies, every request
fails with :class:`EngineError` and the replica must be restarted (Ray Serve does so
when its health check fails). An adapter vLLM cannot serve is refused when it is
loaded, with :class:`AdapterMismatchError` naming the option.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapter_store import CONFIG_NAME
from adapter_store import WEIGHTS_NAME
from adapter_store import AdapterStoreError
from adapter_store import AdapterVersion
from adapter_store import LoraSpec
from adapter_store import manifest_from_model
from adapter_store import parse_lora_config
from services.engine._base_model import chat_prompt
from services.engine._base_model import resolve_base_model
from services.engine._cache import SlotLease
from services.engine._engine_options import BaseModelFacts
from services.engine._engine_options import CacheHooks
from services.engine._engine_options import EngineKind
from services.engine._engine_options import EngineOptions
from services.engine._engine_options import StartedOnEnter
from services.engine._grammar import Grammar
from services.engine._grammar import json_banned_token_ids
from services.engine._quantization import VllmQuantization
from services.engine._quantization import plan_vllm_quantization
from services.engine._requests import FinishReason
from services.engine._requests import GenerationChunk
from services.engine._requests import GenerationRequest
from services.engine._requests import GenerationResult
from services.engine._requests import TokenLogprob
from services.engine._requests import TopLogprob
from services.engine._requests import Usage
from services.engine._sampling import SamplingParams
from services.engine._sizing import CPU_DEFAULT_SLOTS
from services.engine._tiny import BUILTIN_MODELS
from services.engine.exceptions import AdapterLoadError
from services.engine.exceptions import AdapterMismatchError
from services.engine.exceptions import BaseModelLoadError
from services.engine.exceptions import EngineError
from services.engine.exceptions import EngineOverloadedError
from services.engine.exceptions import InvalidRequestError
from services.engine.exceptions import RequestCancelledError

__all__ = ["VllmAdapter", "VllmEngine", "prepare_adapter", "vllm_quantization"]

logger = logging.getLogger(__name__)

# On vLLM's CPU build the KV cache comes out of host memory; without a byte budget its
# default (a fraction of all host memory) refuses to start on a shared machine.
_CPU_KV_CACHE_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class VllmAdapter:
    """An adapter ready to register with vLLM: its directory and parsed config.

    ``size_bytes`` (the weights file) is what the host tier charges for it.
    """

    key: str
    path: Path
    spec: LoraSpec
    size_bytes: int


class VllmEngine(StartedOnEnter):
    """The ``vllm`` backend of :class:`~services.engine._backend.ReplicaEngine` (see the
    module docstring for the tier mapping and the failure modes)."""

    kind: EngineKind = "vllm"

    def __init__(self, options: EngineOptions, hooks: CacheHooks) -> None:
        """Load vLLM's engine (blocking, tens of seconds: call it off the event loop).

        Raises:
            BaseModelLoadError: the directory is missing or vLLM cannot load the model
                (the message carries vLLM's reason).
        """
        from transformers import AutoTokenizer

        self.gpu_slots = options.gpu_slots or CPU_DEFAULT_SLOTS
        self._options = options
        self._hooks = hooks
        path = resolve_base_model(options.base_model, options.models_dir)
        self.path = path
        name = options.name or (
            str(options.base_model) if str(options.base_model) in BUILTIN_MODELS else path.name
        )
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        # vLLM's xgrammar admits raw control characters in length-bounded JSON strings;
        # a -100 bias bans them in JSON rows, as the ``hf`` engine's mask does.
        self._json_bans = dict.fromkeys(
            json_banned_token_ids(self.tokenizer, len(self.tokenizer)), -100.0
        )
        quantization = vllm_quantization(path, options.quantize)
        self.facts = _skeleton_facts(name, path, options, quantization)
        self._llm = _start_vllm(path, options, self.gpu_slots, quantization.method)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        self._registered: dict[int, Any] = {}  # slot -> vllm LoRARequest
        self._removals: dict[int, asyncio.Future[Any]] = {}
        self.num_running = 0
        self.num_waiting = 0
        self._closing = False
        self.cache = hooks.adapter_cache(
            options,
            self.gpu_slots,
            load_host=self._prepare,
            activate_slot=self._register,
            deactivate_slot=self._unregister,
        )

    # ------------------------------------------------------------ ReplicaEngine

    async def registered_adapters(self) -> dict[str, int]:
        """vLLM's own view: adapter key -> LoRA id for every LoRA it holds (tests and
        operators compare it with the cache's GPU tier)."""
        ids = set(await self._llm.list_loras())
        return {
            r.lora_name: r.lora_int_id for r in self._registered.values() if r.lora_int_id in ids
        }

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._hooks.on_manifest is not None:
            result = self._hooks.on_manifest(self.facts.manifest)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result

    async def aclose(self) -> None:
        self._closing = True
        await self.cache.aclose()
        for removal in self._removals.values():
            with contextlib.suppress(Exception):
                await removal
        self._llm.shutdown()

    async def complete(self, request: GenerationRequest) -> GenerationResult:
        return GenerationResult.from_chunks([chunk async for chunk in self.generate(request)])

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream ``request``'s chunks; closing the iterator aborts it in vLLM and
        releases its adapter.

        Raises:
            InvalidRequestError: vLLM refused the prompt or the parameters (too long
                for the model's context, for example).
            EngineOverloadedError: ``max_waiting`` requests are already queued.
            RequestCancelledError: the engine is shutting down.
            AdapterLoadError, AdapterMismatchError: from the adapter cache.
            EngineError: vLLM's engine failed.
        """
        if self._closing:
            raise RequestCancelledError("the engine is shutting down")
        if (
            self.num_waiting + self.num_running
            >= self._options.max_waiting + self._options.max_batch_size
        ):
            raise EngineOverloadedError(
                f"{self.num_waiting} requests are waiting (max_waiting="
                f"{self._options.max_waiting}); retry later"
            )
        prompt = self._prompt_text(request)
        params = _vllm_sampling(request.sampling, self._json_bans)
        lease: SlotLease | None = None
        self.num_waiting += 1
        try:
            if request.adapter is not None:
                lease = await self.cache.acquire(request.adapter)
        finally:
            self.num_waiting -= 1
        finished = False
        self.num_running += 1
        try:
            lora = self._registered[lease.slot] if lease is not None else None
            stream = self._llm.generate(
                prompt, params, request_id=request.request_id, lora_request=lora
            )
            completion_tokens = [0] * request.sampling.n
            try:
                async for output in stream:
                    finished = output.finished
                    for completion in output.outputs:
                        completion_tokens[completion.index] += len(completion.token_ids)
                        done = completion.finish_reason is not None
                        yield GenerationChunk(
                            request_id=request.request_id,
                            text=completion.text,
                            token_ids=tuple(completion.token_ids),
                            logprobs=_logprobs(
                                completion, request.sampling.logprobs, self.tokenizer
                            )
                            if request.sampling.logprobs is not None
                            else None,
                            finish_reason=_finish_reason(completion.finish_reason)
                            if done
                            else None,
                            usage=Usage(
                                len(output.prompt_token_ids or ()),
                                completion_tokens[completion.index],
                            )
                            if done
                            else None,
                            index=completion.index,
                        )
            except EngineError:
                raise
            except Exception as exc:
                raise _engine_error(exc) from exc
        finally:
            self.num_running -= 1
            if not finished:
                with contextlib.suppress(Exception):
                    await self._llm.abort(request.request_id)
            if lease is not None:
                lease.release()

    # ------------------------------------------------------------ cache hooks

    def _prepare(self, version: AdapterVersion, path: Path) -> VllmAdapter:
        return prepare_adapter(version, path, max_lora_rank=self._options.max_lora_rank)

    def _register(self, slot: int, adapter: VllmAdapter) -> None:
        """GPU tier in (executor thread): register and pin the adapter in vLLM."""
        assert self._loop is not None, "start() the engine first"
        future = asyncio.run_coroutine_threadsafe(self._add(slot, adapter), self._loop)
        future.result()

    async def _add(self, slot: int, adapter: VllmAdapter) -> None:
        from vllm.lora.request import LoRARequest

        removal = self._removals.pop(slot, None)
        if removal is not None:
            await removal  # the slot's previous adapter leaves vLLM first
        request = LoRARequest(adapter.key, next(self._ids), str(adapter.path))
        try:
            added = await self._llm.add_lora(request)
            if added:
                await self._llm.pin_lora(request.lora_int_id)
        except Exception as exc:
            raise AdapterMismatchError(f"adapter {adapter.key}: vLLM refused it: {exc}") from exc
        if not added:
            raise AdapterLoadError(f"adapter {adapter.key}: vLLM did not add it")
        self._registered[slot] = request

    def _unregister(self, slot: int) -> None:
        """GPU tier out (on the loop, quick): remove the adapter from vLLM; the slot's
        next adapter waits for the removal."""
        request = self._registered.pop(slot, None)
        if request is not None:
            self._removals[slot] = asyncio.ensure_future(self._llm.remove_lora(request.lora_int_id))

    def _prompt_text(self, request: GenerationRequest) -> str:
        if request.messages is not None:
            return chat_prompt(self.tokenizer, list(request.messages))
        assert request.prompt is not None
        return request.prompt


def prepare_adapter(version: AdapterVersion, path: Path, *, max_lora_rank: int) -> VllmAdapter:
    """The host tier's step (executor thread): read the config and check it against
    what the vllm backend serves; the weights stay in the disk tier for vLLM to read.

    Raises:
        AdapterLoadError: the files cannot be read.
        AdapterMismatchError: the config is invalid, a rank exceeds
            ``max_lora_rank``, or the adapter uses an option vLLM does not serve
            (``fan_in_fan_out``); the message names it and the engine.
    """
    path = Path(path)
    try:
        spec = parse_lora_config((path / CONFIG_NAME).read_bytes())
        size = (path / WEIGHTS_NAME).stat().st_size
    except OSError as exc:
        raise AdapterLoadError(f"adapter {version.key}: cannot read {path}: {exc}") from exc
    except AdapterStoreError as exc:
        raise AdapterMismatchError(f"adapter {version.key}: {exc}") from exc
    rank = max([spec.r, *spec.rank_pattern.values()])
    if rank > max_lora_rank:
        raise AdapterMismatchError(
            f"adapter {version.key} has rank {rank}, above this replica's max_lora_rank "
            f"{max_lora_rank} (engine vllm); raise max_lora_rank or push a lower-rank adapter"
        )
    if spec.fan_in_fan_out:
        raise AdapterMismatchError(
            f"adapter {version.key} uses fan_in_fan_out (GPT-2 Conv1D layers), which engine "
            "vllm does not serve; use engine hf"
        )
    return VllmAdapter(version.key, path, spec, size)


def vllm_quantization(path: Path, quantize: str) -> VllmQuantization:
    """:func:`plan_vllm_quantization` for the installed vLLM on this machine's device."""
    import torch
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    return plan_vllm_quantization(
        path, quantize, methods=QUANTIZATION_METHODS, cuda=torch.cuda.is_available()
    )


def _skeleton_facts(
    name: str, path: Path, options: EngineOptions, quantization: VllmQuantization
) -> BaseModelFacts:
    """The manifest (module shapes, quantization) and weight bytes, read from a
    weightless copy of the model: vLLM holds the real weights in its own process.

    What the weights hold: a checkpoint saved quantized, its files' size; NF4 in flight,
    the decoder's linear weights at 4 bits plus one absmax per 64; else every parameter
    in the compute dtype (also the full-precision size)."""
    import torch
    from transformers import AutoConfig
    from transformers import AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as exc:
        raise BaseModelLoadError(f"cannot read base model config from {path}: {exc}") from exc
    itemsize = torch.empty((), dtype=_dtype(options)).element_size()
    full = sum(p.numel() for p in skeleton.parameters()) * itemsize
    held = full
    if quantization.label != "none" and quantization.method is None:
        held = sum(f.stat().st_size for f in path.glob("*.safetensors")) or full
    elif quantization.label == "nf4":
        output = skeleton.get_output_embeddings()
        linear = sum(
            m.weight.numel()
            for m in skeleton.modules()
            if isinstance(m, torch.nn.Linear) and m is not output
        )
        held = full - linear * itemsize + linear // 2 + linear // 64 * 4
    manifest = manifest_from_model(name, skeleton, quantization=quantization.label)
    return BaseModelFacts(manifest=manifest, weight_bytes=held, full_precision_bytes=full)


def _dtype(options: EngineOptions) -> Any:
    import torch

    if options.dtype is not None:
        return getattr(torch, options.dtype)
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def _start_vllm(
    path: Path, options: EngineOptions, gpu_slots: int, quantization: str | None
) -> Any:
    import torch
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    on_cpu = not torch.cuda.is_available()
    kv_bytes = options.vllm_kv_cache_bytes
    if kv_bytes is None and on_cpu:
        kv_bytes = _CPU_KV_CACHE_BYTES
    # vLLM's CPU LoRA path reads a row without adapter (index -1) from the last LoRA
    # slot: one spare slot that loramux never fills keeps those rows on the bare base.
    vllm_slots = gpu_slots + 1 if on_cpu else gpu_slots
    args = AsyncEngineArgs(
        model=str(path),
        tokenizer=str(path),
        enable_lora=True,
        max_loras=vllm_slots,
        max_cpu_loras=vllm_slots,
        max_lora_rank=options.max_lora_rank,
        max_num_seqs=options.max_batch_size,
        dtype=str(_dtype(options)).removeprefix("torch."),
        enforce_eager=options.vllm_enforce_eager or on_cpu,
        tensor_parallel_size=options.vllm_tensor_parallel_size,
        gpu_memory_utilization=options.vllm_gpu_memory_utilization,
        kv_cache_memory_bytes=kv_bytes,
        max_model_len=options.vllm_max_model_len,
        quantization=quantization,
        # The same grammar engine as ``hf``, and JSON without free whitespace: otherwise
        # a weak model can spend its whole budget on spaces inside a schema's object.
        structured_outputs_config=StructuredOutputsConfig(
            backend="xgrammar", disable_any_whitespace=True
        ),
    )
    try:
        return AsyncLLM.from_engine_args(args)
    except Exception as exc:
        raise BaseModelLoadError(f"vLLM cannot load the base model at {path}: {exc}") from exc


def _vllm_sampling(sampling: SamplingParams, json_bans: dict[int, float]) -> Any:
    """Every sampling field as vLLM's: ``n`` choices, penalties, biases, token limits,
    and the grammar as vLLM's structured outputs (xgrammar there too), with
    ``json_bans`` added to a JSON row's logit bias."""
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind

    logit_bias = dict(sampling.logit_bias)
    if sampling.grammar is not None and sampling.grammar.kind in ("json_object", "json_schema"):
        logit_bias |= json_bans

    return VllmSamplingParams(
        n=sampling.n,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k or 0,
        stop=list(sampling.stop) or None,
        seed=sampling.seed,
        logprobs=sampling.logprobs,
        ignore_eos=sampling.ignore_eos,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        repetition_penalty=sampling.repetition_penalty,
        logit_bias=logit_bias or None,
        min_tokens=sampling.min_tokens,
        stop_token_ids=list(sampling.stop_token_ids) or None,
        structured_outputs=_structured_outputs(sampling.grammar),
        output_kind=RequestOutputKind.DELTA,
    )


def _structured_outputs(grammar: Grammar | None) -> Any:
    if grammar is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if grammar.kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if grammar.kind == "json_schema":
        return StructuredOutputsParams(json=json.loads(grammar.source))
    if grammar.kind == "regex":
        return StructuredOutputsParams(regex=grammar.source)
    return StructuredOutputsParams(choice=json.loads(grammar.source))


def _engine_error(exc: Exception) -> EngineError:
    """vLLM's exception as ours: a refused request is the client's error (400), a dead
    engine core the replica's (500)."""
    from vllm.exceptions import VLLMValidationError

    if isinstance(exc, VLLMValidationError | ValueError | TypeError):
        return InvalidRequestError(f"vLLM refused the request: {exc}")
    return EngineError(f"vLLM failed the request: {type(exc).__name__}: {exc}")


def _finish_reason(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"


def _logprobs(completion: Any, top: int, tokenizer: Any) -> tuple[TokenLogprob, ...]:
    """vLLM's per-token ``{token_id: Logprob}`` maps as our :class:`TokenLogprob`s:
    the chosen token, plus the alternatives ranked 1..``top`` (vLLM adds the chosen
    token to the map even when it ranks below them)."""
    result = []
    for token_id, alternatives in zip(
        completion.token_ids, completion.logprobs or (), strict=False
    ):
        chosen = alternatives[token_id]
        ranked = sorted(
            (
                (tid, lp)
                for tid, lp in alternatives.items()
                if lp.rank is not None and 1 <= lp.rank <= top
            ),
            key=lambda item: item[1].rank,
        )
        result.append(
            TokenLogprob(
                token_id=token_id,
                token=_token_text(chosen, token_id, tokenizer),
                logprob=float(chosen.logprob),
                top_logprobs=tuple(
                    TopLogprob(tid, _token_text(lp, tid, tokenizer), float(lp.logprob))
                    for tid, lp in ranked
                ),
            )
        )
    return tuple(result)


def _token_text(logprob: Any, token_id: int, tokenizer: Any) -> str:
    text = getattr(logprob, "decoded_token", None)
    return text if text is not None else tokenizer.decode([token_id])
