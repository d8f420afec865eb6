"""The engine's generation loop on the tiny model: batching, streaming, cancellation.

References are computed without the engine: a plain loop over the unwrapped model (or
``peft.PeftModel`` for adapter rows) that re-runs the whole sequence each step, so no KV
cache, padding or slot is involved in the expected values.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from adapter_store import AdapterVersion
from services.engine import Engine
from services.engine import EngineError
from services.engine import EngineOverloadedError
from services.engine import GenerationChunk
from services.engine import GenerationRequest
from services.engine import HostAdapter
from services.engine import InvalidRequestError
from services.engine import MultiLoraModel
from services.engine import RequestCancelledError
from services.engine import SamplingParams
from services.engine import load_base_model
from services.engine._batching import KvBatch
from services.engine._text import TextStream
from tests.factories import adapter_version
from tests.factories import make_peft_adapter


def version(name: str) -> AdapterVersion:
    return adapter_version(name)


class PreloadedSlots:
    """The adapter cache's role, minimal: adapters loaded into fixed slots; pins counted."""

    def __init__(self, slots: dict[str, int]) -> None:
        self.slots = slots
        self.acquired: Counter[str] = Counter()
        self.released: Counter[str] = Counter()

    async def acquire(self, version: AdapterVersion) -> _Lease:
        self.acquired[version.key] += 1
        return _Lease(self, version.key, self.slots[version.key])

    @property
    def pinned(self) -> int:
        return sum((self.acquired - self.released).values())


@dataclass
class _Lease:
    source: PreloadedSlots
    key: str
    slot: int

    def release(self) -> None:
        self.source.released[self.key] += 1


@dataclass
class World:
    base: object
    model: MultiLoraModel
    references: dict[str | None, torch.nn.Module]  # adapter name -> unbatched model
    slots: dict[str, int]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from peft import PeftModel

    base = load_base_model("tiny", models_dir=tmp_path_factory.mktemp("models"))
    plain = copy.deepcopy(base.model)
    adapters_dir = tmp_path_factory.mktemp("adapters")
    adapter_dirs = {
        "small": make_peft_adapter(plain, adapters_dir / "small", seed=1, r=8, lora_alpha=16),
        "large": make_peft_adapter(
            plain, adapters_dir / "large", seed=2, r=32, lora_alpha=16, target_modules="all-linear"
        ),
    }
    model = MultiLoraModel(base.model, max_slots=2, max_rank=32)
    references: dict[str | None, torch.nn.Module] = {None: plain}
    slots = {}
    for slot, (name, path) in enumerate(adapter_dirs.items()):
        model.load_slot(slot, HostAdapter.from_dir(version(name).key, path, model))
        slots[version(name).key] = slot
        references[name] = PeftModel.from_pretrained(copy.deepcopy(plain), str(path)).eval()
    return World(base, model, references, slots)


@pytest.fixture
def slots(world: World) -> PreloadedSlots:
    return PreloadedSlots(world.slots)


@pytest.fixture
async def engine(world: World, slots: PreloadedSlots):
    async with Engine(world.base, world.model, slots, max_batch_size=8) as engine:
        yield engine


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for ``condition``; a bug that keeps it false (a leaked pin, a row that never
    leaves) fails the test with TimeoutError instead of hanging it."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout_s)


def reference(world: World, adapter: str | None, prompt: str, n: int) -> tuple[list[int], list]:
    """Greedy tokens and per-step log-softmax rows, recomputed from scratch each step."""
    model = world.references[adapter]
    ids = world.base.tokenizer(prompt)["input_ids"]
    tokens, logprobs = [], []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids + tokens])).logits[0, -1]
            logprobs.append(torch.log_softmax(logits.float(), -1))
            tokens.append(int(logits.argmax()))
    return tokens, logprobs


def greedy(prompt: str, adapter: str | None = None, n: int = 8, **sampling) -> GenerationRequest:
    params = {"max_tokens": n, "temperature": 0, "ignore_eos": True, **sampling}
    return GenerationRequest(
        prompt=prompt,
        adapter=None if adapter is None else version(adapter),
        sampling=SamplingParams(**params),
    )


async def test_greedy_tokens_match_reference_alone_and_in_a_mixed_batch(world, engine) -> None:
    cases = [("small", "The quick brown fox"), ("large", "hi"), (None, "a longer prompt here!")]
    expected = [reference(world, adapter, prompt, 8)[0] for adapter, prompt in cases]

    together = await asyncio.gather(*(engine.complete(greedy(p, a)) for a, p in cases))
    alone = [await engine.complete(greedy(p, a)) for a, p in cases]

    assert [list(r.token_ids) for r in together] == expected
    assert [list(r.token_ids) for r in alone] == expected
    assert len({tuple(e) for e in expected}) == 3, "the adapters must change the output"


