"""Sampling parameters and the per-row sampler of a batch.

Every row of a batch has its own parameters and its own seeded generator, so a request
samples the same tokens whether it runs alone or among others. Each row's logits are
adjusted in this order: ``logit_bias``, presence/frequency penalties (over the tokens
generated so far, as OpenAI), the repetition penalty (over prompt and output, as vLLM),
``min_tokens`` (stop tokens forbidden until then), the row's grammar. Then filtering
(temperature, top-k, top-p) is vectorised over the batch; only the final random draw is
per row, on the CPU, where each request's ``torch.Generator`` lives.

Logprobs are those of the model's distribution (log-softmax of the raw logits, before
any adjustment, temperature and filtering), as the OpenAI API and vLLM report them.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from services.engine._grammar import Grammar
from services.engine._grammar import RowGrammar
from services.engine._grammar import mask_logits
from services.engine.exceptions import InvalidRequestError

__all__ = ["MAX_CHOICES", "MAX_LOGPROBS", "SamplingParams"]

MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_TOKEN_IDS = 64
MAX_CHOICES = 16
MAX_LOGIT_BIAS = 300  # OpenAI's cap on logit_bias entries


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
    (0-20). ``seed`` makes sampling reproducible; with ``n`` choices, choice ``i`` uses
    ``seed + i``, so each choice equals a single-choice request with that seed.
    ``ignore_eos`` keeps going past the end-of-sequence token (benchmarks need fixed
    lengths). ``stop_token_ids`` end generation like the end-of-sequence token.

    Penalties: ``presence_penalty`` and ``frequency_penalty`` (-2..2) subtract from the
    logits of tokens already generated (once, and per occurrence); ``repetition_penalty``
    (> 0, 1 = off) divides positive and multiplies negative logits of tokens seen in the
    prompt or output. ``logit_bias`` adds to the named token ids' logits (-100..100).
    ``min_tokens`` forbids end-of-sequence and stop tokens until that many are out.
    ``grammar`` constrains every token (structured outputs).

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
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    grammar: Grammar | None = None

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
        if not _is_int(self.n) or not 1 <= self.n <= MAX_CHOICES:
            raise _invalid("n", self.n, f"an integer in [1, {MAX_CHOICES}]")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2 <= value <= 2:
                raise _invalid(name, value, "a number in [-2, 2]")
        if not _is_number(self.repetition_penalty) or not 0 < self.repetition_penalty <= 10:
            raise _invalid("repetition_penalty", self.repetition_penalty, "a number in (0, 10]")
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            raise _invalid("min_tokens", self.min_tokens, "an integer in [0, max_tokens]")
        stop_ids = self.stop_token_ids
        if (
            not isinstance(stop_ids, list | tuple)
            or len(stop_ids) > MAX_STOP_TOKEN_IDS
            or not all(_is_int(t) and t >= 0 for t in stop_ids)
        ):
            raise _invalid(
                "stop_token_ids", stop_ids, f"a list of at most {MAX_STOP_TOKEN_IDS} token ids"
            )
        object.__setattr__(self, "stop_token_ids", tuple(stop_ids))
        if self.grammar is not None and not isinstance(self.grammar, Grammar):
            raise _invalid("grammar", self.grammar, "a Grammar or None")

    @property
    def adjusts_logits(self) -> bool:
        """Whether any of this row's logits change before filtering."""
        return bool(
            self.presence_penalty
            or self.frequency_penalty
            or self.repetition_penalty != 1
            or self.logit_bias
            or self.min_tokens
        )

    def token_ids(self) -> set[int]:
        """Every token id the parameters name (checked against the vocabulary)."""
        return {t for t, _ in self.logit_bias} | set(self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def make_generator(self, choice: int = 0) -> torch.Generator | None:
        """A CPU generator for choice ``choice``, seeded with ``seed + choice`` (a random
        seed when there is no seed); None if greedy."""
        if self.greedy:
            return None
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed((self.seed + choice) % 2**63)
        return generator


def _logit_bias(bias: object) -> tuple[tuple[int, float], ...]:
    """``{token_id: bias}`` (keys may be strings, as JSON has them) as sorted pairs."""
    items = bias.items() if isinstance(bias, Mapping) else bias
    rule = f"a map of at most {MAX_LOGIT_BIAS} token ids to numbers in [-100, 100]"
    try:
        pairs = sorted({int(t): b for t, b in items}.items())  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise _invalid("logit_bias", bias, rule) from None
    if len(pairs) > MAX_LOGIT_BIAS or not all(
        t >= 0 and _is_number(b) and -100 <= b <= 100 for t, b in pairs
    ):
        raise _invalid("logit_bias", bias, rule)
    return tuple((t, float(b)) for t, b in pairs)


class SamplingRow(Protocol):
    """What the sampler reads of one batch row."""

    @property
    def sampling(self) -> SamplingParams: ...
    @property
    def generator(self) -> torch.Generator | None: ...
    @property
    def prompt_ids(self) -> Sequence[int]: ...
    @property
    def output_ids(self) -> Sequence[int]: ...
    @property
    def grammar(self) -> RowGrammar | None: ...


@dataclass(frozen=True, slots=True)
class SampledToken:
    """One sampled token, its logprob and (when asked for) the top alternatives."""

    token_id: int
    logprob: float
    top_logprobs: tuple[tuple[int, float], ...] = ()


def sample_batch(
    logits: torch.Tensor, rows: Sequence[SamplingRow], stop_token_ids: Collection[int] = ()
) -> list[SampledToken]:
    """Pick one token per row of ``logits`` (batch, vocab) with that row's parameters.

    ``stop_token_ids`` (the model's end-of-sequence tokens) are forbidden, with each
    row's own stop tokens, while the row is under its ``min_tokens``.
    """
    params = [row.sampling for row in rows]
    generators = [row.generator for row in rows]
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    if any(p.adjusts_logits for p in params) or any(r.grammar is not None for r in rows):
        logits = logits.clone()
        _adjust(logits, rows, stop_token_ids)
        mask_logits(logits, [row.grammar for row in rows])
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


def _adjust(logits: torch.Tensor, rows: Sequence[SamplingRow], eos: Collection[int]) -> None:
    """Bias, penalties and ``min_tokens`` in place, each row by its own parameters.

    Each adjustment is one scatter over the rows that use it, not a loop of small ops
    per row: with 32 rows the per-row version cost more than the sampling itself.
    """
    device = logits.device
    adjusting = [(i, row) for i, row in enumerate(rows) if row.sampling.adjusts_logits]

    def scatter_index(rows: list[int], tokens: list[Sequence[int]]) -> tuple[torch.Tensor, ...]:
        """(row, token) index pairs: each of ``rows`` with every token of its list."""
        sizes = torch.tensor([len(t) for t in tokens], device=device)
        row_index = torch.tensor(rows, device=device).repeat_interleave(sizes)
        flat = [token for row_tokens in tokens for token in row_tokens]
        return row_index, torch.tensor(flat, dtype=torch.long, device=device)

    biased = [(i, row.sampling.logit_bias) for i, row in adjusting if row.sampling.logit_bias]
    if biased:
        where = scatter_index([i for i, _ in biased], [[t for t, _ in bias] for _, bias in biased])
        values = [b for _, bias in biased for _, b in bias]
        logits.index_put_(where, torch.tensor(values, device=device), accumulate=True)
    counted = [
        (i, row)
        for i, row in adjusting
        if (row.sampling.presence_penalty or row.sampling.frequency_penalty) and row.output_ids
    ]
    if counted:
        where = scatter_index(list(range(len(counted))), [row.output_ids for _, row in counted])
        counts = torch.zeros(len(counted), logits.shape[-1], device=device)
        counts.index_put_(where, torch.ones(len(where[1]), device=device), accumulate=True)
        frequency = torch.tensor(
            [row.sampling.frequency_penalty for _, row in counted], device=device
        )
        presence = torch.tensor(
            [row.sampling.presence_penalty for _, row in counted], device=device
        )
        index = torch.tensor([i for i, _ in counted], device=device)
        logits[index] -= frequency[:, None] * counts + presence[:, None] * (counts > 0)
    repeated = [(i, row) for i, row in adjusting if row.sampling.repetition_penalty != 1]
    if repeated:
        seen = torch.zeros(len(repeated), logits.shape[-1], dtype=torch.bool, device=device)
        tokens = [[*row.prompt_ids, *row.output_ids] for _, row in repeated]
        seen[scatter_index(list(range(len(repeated))), tokens)] = True
        penalty = torch.tensor(
            [row.sampling.repetition_penalty for _, row in repeated], device=device
        )
        index = torch.tensor([i for i, _ in repeated], device=device)
        values = logits[index]
        penalized = torch.where(values > 0, values / penalty[:, None], values * penalty[:, None])
        logits[index] = torch.where(seen, penalized, values)
    short = [
        (i, sorted({*eos, *row.sampling.stop_token_ids}))
        for i, row in adjusting
        if len(row.output_ids) < row.sampling.min_tokens
    ]
    if short:
        logits[scatter_index([i for i, _ in short], [ids for _, ids in short])] = -math.inf


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
