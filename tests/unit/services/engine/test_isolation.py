"""A poisoned adapter fails alone: its request ends with AdapterOverflowError, and every
other row of its batch produces what it produces without the poisoned neighbour.

"Exactly" means: tokens, text and finish reasons equal to each request run alone (and
to the same batch without the poisoned row), logprobs equal to float rounding. Logprobs
are not bit-equal to solo runs: a batch of one runs matrix-vector kernels whose
summation order differs from the batched ones in the last bits, with or without poison
(the engine's numerics are not batch-invariant).

The poisoned adapter is written straight into a GPU slot, as if push validation had
been bypassed: every non-zero entry of its B matrices is set to float32's largest value,
so the LoRA delta overflows to inf (and RMSNorm turns inf into NaN).
"""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch

from services.engine import AdapterOverflowError
from services.engine import Engine
from services.engine import GenerationRequest
from services.engine import GenerationResult
from services.engine import HostAdapter
from services.engine import MultiLoraModel
from services.engine import SamplingParams
from services.engine import load_base_model
from tests.factories import make_peft_adapter
from tests.unit.services.engine.test_generation import PreloadedSlots
from tests.unit.services.engine.test_generation import version


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def poisoned_world(tmp_path_factory: pytest.TempPathFactory):
    base = load_base_model("tiny", models_dir=tmp_path_factory.mktemp("models"))
    plain = copy.deepcopy(base.model)
    model = MultiLoraModel(base.model, max_slots=3, max_rank=8)
    slots = {}
    for slot, name in enumerate(("good", "other", "poison")):
        path = make_peft_adapter(plain, tmp_path_factory.mktemp(name), seed=slot + 1)
        model.load_slot(slot, HostAdapter.from_dir(version(name).key, path, model))
        slots[version(name).key] = slot
    poisoned = slots[version("poison").key]
    with torch.no_grad():
        for layer in model.layers.values():
            b = layer.lora_b[poisoned]
            b.copy_(torch.sign(b) * torch.finfo(b.dtype).max)
    return base, model, slots


def request(adapter: str | None, prompt: str, **sampling) -> GenerationRequest:
    params = {"max_tokens": 6, "ignore_eos": True, "logprobs": 3, **sampling}
    return GenerationRequest(
        prompt=prompt,
        adapter=None if adapter is None else version(adapter),
        sampling=SamplingParams(**params),
    )


HEALTHY = [
    request("good", "The quick brown fox", temperature=0),
    request("other", "hi", temperature=0.8, seed=11, top_p=0.9),
    request(None, "a longer prompt here!", temperature=1.0, seed=5, top_k=20),
]


def fingerprint(result: GenerationResult) -> tuple:
    """Everything a client sees of a result: tokens, text, logprobs (exact floats)."""
    return (result.token_ids, result.text, result.finish_reason, result.logprobs)


def visible(result: GenerationResult) -> tuple:
    """What a client sees, less the logprob values."""
    return (result.token_ids, result.text, result.finish_reason)


def logprob_values(result: GenerationResult) -> list[float]:
    assert result.logprobs is not None
    return [
        v for lp in result.logprobs for v in (lp.logprob, *(t.logprob for t in lp.top_logprobs))
    ]


async def test_a_poisoned_row_fails_alone_and_its_neighbours_are_unaffected(
    poisoned_world,
) -> None:
    base, model, slot_map = poisoned_world
    slots = PreloadedSlots(slot_map)
    # No longer than the longest healthy prompt, so the batch's padding is the same.
    poisoned = request("poison", "tell me something", temperature=0.7, seed=3)
    async with Engine(base, model, slots, max_batch_size=8) as engine:
        alone = [await engine.complete(r) for r in HEALTHY]
        without_poison = await asyncio.gather(*(engine.complete(r) for r in HEALTHY))
        mixed = await asyncio.gather(
            *(engine.complete(r) for r in [HEALTHY[0], poisoned, *HEALTHY[1:]]),
            return_exceptions=True,
        )
        after = await engine.complete(HEALTHY[0])

    failure = mixed.pop(1)
    assert isinstance(failure, AdapterOverflowError), failure
    assert f"adapter {version('poison').key} produced non-finite logits" in str(failure)
    assert "Only this request failed" in str(failure)
    # The same as the batch without the poisoned row. Not compared bit for bit: when
    # each request joins the batch (and so its padding) depends on tokenizer timing.
    assert [visible(r) for r in mixed] == [visible(r) for r in without_poison]
    # Equal to each request alone, logprobs to float rounding.
    assert [visible(r) for r in mixed] == [visible(r) for r in alone]
    for batched, solo in zip(mixed, alone, strict=True):
        assert logprob_values(batched) == pytest.approx(logprob_values(solo), abs=1e-4)
    assert fingerprint(after) == fingerprint(alone[0])  # the engine keeps serving
    assert slots.pinned == 0  # the failed request released its adapter


async def test_a_request_whose_first_token_overflows_fails_without_a_batch(
    poisoned_world,
) -> None:
    base, model, slot_map = poisoned_world
    async with Engine(base, model, PreloadedSlots(slot_map)) as engine:
        with pytest.raises(AdapterOverflowError, match="at output token 1"):
            await engine.complete(request("poison", "x", temperature=0))


async def test_the_poison_really_overflows_the_forward_pass(poisoned_world) -> None:
    """Guards the test above: without the isolation, this row's logits are not finite."""
    base, model, slot_map = poisoned_world
    ids = torch.tensor([base.tokenizer("tell me something")["input_ids"]])
    logits = model.forward(ids, [slot_map[version("poison").key]]).logits
    assert not torch.isfinite(logits[0, -1]).all()