def test_padded_batch_logits_match_unpadded_reference(world) -> None:
    """Left padding, joining (merge) and leaving (select) change no row's logits."""
    tokenizer = world.base.tokenizer
    rows = [("small", "a long first prompt"), (None, "hi"), ("large", "medium one")]
    prompts = [tokenizer(p)["input_ids"] for _, p in rows]
    slots = [world.slots[version(a).key] if a else -1 for a, _ in rows]
    tokens = [[7, 8, 9], [10, 11, 12], [13, 14, 15]]

    batch, first = KvBatch.prefill(world.model, prompts[:2], slots[:2])
    got = [[first[0]], [first[1]], []]
    second = batch.decode([tokens[0][0], tokens[1][0]], slots[:2])
    got[0].append(second[0])
    got[1].append(second[1])
    joining, joined = KvBatch.prefill(world.model, prompts[2:], slots[2:])
    got[2].append(joined[0])
    batch.merge(joining)
    third = batch.decode([tokens[0][1], tokens[1][1], tokens[2][0]], slots)
    for row in range(3):
        got[row].append(third[row])
    batch.select([2, 0])  # the short row leaves
    fourth = batch.decode([tokens[2][1], tokens[0][2]], [slots[2], slots[0]])
    got[2].append(fourth[0])
    got[0].append(fourth[1])

    assert batch.lengths == [len(prompts[2]) + 2, len(prompts[0]) + 3]
    with torch.no_grad():
        for row, (adapter, _) in enumerate(rows):
            model = world.references[adapter]
            for step, logits in enumerate(got[row]):
                ids = prompts[row] + tokens[row][:step]
                expected = model(input_ids=torch.tensor([ids])).logits[0, -1]
                torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


async def test_request_arriving_mid_generation_joins_the_running_batch(world, engine) -> None:
    events: list[tuple[str, int]] = []

    async def consume(name: str, request: GenerationRequest) -> list[int]:
        tokens = []
        async for chunk in engine.generate(request):
            tokens.extend(chunk.token_ids)
            events.append((name, engine.num_running))
        return tokens

    long_task = asyncio.create_task(consume("long", greedy("first request", "small", n=40)))
    await until(lambda: len(events) >= 5)
    short_tokens = await consume("short", greedy("second", "large", n=6))
    long_tokens = await long_task

    assert short_tokens == reference(world, "large", "second", 6)[0]
    assert long_tokens == reference(world, "small", "first request", 40)[0]
    names = [name for name, _ in events]
    first_short, last_long = names.index("short"), len(names) - 1 - names[::-1].index("long")
    assert 5 <= first_short < last_long, "the second request ran while the first was running"
    assert max(running for name, running in events if name == "short") == 2


async def test_cancelled_request_leaves_the_batch_and_releases_its_pin(
    world, engine, slots: PreloadedSlots
) -> None:
    stream = engine.generate(greedy("to be cancelled", "small", n=500))
    other = asyncio.create_task(engine.complete(greedy("survivor", "large", n=12)))
    received = [await anext(stream), await anext(stream)]
    await stream.aclose()
    result = await other
    await until(lambda: not engine.num_running)  # the dropped row leaves next iteration

    assert len(received) == 2 and received[-1].finish_reason is None
    assert list(result.token_ids) == reference(world, "large", "survivor", 12)[0]
    assert slots.acquired == {"acme/small@1": 1, "acme/large@1": 1}
    assert slots.pinned == 0


async def test_cancelling_the_consumer_task_releases_the_pin(engine, slots) -> None:
    async def consume() -> None:
        async for _ in engine.generate(greedy("abandoned", "large", n=500)):
            pass

    task = asyncio.create_task(consume())
    await until(lambda: bool(slots.acquired))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: not engine.num_running)

    assert slots.pinned == 0


@pytest.mark.parametrize(
    ("limits", "most"),
    [({"max_batch_size": 2}, 2), ({"max_batch_tokens": 20}, 1)],
)
async def test_batch_limits_are_respected(world, slots, limits, most) -> None:
    prompts = ["one", "two", "three", "four", "five"]
    seen_running: list[int] = []

    async def consume(prompt: str) -> list[int]:
        tokens = []
        async for chunk in engine.generate(greedy(prompt, "small", n=10)):
            seen_running.append(engine.num_running)
            tokens.extend(chunk.token_ids)
        return tokens

    async with Engine(world.base, world.model, slots, **limits) as engine:
        results = await asyncio.gather(*(consume(p) for p in prompts))

    assert results == [reference(world, "small", p, 10)[0] for p in prompts]
    assert max(seen_running) == most


