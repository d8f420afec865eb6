"""The ``vllm`` backend on vLLM's CPU build: PEFT numerics, residency, eviction, errors.

One vLLM engine (about 20 s to start) serves the whole module. The base model is a
Llama with head_dim 64 made locally (vLLM's CPU attention refuses smaller heads), and
every PEFT option loramux accepts is compared with ``peft``'s greedy tokens, alone and
mixed in one batch.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch

from adapter_store import AdapterVersion
from scheduler import Tier
from services.engine import AdapterMismatchError
from services.engine import BaseModelLoadError
from services.engine import CacheHooks
from services.engine import EngineOptions
from services.engine import GenerationRequest
from services.engine import GenerationResult
from services.engine import Grammar
from services.engine import InvalidRequestError
from services.engine import SamplingParams
from services.engine import open_engine
from services.engine._vllm import prepare_adapter
from tests.factories import adapter_version
from tests.factories import make_peft_adapter
from tests.factories import save_model_dir
from tests.factories import tiny_llama
from tests.unit.services.engine.test_lora_numerics import LLAMA_OPTIONS

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SLOTS = 4
NEW_TOKENS = 12
PROMPTS = ["the quick brown fox", "hello there", "one two three", "LoRA adapters"]


def _llama():
    return tiny_llama(
        seed=0,
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vllm")


@pytest.fixture(scope="module")
def llama():
    return _llama()


@pytest.fixture(scope="module")
def model_dir(work: Path, llama) -> Path:
    return save_model_dir(llama, work / "llama-h64", work / "models")


@pytest.fixture(scope="module")
def adapters(work: Path, llama) -> dict[str, Path]:
    return {
        option: make_peft_adapter(llama, work / option, seed=i, **kwargs)
        for i, (option, kwargs) in enumerate(sorted(LLAMA_OPTIONS.items()))
    }


def _version(name: str) -> AdapterVersion:
    return adapter_version(name, tenant="t", base_model="llama-h64")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(model_dir: Path, adapters: dict[str, Path]) -> AsyncIterator:
    by_key = {_version(name).key: path for name, path in adapters.items()}
    options = EngineOptions(
        base_model=model_dir, name="llama-h64", gpu_slots=SLOTS, max_lora_rank=64, dtype="float32"
    )
    hooks = CacheHooks(fetch_to_disk=lambda version: by_key[version.key])
    built = await asyncio.to_thread(open_engine, "vllm", options, hooks)
    async with built:
        yield built


def peft_greedy(llama, adapter_dir: Path | None, prompt_ids: list[int]) -> list[int]:
    from peft import PeftModel

    model = copy.deepcopy(llama)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt_ids]),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    return out[0, len(prompt_ids) :].tolist()


def greedy(prompt: str, adapter: str | None) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt,
        adapter=_version(adapter) if adapter else None,
        sampling=SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True),
    )


@pytest.mark.parametrize("option", sorted(LLAMA_OPTIONS))
async def test_each_peft_option_matches_peft(engine, llama, adapters, option: str) -> None:
    prompt = PROMPTS[0]
    result = await engine.complete(greedy(prompt, option))
    expected = peft_greedy(llama, adapters[option], engine.tokenizer(prompt)["input_ids"])
    assert list(result.token_ids) == expected
    assert result.usage.completion_tokens == NEW_TOKENS


async def test_mixed_batch_rows_match_their_solo_peft_runs(engine, llama, adapters) -> None:
    names = sorted(LLAMA_OPTIONS)[: SLOTS - 1]
    cases = [(prompt, name) for prompt, name in zip(PROMPTS, [*names, None], strict=True)]
    results = await asyncio.gather(*(engine.complete(greedy(p, a)) for p, a in cases))
    for (prompt, name), result in zip(cases, results, strict=True):
        ids = engine.tokenizer(prompt)["input_ids"]
        expected = peft_greedy(llama, adapters[name] if name else None, ids)
        assert list(result.token_ids) == expected, name


async def test_gpu_tier_is_exactly_what_vllm_holds(engine) -> None:
    names = sorted(LLAMA_OPTIONS)
    for name in names:  # more adapters than slots: the cache evicts, vLLM follows
        await engine.complete(greedy("hello", name))
        gpu = set(engine.cache.residency().gpu.values())
        assert len(gpu) <= SLOTS
        assert set(await engine.registered_adapters()) == gpu
    assert _version(names[-1]).key in gpu
    assert _version(names[0]).key not in gpu, "LRU should have evicted the first adapter"
    stats = engine.cache.stats()
    assert stats.tiers[Tier.GPU].evictions >= len(names) - SLOTS


async def test_logprobs_and_stop_strings(engine) -> None:
    request = GenerationRequest(
        prompt="hello",
        adapter=_version("list-targets"),
        sampling=SamplingParams(max_tokens=6, temperature=0, logprobs=3, ignore_eos=True),
    )
    result = await engine.complete(request)
    assert result.logprobs is not None and len(result.logprobs) == len(result.token_ids)
    for token in result.logprobs:
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob >= token.logprob - 1e-5  # greedy: chosen is top
        assert token.top_logprobs[0].token_id == token.token_id


async def test_cancelled_stream_releases_its_adapter(engine) -> None:
    request = GenerationRequest(
        prompt="hello",
        adapter=_version("rslora"),
        sampling=SamplingParams(max_tokens=200, temperature=0, ignore_eos=True),
    )
    stream = engine.generate(request)
    await anext(stream)
    await stream.aclose()
    assert engine.cache.residency().pinned.get(_version("rslora").key, 0) == 0
    assert engine.num_running == 0


async def test_prompt_too_long_is_a_clear_error(engine) -> None:
    with pytest.raises(InvalidRequestError, match="vLLM refused"):
        await engine.complete(greedy("word " * 2000, None))


async def test_base_rows_stay_bare_when_every_slot_holds_an_adapter(engine, llama) -> None:
    for name in sorted(LLAMA_OPTIONS)[:SLOTS]:
        await engine.complete(greedy("hello", name))
    assert len(engine.cache.residency().gpu) == SLOTS
    prompt = PROMPTS[1]
    together = await asyncio.gather(
        engine.complete(greedy(prompt, None)),
        engine.complete(greedy(prompt, sorted(LLAMA_OPTIONS)[0])),
    )
    assert list(together[0].token_ids) == peft_greedy(
        llama, None, engine.tokenizer(prompt)["input_ids"]
    )


async def test_rank_above_the_limit_is_refused(adapters) -> None:
    with pytest.raises(AdapterMismatchError, match="max_lora_rank 16"):
        prepare_adapter(_version("max-rank"), adapters["max-rank"], max_lora_rank=16)


async def test_n_choices_each_with_its_index_and_usage(engine) -> None:
    request = GenerationRequest(
        prompt="hello",
        adapter=_version("list-targets"),
        sampling=SamplingParams(max_tokens=5, temperature=1.0, seed=3, n=3, ignore_eos=True),
    )
    chunks = [chunk async for chunk in engine.generate(request)]
    results = GenerationResult.choices_from_chunks(chunks)

    assert [r.index for r in results] == [0, 1, 2]
    assert all(len(r.token_ids) == 5 and r.usage.completion_tokens == 5 for r in results)


async def test_min_tokens_stop_token_ids_and_logit_bias_reach_vllm(engine) -> None:
    eos = engine.tokenizer.eos_token_id
    favoured = engine.tokenizer("x", add_special_tokens=False)["input_ids"][0]
    sampling = SamplingParams(
        max_tokens=6,
        temperature=0,
        min_tokens=6,
        logit_bias=((favoured, 100.0),),
        presence_penalty=0.5,
        stop_token_ids=(eos,) if eos is not None else (),
    )
    result = await engine.complete(GenerationRequest(prompt="hello", sampling=sampling))

    assert len(result.token_ids) == 6  # min_tokens: no early stop
    assert result.token_ids[0] == favoured  # a +100 bias wins the first greedy pick


async def test_json_schema_output_validates_on_random_weights(engine) -> None:
    import json

    import jsonschema

    # No maxLength: vLLM's xgrammar admits raw control characters in length-bounded
    # strings, which the hf engine bans on top (services/engine/_grammar.py).
    schema = {
        "type": "object",
        "properties": {
            "name": {"enum": ["Ada", "Bo"]},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    request = GenerationRequest(
        prompt="a person:",
        adapter=_version("list-targets"),
        sampling=SamplingParams(
            max_tokens=60, temperature=1.0, seed=1, grammar=Grammar.json_schema(schema)
        ),
    )
    result = await engine.complete(request)

    jsonschema.validate(json.loads(result.text), schema)


@pytest.mark.parametrize("quantize", ["nf4", "int8"])
async def test_a_quantization_vllm_cannot_run_here_is_refused_before_it_starts(
    model_dir: Path, quantize: str
) -> None:
    options = EngineOptions(base_model=model_dir, name="llama-h64", quantize=quantize)
    hooks = CacheHooks(fetch_to_disk=lambda version: model_dir)

    with pytest.raises(BaseModelLoadError, match=f"'{quantize}' on engine 'vllm'.*engine 'hf'"):
        open_engine("vllm", options, hooks)


async def test_the_engine_reports_its_base_unquantized(engine) -> None:
    facts = engine.facts

    assert (facts.manifest.base_model, facts.manifest.quantization) == ("llama-h64", "none")
    assert facts.weight_bytes == facts.full_precision_bytes > 0
