"""Per-row sampling features in the mixed-adapter batch: n choices, penalties, logit bias,
min_tokens, stop token ids and grammars (structured outputs).

The batch invariant is the one the engine promises for plain rows: a deterministic row
(greedy, or seeded) yields the same tokens alone and among rows with other adapters,
other parameters and other grammars.
"""

from __future__ import annotations

import asyncio
import json
import math

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from services.engine import Engine
from services.engine import GenerationRequest
from services.engine import Grammar
from services.engine import InvalidRequestError
from services.engine import SamplingParams
from services.engine._sampling import sample_batch
from tests.unit.services.engine import test_generation as generation
from tests.unit.services.engine.test_generation import PreloadedSlots
from tests.unit.services.engine.test_generation import World
from tests.unit.services.engine.test_generation import version

# The generation tests' tiny model, adapters and engine (module fixtures), shared as is.
world = generation.world
slots = generation.slots
engine = generation.engine

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def request(
    prompt: str, adapter: str | None = None, max_tokens: int = 12, **sampling
) -> GenerationRequest:
    params = {"max_tokens": max_tokens, "temperature": 0, **sampling}
    return GenerationRequest(
        prompt=prompt,
        adapter=None if adapter is None else version(adapter),
        sampling=SamplingParams(**params),
    )


async def test_mixed_rows_each_equal_their_solo_run(engine: Engine) -> None:
    rows = [
        request("The quick brown fox", "small", ignore_eos=True),
        request("hi", "large", max_tokens=200, grammar=Grammar.json_schema(PERSON)),
        request("a longer prompt here!", None, ignore_eos=True, frequency_penalty=1.5),
        request(
            "hi",
            "small",
            ignore_eos=True,
            presence_penalty=2.0,
            repetition_penalty=1.3,
            logit_bias={65: 3.0},
        ),
        request("hi", "large", ignore_eos=True, n=3, temperature=1.0, seed=5),
        request("The quick", None, max_tokens=40, grammar=Grammar.choice(["yes", "no", "maybe"])),
    ]

    together = await asyncio.gather(*(engine.complete_choices(r) for r in rows))
    alone = [await engine.complete_choices(r) for r in rows]

    assert [[c.token_ids for c in r] for r in together] == [[c.token_ids for c in r] for r in alone]
    person = json.loads(together[1][0].text)
    jsonschema.validate(person, PERSON)
    assert together[5][0].text in {"yes", "no", "maybe"}
    assert [c.index for c in together[4]] == [0, 1, 2]


async def test_choice_i_is_the_single_choice_run_seeded_seed_plus_i(engine: Engine) -> None:
    three = await engine.complete_choices(request("hi", "small", n=3, temperature=1.0, seed=40))
    singles = [
        await engine.complete(request("hi", "small", temperature=1.0, seed=40 + i))
        for i in range(3)
    ]

    assert [c.token_ids for c in three] == [s.token_ids for s in singles]
    assert len({c.token_ids for c in three}) > 1, "choices must differ"
    assert all(c.usage.prompt_tokens == singles[0].usage.prompt_tokens for c in three)


async def test_a_grammar_constrains_only_its_own_row(engine: Engine) -> None:
    free = request("The quick brown fox", "small", ignore_eos=True)
    shaped = request(
        "The quick brown fox", "small", max_tokens=60, grammar=Grammar.regex("[0-9]{3}-[a-z]{2}")
    )

    plain, constrained = await asyncio.gather(engine.complete(free), engine.complete(shaped))

    assert plain.token_ids == (await engine.complete(free)).token_ids
    assert constrained.finish_reason == "stop"
    text = constrained.text
    assert len(text) == 6 and text[:3].isdigit() and text[3] == "-" and text[4:].isalpha()


async def test_min_tokens_holds_back_stop_tokens_then_stop_token_ids_end(engine: Engine) -> None:
    # The bias makes byte 66 ("B") the greedy pick from the first step on.
    result = await engine.complete(
        request("hi", max_tokens=10, logit_bias={66: 100.0}, stop_token_ids=[66], min_tokens=3)
    )

    assert result.finish_reason == "stop"
    assert len(result.token_ids) == 4 and result.token_ids[-1] == 66
    assert 66 not in result.token_ids[:3] and "B" not in result.text


