"""Sampling parameters and the per-row sampler of a batch.

Every row of a batch has its own parameters and its own seeded generator, so a request
samples the same tokens whether it runs alone or among others. Filtering (temperature,
top-k, top-p) is vectorised over the batch; only the final random draw is per row, on
the CPU, where each request's ``torch.Generator`` lives.

Logprobs are those of the model's distribution (log-softmax of the raw logits, before
temperature and filtering), as the OpenAI API and vLLM report them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.engine.exceptions import InvalidRequestError

__all__ = ["MAX_LOGPROBS", "SamplingParams"]

MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16


def _invalid(field: str, value: object, rule: str) -> InvalidRequestError:
    return InvalidRequestError(f"{field} is {value!r}; it must be {rule}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens for one request.

    ``temperature`` 0 means greedy. ``top_k`` 0 and ``top_p`` 1 disable those filters.
    ``stop`` strings end generation (the stop string is not returned). ``logprobs``:
    ``None`` for none, else the chosen token's logprob plus that many top alternatives
    (0-20). ``seed`` makes sampling reproducible. ``ignore_eos`` keeps going past the
    end-of-sequence token (benchmarks need fixed lengths).

    Raises:
        InvalidRequestError: on construction, naming the field and its allowed range.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise _invalid("max_tokens", self.max_tokens, "an integer >= 1")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise _invalid("temperature", self.temperature, "a number >= 0 (0 = greedy)")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise _invalid("top_p", self.top_p, "a number in (0, 1]")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise _invalid("top_k", self.top_k, "an integer >= 0 (0 = no top-k filter)")
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
            raise _invalid("stop", self.stop, "a non-empty string or a list of them")
        if len(stop) > MAX_STOP_STRINGS:
            raise _invalid("stop", self.stop, f"at most {MAX_STOP_STRINGS} strings")
        object.__setattr__(self, "stop", tuple(stop))
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise _invalid("seed", self.seed, "an integer in [0, 2**63) or null")
        if self.logprobs is not None and (
            not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise _invalid("logprobs", self.logprobs, f"an integer in [0, {MAX_LOGPROBS}] or null")
        if not isinstance(self.ignore_eos, bool):
            raise _invalid("ignore_eos", self.ignore_eos, "true or false")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def make_generator(self) -> torch.Generator | None:
        """A CPU generator seeded with ``seed`` (a random seed when none); None if greedy."""
        if self.greedy:
            return None
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


@dataclass(frozen=True, slots=True)
class SampledToken:
    """One sampled token, its logprob and (when asked for) the top alternatives."""

    token_id: int
    logprob: float
    top_logprobs: tuple[tuple[int, float], ...] = ()


def sample_batch(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[SampledToken]:
    """Pick one token per row of ``logits`` (batch, vocab) with that row's parameters."""
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = logits.argmax(dim=-1)
    sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
    if sampled_rows:
        rows = torch.tensor(sampled_rows, device=logits.device)
        probs, order = _filtered_probs(logits[rows], [params[i] for i in sampled_rows])
        probs, order = probs.cpu(), order.cpu()
        for n, row in enumerate(sampled_rows):
            pick = torch.multinomial(probs[n], 1, generator=generators[row])
            chosen[row] = order[n, pick.item()]
    chosen_logprobs = logprobs.gather(1, chosen[:, None])[:, 0].tolist()
    chosen_ids = chosen.tolist()
    top_n = max((p.logprobs or 0) for p in params)
    top_values: list[list[float]] = [[] for _ in params]
    top_ids: list[list[int]] = [[] for _ in params]
    if top_n:
        values, ids = logprobs.topk(top_n, dim=-1)
        top_values, top_ids = values.tolist(), ids.tolist()
    return [
        SampledToken(
            token_id=chosen_ids[i],
            logprob=chosen_logprobs[i],
            top_logprobs=tuple(
                zip(top_ids[i][: p.logprobs or 0], top_values[i][: p.logprobs or 0], strict=True)
            ),
        )
        for i, p in enumerate(params)
    ]


def _filtered_probs(
    logits: torch.Tensor, params: Sequence[SamplingParams]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature, top-k and top-p for each row; returns probs over vocab sorted descending
    and the token id of each sorted position."""
    device = logits.device
    vocab = logits.shape[-1]
    temperature = torch.tensor([p.temperature for p in params], device=device)
    top_k = torch.tensor([p.top_k or vocab for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    sorted_logits, order = (logits / temperature[:, None]).sort(dim=-1, descending=True)
    positions = torch.arange(vocab, device=device)
    sorted_logits = sorted_logits.masked_fill(positions >= top_k[:, None], -math.inf)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass
    # before it already does. The first token always survives.
    mass_before = probs.cumsum(dim=-1) - probs
    probs = probs.masked_fill(mass_before >= top_p[:, None], 0.0)
    return probs / probs.sum(dim=-1, keepdim=True), order