async def test_stop_string_ends_generation_before_it(world, engine) -> None:
    full = await engine.complete(greedy("stop here", None, n=24))
    text = full.text
    start = next(i for i in range(4, len(text) - 1) if "\ufffd" not in text[i : i + 2])
    stop = text[start : start + 2]

    stopped = await engine.complete(greedy("stop here", None, n=24, stop=[stop, "never-seen"]))

    assert stopped.text == text[: text.index(stop)]
    assert stopped.finish_reason == "stop"
    assert stopped.usage.completion_tokens < 24


async def test_streamed_chunks_carry_tokens_text_and_final_usage(world, engine) -> None:
    chunks: list[GenerationChunk] = [c async for c in engine.generate(greedy("stream", n=6))]

    assert [len(c.token_ids) for c in chunks] == [1] * 6
    assert [c.finish_reason for c in chunks] == [None] * 5 + ["length"]
    assert all(c.usage is None for c in chunks[:-1])
    prompt_tokens = len(world.base.tokenizer("stream")["input_ids"])
    assert chunks[-1].usage.prompt_tokens == prompt_tokens
    assert chunks[-1].usage.completion_tokens == 6
    token_ids = [t for c in chunks for t in c.token_ids]
    assert "".join(c.text for c in chunks) == world.base.tokenizer.decode(
        token_ids, skip_special_tokens=True
    )


async def test_logprobs_are_the_model_distribution(world, engine) -> None:
    result = await engine.complete(greedy("logprobs please", "small", n=5, logprobs=3))
    tokens, logprob_rows = reference(world, "small", "logprobs please", 5)

    assert [lp.token_id for lp in result.logprobs] == tokens
    for entry, row in zip(result.logprobs, logprob_rows, strict=True):
        assert entry.logprob == pytest.approx(row[entry.token_id].item(), abs=1e-4)
        top_values, top_ids = row.topk(3)
        assert [t.token_id for t in entry.top_logprobs] == top_ids.tolist()
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(
            top_values.tolist(), abs=1e-4
        )
    without = await engine.complete(greedy("logprobs please", "small", n=5))
    assert without.logprobs is None


async def test_seeded_sampling_is_reproducible_alone_and_batched(engine) -> None:
    def sampled(seed: int, **extra) -> GenerationRequest:
        return GenerationRequest(
            prompt="sample me",
            adapter=version("large"),
            sampling=SamplingParams(
                max_tokens=12, temperature=1.3, seed=seed, ignore_eos=True, **extra
            ),
        )

    alone = await engine.complete(sampled(7))
    batched = await asyncio.gather(
        engine.complete(sampled(7)), engine.complete(sampled(8)), engine.complete(greedy("x"))
    )
    top_k_one = await engine.complete(sampled(9, top_k=1))
    tiny_top_p = await engine.complete(sampled(9, top_p=1e-6))
    greedy_result = await engine.complete(greedy("sample me", "large", n=12))

    assert batched[0].token_ids == alone.token_ids
    assert batched[1].token_ids != alone.token_ids
    assert top_k_one.token_ids == greedy_result.token_ids == tiny_top_p.token_ids


async def test_chat_messages_use_the_chat_template(world, engine) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    tokenizer = world.base.tokenizer
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    result = await engine.complete(
        GenerationRequest(messages=messages, sampling=SamplingParams(max_tokens=3, temperature=0))
    )

    assert rendered.endswith("<|assistant|>") and "be brief" in rendered
    assert result.usage.prompt_tokens == len(
        tokenizer(rendered, add_special_tokens=False)["input_ids"]
    )


async def test_engine_registers_the_manifest_on_start(world, slots) -> None:
    registered = []

    async def register(manifest) -> None:
        registered.append(manifest)

    async with Engine(world.base, world.model, slots, on_manifest=register):
        pass

    assert registered == [world.base.manifest]
    assert "model.layers.0.self_attn.q_proj" in registered[0].modules


async def test_closing_the_engine_cancels_pending_requests(world, slots) -> None:
    engine = Engine(world.base, world.model, slots)
    await engine.start()
    stream = engine.generate(greedy("endless", "small", n=900))
    await anext(stream)
    await engine.aclose()

    with pytest.raises(RequestCancelledError):
        async for _ in stream:
            pass
    assert slots.pinned == 0