@pytest.mark.parametrize(
    ("sampling", "match"),
    [
        ({"logit_bias": {10**6: 1.0}}, "outside the vocabulary"),
        ({"stop_token_ids": [10**6]}, "outside the vocabulary"),
        ({"grammar": Grammar.regex("([")}, "cannot be compiled"),
        ({"grammar": Grammar.json_schema({"type": "bogus"})}, "cannot be compiled"),
    ],
)
async def test_bad_token_ids_and_grammars_fail_alone(engine: Engine, sampling, match) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        await engine.complete(request("hi", **sampling))

    assert (await engine.complete(request("hi"))).usage.completion_tokens == 12


class _Row:
    def __init__(self, output_ids=(), prompt_ids=(), **params) -> None:
        self.sampling = SamplingParams(temperature=0, **params)
        self.generator = None
        self.prompt_ids = list(prompt_ids)
        self.output_ids = list(output_ids)
        self.grammar = None


def test_penalties_and_bias_move_exactly_the_named_logits() -> None:
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5, 0.0]] * 4)
    rows = [
        _Row(output_ids=[1, 1, 3], presence_penalty=0.5, frequency_penalty=0.25),
        _Row(prompt_ids=[2], output_ids=[1], repetition_penalty=2.0),
        _Row(logit_bias={4: 5.0, 0: -100.0}),
        _Row(output_ids=[0], min_tokens=2, stop_token_ids=[1]),
    ]

    picked = [s.token_id for s in sample_batch(logits.clone(), rows, stop_token_ids={0})]
    # Row 0: token 1 -> 2 - 0.5 - 2*0.25 = 1.0, token 3 -> 0.5 - 0.75 < 0: token 0 ties
    # at 1.0 and wins argmax by position. Row 1: 2 / 2 = 1.0, ties with token 0 likewise;
    # -1 * 2 for token 2. Row 2: token 4 -> 5. Row 3: tokens 0 (eos) and 1 banned -> 3.
    assert picked == [0, 0, 4, 3]
    logprobs = torch.log_softmax(logits[0], -1)
    assert math.isclose(sample_batch(logits.clone(), rows[:1])[0].logprob, logprobs[0].item())


def _bounded_schemas() -> st.SearchStrategy[dict]:
    """Random JSON schemas whose every valid document is short, so a constrained row
    always completes within its token budget (unbounded strings or integers could run
    to max_tokens on a random-weight model)."""
    leaves = st.one_of(
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.integers(-50, 50).map(lambda lo: {"type": "integer", "minimum": lo, "maximum": lo + 99}),
        st.integers(0, 6).map(lambda n: {"type": "string", "maxLength": n}),
        st.lists(
            st.text("abcxyz", min_size=1, max_size=4), min_size=1, max_size=4, unique=True
        ).map(lambda options: {"enum": options}),
    )

    def containers(children: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
        properties = st.dictionaries(
            st.text("abcdef", min_size=1, max_size=4), children, min_size=1, max_size=3
        )
        objects = properties.flatmap(
            lambda props: st.sets(st.sampled_from(sorted(props))).map(
                lambda required: {
                    "type": "object",
                    "properties": props,
                    "required": sorted(required),
                    "additionalProperties": False,
                }
            )
        )
        arrays = children.map(lambda items: {"type": "array", "items": items, "maxItems": 2})
        return st.one_of(objects, arrays)

    return st.recursive(leaves, containers, max_leaves=6)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    schema=_bounded_schemas(), seed=st.integers(0, 2**31), adapter=st.sampled_from([None, "small"])
)
def test_constrained_output_always_validates(
    world: World, schema: dict, seed: int, adapter
) -> None:
    async def run() -> tuple[str, str]:
        async with Engine(world.base, world.model, PreloadedSlots(world.slots)) as fresh:
            result = await fresh.complete(
                request(
                    "Reply:",
                    adapter,
                    max_tokens=400,
                    temperature=1.0,
                    seed=seed,
                    grammar=Grammar.json_schema(schema),
                )
            )
        return result.text, result.finish_reason

    text, finish = asyncio.run(run())

    assert finish == "stop", text
    jsonschema.validate(json.loads(text), schema)


async def test_json_rows_never_emit_raw_control_characters(engine: Engine) -> None:
    # xgrammar's length-bounded string rule admits bytes below 0x20; pushed hard toward
    # one, the row must still produce JSON that a strict parser accepts.
    schema = {
        "type": "object",
        "properties": {"s": {"type": "string", "maxLength": 5}},
        "required": ["s"],
    }
    result = await engine.complete(
        request(
            "hi", max_tokens=60, logit_bias={28: 50.0, 9: 50.0}, grammar=Grammar.json_schema(schema)
        )
    )

    assert result.finish_reason == "stop"
    jsonschema.validate(json.loads(result.text), schema)
