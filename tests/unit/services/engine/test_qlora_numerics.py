"""QLoRA serving against the real ``peft`` + ``bitsandbytes``: a quantized base (NF4 or
int8) under full-precision adapters gives PEFT's outputs.

The reference is ``peft.PeftModel`` over a transformers model loaded with the same
``BitsAndBytesConfig`` (written out here, not taken from the engine). Both sides run the
same bitsandbytes layer for the base product, and the LoRA delta in fp32, so the logits
agree within :data:`ATOL` (the only difference is where the scaling is multiplied in)
and greedy tokens are equal. Adapters are made on the unquantized twin of the base, as
an adapter trained on the 16-bit model and served on its 4-bit twin would be.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from services.engine import NO_ADAPTER_SLOT
from services.engine import BaseModel
from services.engine import Engine
from services.engine import GenerationRequest
from services.engine import HostAdapter
from services.engine import MultiLoraModel
from services.engine import SamplingParams
from services.engine import ensure_tiny_model
from services.engine import load_base_model
from tests.factories import make_peft_adapter
from tests.unit.services.engine.test_generation import PreloadedSlots
from tests.unit.services.engine.test_generation import version
from tests.unit.services.engine.test_lora_numerics import LLAMA_OPTIONS

pytest.importorskip("bitsandbytes", reason="bitsandbytes is a server dependency")

# fp32 compute on both sides; the LoRA products differ only in rounding order.
ATOL = 1e-4
QUANTIZATIONS = ("nf4", "int8")
OPTIONS = sorted(LLAMA_OPTIONS)
GREEDY_TOKENS = 8


def bnb_config(quantization: str) -> Any:
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )


@dataclass
class Twin:
    """One quantization: the engine's model and PEFT's, each with every option loaded."""

    quantization: str
    base: BaseModel
    ours: MultiLoraModel
    peft: Any  # peft.PeftModel, one named adapter per option
    slots: dict[str, int]  # option -> slot

    @property
    def slots_by_key(self) -> dict[str, int]:
        return {version(option).key: slot for option, slot in self.slots.items()}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def adapters(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every option's adapter, made on the unquantized (fp32) model."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    root = tmp_path_factory.mktemp("adapters")
    return {
        option: make_peft_adapter(plain, root / option, seed=i, **LLAMA_OPTIONS[option])
        for i, option in enumerate(OPTIONS)
    }


@pytest.fixture(scope="module", params=QUANTIZATIONS)
def twin(request: pytest.FixtureRequest, tiny_dir: Path, adapters: dict[str, Path]) -> Twin:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    quantization = request.param
    base = load_base_model(tiny_dir, quantize=quantization, device="cpu", name="tiny")
    ours = MultiLoraModel(base.model, max_slots=len(OPTIONS), max_rank=64)
    reference = AutoModelForCausalLM.from_pretrained(
        str(tiny_dir),
        quantization_config=bnb_config(quantization),
        dtype=torch.float32,
        device_map={"": "cpu"},
    ).eval()
    peft_model = None
    slots = {}
    for slot, option in enumerate(OPTIONS):
        ours.load_slot(slot, HostAdapter.from_dir(option, adapters[option], ours))
        slots[option] = slot
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(reference, str(adapters[option]), option)
        else:
            peft_model.load_adapter(str(adapters[option]), adapter_name=option)
    return Twin(quantization, base, ours, peft_model.eval(), slots)


@pytest.fixture(scope="module")
def input_ids() -> torch.Tensor:
    return torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(1))


def peft_logits(twin: Twin, input_ids: torch.Tensor, adapter_names: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return twin.peft(input_ids=input_ids, adapter_names=adapter_names).logits


def test_the_base_is_quantized(twin: Twin) -> None:
    import bitsandbytes as bnb

    kind = bnb.nn.Linear4bit if twin.quantization == "nf4" else bnb.nn.Linear8bitLt
    q_proj = twin.ours.layers["model.layers.0.self_attn.q_proj"]
    assert isinstance(q_proj.base, kind)
    assert q_proj.lora_a.dtype == torch.float32, "adapters stay in the compute dtype"
    assert twin.base.quantization == twin.base.manifest.quantization == twin.quantization


@pytest.mark.parametrize("option", OPTIONS)
def test_adapter_alone_matches_peft_over_the_same_quantized_base(
    twin: Twin, option: str, input_ids: torch.Tensor
) -> None:
    rows = input_ids.shape[0]
    expected = peft_logits(twin, input_ids, [option] * rows)

    got = twin.ours.forward(input_ids, [twin.slots[option]] * rows).logits

    base = peft_logits(twin, input_ids, ["__base__"] * rows)
    assert (expected - base).abs().max() > 1e-2, "the adapter must change the output"
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert torch.equal(got[:, -1].argmax(-1), expected[:, -1].argmax(-1))


def test_mixed_batch_matches_peft_row_by_row(twin: Twin) -> None:
    names = [*OPTIONS, None]
    input_ids = torch.randint(0, 256, (len(names), 10), generator=torch.Generator().manual_seed(2))
    slot_ids = [NO_ADAPTER_SLOT if n is None else twin.slots[n] for n in names]

    got = twin.ours.forward(input_ids, slot_ids).logits

    expected = peft_logits(twin, input_ids, [n or "__base__" for n in names])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    for row, slot in enumerate(slot_ids):  # each row is its single-adapter result
        alone = twin.ours.forward(input_ids[row : row + 1], [slot]).logits
        torch.testing.assert_close(got[row], alone[0], atol=ATOL, rtol=0)


def _peft_greedy(twin: Twin, prompt_ids: list[int], adapter: str | None) -> list[int]:
    """Greedy tokens re-running the whole sequence each step: no cache, no padding."""
    ids = list(prompt_ids)
    for _ in range(GREEDY_TOKENS):
        logits = peft_logits(twin, torch.tensor([ids]), [adapter or "__base__"])
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


def test_engine_greedy_tokens_in_a_mixed_batch_equal_peft(twin: Twin) -> None:
    adapters = [*OPTIONS[:4], None]
    requests = [
        GenerationRequest(
            prompt=f"prompt {i}: quantized " * (1 + i % 3),
            adapter=None if name is None else version(name),
            sampling=SamplingParams(max_tokens=GREEDY_TOKENS, temperature=0, ignore_eos=True),
        )
        for i, name in enumerate(adapters)
    ]

    async def run() -> list[list[int]]:
        async with Engine(twin.base, twin.ours, PreloadedSlots(twin.slots_by_key)) as engine:
            results = await asyncio.gather(*(engine.complete(r) for r in requests))
        return [list(r.token_ids) for r in results]

    got = asyncio.run(run())

    tokenizer = twin.base.tokenizer
    expected = [
        _peft_greedy(twin, tokenizer(r.prompt)["input_ids"], name)
        for r, name in zip(requests, adapters, strict=True)
    ]
    assert got == expected


def test_manifest_of_the_quantized_twin_has_the_unquantized_shapes(
    twin: Twin, tiny_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from adapter_store import manifest_from_model

    plain = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    unquantized = manifest_from_model("tiny", plain)

    assert dict(twin.base.manifest.modules) == dict(unquantized.modules)
    assert twin.base.manifest.output_module == unquantized.output_module
    assert twin.base.manifest.quantization == twin.quantization != unquantized.quantization


def test_quantized_base_holds_fewer_bytes_than_its_full_precision_copy(
    twin: Twin, tiny_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    fp32_bytes = sum(p.numel() * p.element_size() for p in plain.parameters())
    linear_params = (
        sum(m.weight.numel() for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear))
        - plain.lm_head.weight.numel()
    )  # bitsandbytes leaves the output head unquantized
    # Each quantized weight drops from 4 bytes to 1 (int8) or 0.5 (nf4) plus scales.
    stored = {"int8": 1.0, "nf4": 0.5}[twin.quantization]

    assert twin.base.full_precision_bytes == fp32_bytes
    saved = fp32_bytes - twin.base.weight_bytes
    assert saved <= linear_params * (4 - stored)
    assert saved >= linear_params * (4 - stored) * 0.85, "scales cost at most 15% of the saving"