async def test_full_queue_is_overloaded(world, slots) -> None:
    async with Engine(world.base, world.model, slots, max_waiting=0) as engine:
        with pytest.raises(EngineOverloadedError, match="max_waiting=0"):
            await engine.complete(greedy("no room"))


async def test_requests_waiting_for_their_adapter_count_as_queued(world) -> None:
    release_loads = asyncio.Event()

    class SlowLoads(PreloadedSlots):
        async def acquire(self, version: AdapterVersion) -> _Lease:
            await release_loads.wait()
            return await super().acquire(version)

    slots = SlowLoads(world.slots)
    async with Engine(world.base, world.model, slots, max_waiting=1) as engine:
        loading = asyncio.create_task(engine.complete(greedy("cold", "small", n=3)))
        await until(lambda: engine.num_waiting > 0)
        with pytest.raises(EngineOverloadedError):
            await engine.complete(greedy("no room while loading"))
        release_loads.set()
        result = await loading

    assert list(result.token_ids) == reference(world, "small", "cold", 3)[0]
    assert slots.pinned == 0


async def test_tokenizing_runs_off_the_event_loop_and_counts_as_queued(world, slots) -> None:
    gate = threading.Event()
    encoded_on: list[int] = []  # thread ids

    class GatedTokenizer:
        """The tiny tokenizer, whose encoding blocks its thread until the gate opens."""

        def __init__(self, tokenizer) -> None:
            self._tokenizer = tokenizer

        def __call__(self, *args, **kwargs):
            encoded_on.append(threading.get_ident())
            gate.wait(timeout=10)
            return self._tokenizer(*args, **kwargs)

        def __getattr__(self, name: str):
            return getattr(self._tokenizer, name)

    base = dataclasses.replace(world.base, tokenizer=GatedTokenizer(world.base.tokenizer))
    async with Engine(base, world.model, slots, max_waiting=1) as engine:
        tokenizing = asyncio.create_task(engine.complete(greedy("slow", n=3)))
        # The loop keeps running while the encode blocks, and sees the request queued.
        await until(lambda: engine.num_waiting == 1)
        with pytest.raises(EngineOverloadedError):
            await engine.complete(greedy("no room while tokenizing"))
        assert not gate.is_set() and engine.num_running == 0
        gate.set()
        result = await tokenizing

    assert list(result.token_ids) == reference(world, None, "slow", 3)[0]
    assert len(encoded_on) == 1 and encoded_on[0] != threading.get_ident()


async def test_failed_forward_fails_its_batch_and_the_engine_keeps_serving(world) -> None:
    broken = PreloadedSlots({**world.slots, version("ghost").key: 99})  # no such slot
    async with Engine(world.base, world.model, broken) as engine:
        with pytest.raises(EngineError, match="generation failed"):
            await engine.complete(greedy("doomed", "ghost"))
        result = await engine.complete(greedy("fine", "small", n=4))

    assert list(result.token_ids) == reference(world, "small", "fine", 4)[0]
    assert broken.pinned == 0


async def test_prompt_too_long_for_the_budget_is_invalid(world, slots) -> None:
    async with Engine(world.base, world.model, slots, max_batch_tokens=16) as engine:
        with pytest.raises(InvalidRequestError, match="max_tokens"):
            await engine.complete(greedy("a prompt", n=10))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("temperature", -0.5),
        ("top_p", 0),
        ("top_k", -1),
        ("stop", [""]),
        ("seed", -3),
        ("logprobs", 21),
        ("ignore_eos", "yes"),
    ],
)
def test_invalid_sampling_params_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},
        {"prompt": ""},
        {"messages": [{"role": "robot", "content": "x"}]},
    ],
)
def test_invalid_requests_are_rejected(kwargs) -> None:
    with pytest.raises(InvalidRequestError):
        GenerationRequest(**kwargs)


def test_text_stream_holds_back_split_characters_and_stop_prefixes(world) -> None:
    tokenizer = world.base.tokenizer
    ids = tokenizer("héllo END world")["input_ids"]  # é is two byte tokens

    stream = TextStream(tokenizer, stop=["END"])
    deltas = [stream.push(i) for i in ids]

    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == "héllo "
    assert stream.stopped and stream.push(ids[0]) == "" and stream.finish() == ""
    plain = TextStream(tokenizer, stop=["ENDING"])
    text = "".join(plain.push(i) for i in tokenizer("x EN")["input_ids"])
    assert text == "x " and plain.finish() == "EN"
