"""Request traces: the CSV format the simulator replays, a synthetic generator, and
converters from the public Azure and Alibaba traces.

The trace format is a CSV with a header and the columns
``arrival_s,adapter,prompt_tokens,output_tokens`` and optionally ``rank`` and ``tenant``
(other columns are ignored). ``arrival_s`` is seconds from the start of the trace and
never decreases from one row to the next; ``adapter`` is an adapter version key, or empty
for the base model alone; ``output_tokens`` is at least 1; ``rank`` 0 or absent means the
cost profile's default rank.

A bad trace file raises :class:`~scheduler.exceptions.TraceFormatError` naming the file,
the line and the column, and saying what a valid value looks like; a generator or
converter parameter out of range raises :class:`~scheduler.exceptions.SynthSpecError`
naming the parameter.
"""

from __future__ import annotations

import csv
import math
import random
from bisect import bisect_left
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from itertools import accumulate
from pathlib import Path

from scheduler.exceptions import SynthSpecError
from scheduler.exceptions import TraceFormatError

__all__ = [
    "SynthSpec",
    "TraceConversion",
    "TraceRequest",
    "convert_alibaba",
    "convert_azure",
    "read_trace",
    "synthesize",
    "write_trace",
]

_REQUIRED_COLUMNS = ("arrival_s", "adapter", "prompt_tokens", "output_tokens")
_COLUMNS = (*_REQUIRED_COLUMNS, "rank", "tenant")


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace. ``adapter == ""`` is a base-model-only request."""

    arrival_s: float
    adapter: str
    prompt_tokens: int
    output_tokens: int
    rank: int = 0
    tenant: str = ""


@dataclass(frozen=True, slots=True)
class TraceConversion:
    """A converted trace and a sentence saying how it was made (for results tables)."""

    requests: list[TraceRequest]
    description: str
    time_compression: float = 1.0


def _bad(path: Path | str, line: int, column: str, value: str, expected: str) -> TraceFormatError:
    return TraceFormatError(f"{path}:{line}: column {column!r} is {value!r}; expected {expected}")


def _parse_int(path: Path | str, line: int, column: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _bad(path, line, column, value, f"an integer >= {minimum}") from None
    if number < minimum:
        raise _bad(path, line, column, value, f"an integer >= {minimum}")
    return number


def read_trace(path: Path | str) -> list[TraceRequest]:
    """Read and validate a trace CSV.

    Raises:
        TraceFormatError: no header, a required column missing, a value that does not
            parse or is out of range, arrivals out of order, or no rows at all.
        OSError: the file cannot be opened.
    """
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise TraceFormatError(
                f"{path}: the file is empty; a trace needs the header "
                f"{','.join(_REQUIRED_COLUMNS)} and one row per request"
            )
        header = [name.strip() for name in header]
        missing = [name for name in _REQUIRED_COLUMNS if name not in header]
        if missing:
            raise TraceFormatError(
                f"{path}:1: the header lacks column(s) {', '.join(missing)}; a trace needs "
                f"{','.join(_REQUIRED_COLUMNS)} (and optionally rank,tenant)"
            )
        index = {name: header.index(name) for name in _COLUMNS if name in header}
        i_arrival, i_adapter = index["arrival_s"], index["adapter"]
        i_prompt, i_output = index["prompt_tokens"], index["output_tokens"]
        i_rank, i_tenant = index.get("rank"), index.get("tenant")
        width = max(index.values()) + 1
        requests: list[TraceRequest] = []
        last_arrival = 0.0
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < width:
                raise TraceFormatError(
                    f"{path}:{line}: the row has {len(row)} fields but the header names "
                    f"{len(header)}; every row needs a value for each column"
                )
            raw_arrival = row[i_arrival]
            try:
                arrival = float(raw_arrival)
            except ValueError:
                arrival = math.nan
            if not (math.isfinite(arrival) and arrival >= 0):
                raise _bad(path, line, "arrival_s", raw_arrival, "seconds as a number >= 0")
            if arrival < last_arrival:
                raise _bad(
                    path,
                    line,
                    "arrival_s",
                    raw_arrival,
                    f"a time >= the previous row's {last_arrival} (sort the trace by arrival_s)",
                )
            last_arrival = arrival
            requests.append(
                TraceRequest(
                    arrival_s=arrival,
                    adapter=row[i_adapter].strip(),
                    prompt_tokens=_parse_int(path, line, "prompt_tokens", row[i_prompt], 0),
                    output_tokens=_parse_int(path, line, "output_tokens", row[i_output], 1),
                    rank=(
                        _parse_int(path, line, "rank", row[i_rank], 0)
                        if i_rank is not None and row[i_rank].strip()
                        else 0
                    ),
                    tenant=row[i_tenant].strip() if i_tenant is not None else "",
                )
            )
    if not requests:
        raise TraceFormatError(f"{path}: the trace has a header but no requests")
    return requests


def write_trace(requests: Iterable[TraceRequest], path: Path | str) -> int:
    """Write ``requests`` as a trace CSV with all six columns; returns the row count."""
    count = 0
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(_COLUMNS)
        for request in requests:
            writer.writerow(
                (
                    f"{request.arrival_s:.6f}",
                    request.adapter,
                    request.prompt_tokens,
                    request.output_tokens,
                    request.rank,
                    request.tenant,
                )
            )
            count += 1
    return count


def adapter_key(tenant: str, index: int) -> str:
    """The adapter version key synthetic and converted traces use."""
    return f"{tenant}/adapter{index:05d}@1"


def _zipf_cumulative(count: int, alpha: float) -> list[float]:
    """Cumulative weights of a true Zipf law: P(i) proportional to 1 / i**alpha, i = 1..count."""
    return list(accumulate(1.0 / (i**alpha) for i in range(1, count + 1)))


def _lognormal_sampler(rng: random.Random, mean: float, cv: float, maximum: int, minimum: int):
    """Integers with the given mean and coefficient of variation (lognormal), clamped."""
    if cv <= 0:
        value = max(minimum, min(maximum, round(mean)))
        return lambda: value
    sigma = math.sqrt(math.log1p(cv * cv))
    mu = math.log(mean) - sigma * sigma / 2
    return lambda: max(minimum, min(maximum, round(rng.lognormvariate(mu, sigma))))


def _rank_choices(rank_mix: Mapping[int, float]) -> tuple[list[int], list[float]]:
    if not rank_mix or any(rank <= 0 or weight < 0 for rank, weight in rank_mix.items()):
        raise SynthSpecError(
            f"rank mix {dict(rank_mix)!r} is invalid; give positive ranks with non-negative "
            "weights, for example {8: 0.5, 16: 0.3, 64: 0.2}"
        )
    if sum(rank_mix.values()) <= 0:
        raise SynthSpecError(f"rank mix {dict(rank_mix)!r} has no positive weight")
    ranks = sorted(rank_mix)
    return ranks, list(accumulate(rank_mix[rank] for rank in ranks))


@dataclass(frozen=True, slots=True)
class _Population:
    """Adapters with Zipf popularity, their tenants and ranks; draws keys for requests."""

    keys: list[str]
    tenants: list[str]
    ranks: list[int]
    cumulative: list[float]

    @classmethod
    def build(
        cls,
        rng: random.Random,
        adapters: int,
        tenants: int,
        alpha: float,
        rank_mix: Mapping[int, float],
    ) -> _Population:
        if adapters < 1 or tenants < 1:
            raise SynthSpecError(
                f"adapters={adapters} and tenants={tenants} must both be at least 1"
            )
        if alpha < 0:
            raise SynthSpecError(f"zipf alpha={alpha} must be >= 0 (0 is uniform)")
        rank_values, rank_cumulative = _rank_choices(rank_mix)
        tenant_names = [f"tenant{i % tenants:04d}" for i in range(adapters)]
        return cls(
            keys=[adapter_key(tenant_names[i], i) for i in range(adapters)],
            tenants=tenant_names,
            ranks=rng.choices(rank_values, cum_weights=rank_cumulative, k=adapters),
            cumulative=_zipf_cumulative(adapters, alpha),
        )

    def draw(self, rng: random.Random) -> int:
        """The index of one adapter drawn by popularity (index 0 is the most popular)."""
        total = self.cumulative[-1]
        return min(bisect_left(self.cumulative, rng.random() * total), len(self.keys) - 1)


@dataclass(frozen=True, slots=True)
class SynthSpec:
    """A synthetic workload: Zipf popularity over adapters, Gamma inter-arrival times,
    and optionally popularity drift, flash crowds and tenant churn.

    Popularity rank ``r`` (0-based, 0 the most popular) is requested with probability
    proportional to ``1 / (r + 1) ** zipf_alpha``; at the start adapter ``i`` holds rank
    ``i`` and belongs to tenant ``i % tenants``; each adapter's rank (LoRA rank) is drawn
    once from ``rank_mix`` (rank -> weight). Inter-arrival times are Gamma with
    coefficient of variation ``arrival_cv`` (1 is Poisson, larger is burstier). Prompt
    and output lengths are lognormal with the given means and CVs, clamped to
    ``[1, max_tokens]``.

    ``rate_rps`` is the mean rate of the whole trace, flash crowds included: the steady
    stream runs at ``rate_rps / (1 + flash_intensity * flash_duration_s /
    flash_period_s)`` so that a target load stays the target load.

    * **Drift** (``drift_period_s > 0``): every ``drift_period_s`` seconds a share
      ``drift_fraction`` of the popularity ranks, drawn uniformly, trade adapters among
      themselves (a random permutation), so a cold adapter can take a hot rank and the
      hot one fall back.
    * **Flash crowds** (``flash_period_s > 0``): once per period, at a random offset, a
      window of ``flash_duration_s`` seconds in which ``flash_adapters`` adapters drawn
      uniformly from the whole population (so mostly cold ones) receive extra requests,
      Gamma arrivals of the same CV, at ``flash_intensity`` times the steady rate in
      total.
    * **Tenant churn** (``churn_period_s > 0``): every ``churn_period_s`` seconds a share
      ``churn_fraction`` of the tenants leave; each is replaced by a new tenant whose new
      adapters take the leaving tenant's popularity ranks (keys never seen before).

    The drift, flash and churn draws use their own random streams, so turning one on
    leaves the others' draws (and a spec without any of them) unchanged.
    """

    adapters: int = 1000
    tenants: int = 100
    zipf_alpha: float = 1.0
    arrival_cv: float = 1.0
    rate_rps: float = 50.0
    duration_s: float = 600.0
    rank_mix: Mapping[int, float] = field(default_factory=lambda: {8: 0.5, 16: 0.3, 64: 0.2})
    prompt_mean: float = 512.0
    prompt_cv: float = 1.0
    output_mean: float = 128.0
    output_cv: float = 1.0
    max_tokens: int = 4096
    base_model_fraction: float = 0.0
    drift_period_s: float = 0.0
    drift_fraction: float = 0.2
    flash_period_s: float = 0.0
    flash_duration_s: float = 60.0
    flash_intensity: float = 0.5
    flash_adapters: int = 1
    churn_period_s: float = 0.0
    churn_fraction: float = 0.1
    seed: int = 0

    @property
    def steady_rate_rps(self) -> float:
        """The rate of the steady stream, ``rate_rps`` less the flash crowds' share."""
        if not self.flash_period_s:
            return self.rate_rps
        busy = min(1.0, self.flash_duration_s / self.flash_period_s)
        return self.rate_rps / (1.0 + self.flash_intensity * busy)

    def validate(self) -> None:
        """Raise :class:`SynthSpecError` naming the first parameter out of range."""
        for name in ("rate_rps", "duration_s", "arrival_cv", "prompt_mean", "output_mean"):
            if not getattr(self, name) > 0:
                raise SynthSpecError(f"synthetic trace: {name}={getattr(self, name)!r} must be > 0")
        for name in ("drift_period_s", "flash_period_s", "churn_period_s", "flash_intensity"):
            if not getattr(self, name) >= 0:
                raise SynthSpecError(
                    f"synthetic trace: {name}={getattr(self, name)!r} must be >= 0 (0 turns it off)"
                )
        for name in ("base_model_fraction", "drift_fraction", "churn_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise SynthSpecError(
                    f"synthetic trace: {name}={getattr(self, name)!r} must be in [0, 1]"
                )
        if self.flash_period_s and not 0 < self.flash_duration_s <= self.flash_period_s:
            raise SynthSpecError(
                f"synthetic trace: flash_duration_s={self.flash_duration_s!r} must be in "
                f"(0, flash_period_s={self.flash_period_s!r}]"
            )
        if self.flash_period_s and not 1 <= self.flash_adapters <= self.adapters:
            raise SynthSpecError(
                f"synthetic trace: flash_adapters={self.flash_adapters!r} must be in "
                f"[1, adapters={self.adapters}]"
            )


class _Workload:
    """The popularity ranks' current adapters, changed by drift and churn as time passes."""

    def __init__(self, spec: SynthSpec, rng: random.Random) -> None:
        self.spec = spec
        population = _Population.build(
            rng, spec.adapters, spec.tenants, spec.zipf_alpha, spec.rank_mix
        )
        self.population = population
        self.keys = list(population.keys)
        self.tenants = list(population.tenants)
        self.ranks = list(population.ranks)
        self.by_rank = list(range(spec.adapters))  # popularity rank -> adapter index
        self._rank_values, self._rank_cumulative = _rank_choices(spec.rank_mix)
        self._drift_rng = random.Random(f"{spec.seed}:drift")
        self._churn_rng = random.Random(f"{spec.seed}:churn")
        self._next_drift = spec.drift_period_s or math.inf
        self._next_churn = spec.churn_period_s or math.inf
        self._next_tenant = spec.tenants

    def advance(self, now: float) -> None:
        """Apply every drift and churn epoch due at or before ``now``."""
        while self._next_drift <= now or self._next_churn <= now:
            if self._next_drift <= self._next_churn:
                self._drift()
                self._next_drift += self.spec.drift_period_s
            else:
                self._churn()
                self._next_churn += self.spec.churn_period_s

    def _drift(self) -> None:
        count = round(self.spec.drift_fraction * len(self.by_rank))
        positions = self._drift_rng.sample(range(len(self.by_rank)), count)
        moved = [self.by_rank[p] for p in positions]
        self._drift_rng.shuffle(moved)
        for position, adapter in zip(positions, moved, strict=True):
            self.by_rank[position] = adapter

    def _churn(self) -> None:
        current = sorted({self.tenants[a] for a in self.by_rank})
        leaving = set(
            self._churn_rng.sample(current, round(self.spec.churn_fraction * len(current)))
        )
        successor: dict[str, str] = {}
        for position, adapter in enumerate(self.by_rank):
            tenant = self.tenants[adapter]
            if tenant not in leaving:
                continue
            if tenant not in successor:
                successor[tenant] = f"tenant{self._next_tenant:04d}"
                self._next_tenant += 1
            new = len(self.keys)
            self.keys.append(adapter_key(successor[tenant], new))
            self.tenants.append(successor[tenant])
            self.ranks.append(
                self._churn_rng.choices(self._rank_values, cum_weights=self._rank_cumulative)[0]
            )
            self.by_rank[position] = new

    def request(self, adapter: int, now: float, prompt: int, output: int) -> TraceRequest:
        return TraceRequest(
            now, self.keys[adapter], prompt, output, self.ranks[adapter], self.tenants[adapter]
        )


def _flash_requests(spec: SynthSpec) -> list[tuple[float, int]]:
    """(arrival, popularity rank) of every flash-crowd request, in arrival order.

    The flash adapters are chosen by popularity rank and resolved to adapters at each
    arrival, so drift and churn apply to them as to everything else.
    """
    if not spec.flash_period_s or not spec.flash_intensity:
        return []
    rng = random.Random(f"{spec.seed}:flash")
    shape = 1.0 / (spec.arrival_cv**2)
    scale = 1.0 / (spec.steady_rate_rps * spec.flash_intensity * shape)
    out: list[tuple[float, int]] = []
    window = 0.0
    while window < spec.duration_s:
        start = window + rng.uniform(0.0, spec.flash_period_s - spec.flash_duration_s)
        end = min(start + spec.flash_duration_s, spec.duration_s)
        crowd = rng.sample(range(spec.adapters), spec.flash_adapters)
        now = start + rng.gammavariate(shape, scale)
        while now < end:
            out.append((now, rng.choice(crowd)))
            now += rng.gammavariate(shape, scale)
        window += spec.flash_period_s
    return out


def synthesize(spec: SynthSpec) -> list[TraceRequest]:
    """Generate the requests of ``spec``; deterministic under ``spec.seed``.

    Raises:
        SynthSpecError: a parameter out of range (the message names it).
    """
    spec.validate()
    rng = random.Random(spec.seed)
    workload = _Workload(spec, rng)
    population = workload.population
    prompt = _lognormal_sampler(rng, spec.prompt_mean, spec.prompt_cv, spec.max_tokens, 1)
    output = _lognormal_sampler(rng, spec.output_mean, spec.output_cv, spec.max_tokens, 1)
    flash = _flash_requests(spec)
    flash_rng = random.Random(f"{spec.seed}:flash-lengths")
    flash_prompt = _lognormal_sampler(
        flash_rng, spec.prompt_mean, spec.prompt_cv, spec.max_tokens, 1
    )
    flash_output = _lognormal_sampler(
        flash_rng, spec.output_mean, spec.output_cv, spec.max_tokens, 1
    )
    shape = 1.0 / (spec.arrival_cv**2)
    scale = 1.0 / (spec.steady_rate_rps * shape)
    requests: list[TraceRequest] = []
    next_flash = 0
    now = rng.gammavariate(shape, scale)
    while now < spec.duration_s:
        while next_flash < len(flash) and flash[next_flash][0] <= now:
            when, position = flash[next_flash]
            workload.advance(when)
            requests.append(
                workload.request(workload.by_rank[position], when, flash_prompt(), flash_output())
            )
            next_flash += 1
        workload.advance(now)
        if spec.base_model_fraction and rng.random() < spec.base_model_fraction:
            requests.append(TraceRequest(now, "", prompt(), output()))
        else:
            adapter = workload.by_rank[population.draw(rng)]
            requests.append(workload.request(adapter, now, prompt(), output()))
        now += rng.gammavariate(shape, scale)
    for when, position in flash[next_flash:]:
        workload.advance(when)
        requests.append(
            workload.request(workload.by_rank[position], when, flash_prompt(), flash_output())
        )
    return requests


def _azure_time(value: str) -> float:
    """Seconds since the epoch of an Azure trace timestamp (7 fractional digits)."""
    whole, _, fraction = value.strip().partition(".")
    seconds = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").timestamp()
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


def convert_azure(
    path: Path | str,
    *,
    adapters: int = 1000,
    tenants: int = 100,
    zipf_alpha: float = 1.0,
    rank_mix: Mapping[int, float] | None = None,
    speedup: float = 1.0,
    seed: int = 0,
) -> TraceConversion:
    """Convert an Azure LLM inference trace (2023, ``TIMESTAMP,ContextTokens,
    GeneratedTokens``): real arrival times (divided by ``speedup``) and token counts,
    adapters assigned by a Zipf(``zipf_alpha``) law over ``adapters`` adapters.

    Raises:
        TraceFormatError: a missing column or a value that does not parse.
        SynthSpecError: ``speedup`` not positive, or a population parameter (adapters,
            tenants, ``zipf_alpha``, ``rank_mix``) out of range.
    """
    if not speedup > 0:
        raise SynthSpecError(f"speedup={speedup!r} must be > 0")
    rng = random.Random(seed)
    population = _Population.build(
        rng, adapters, tenants, zipf_alpha, rank_mix or {8: 0.5, 16: 0.3, 64: 0.2}
    )
    rows: list[tuple[float, int, int]] = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        needed = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
        missing = [name for name in needed if name not in (reader.fieldnames or ())]
        if missing:
            raise TraceFormatError(
                f"{path}:1: not an Azure LLM trace; missing column(s) {', '.join(missing)}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                when = _azure_time(row["TIMESTAMP"])
            except ValueError:
                raise _bad(
                    path, line, "TIMESTAMP", row["TIMESTAMP"], "'YYYY-MM-DD HH:MM:SS.fffffff'"
                ) from None
            prompt = _parse_int(path, line, "ContextTokens", row["ContextTokens"], 0)
            generated = _parse_int(path, line, "GeneratedTokens", row["GeneratedTokens"], 0)
            rows.append((when, prompt, max(1, generated)))
    if not rows:
        raise TraceFormatError(f"{path}: the Azure trace has no rows")
    rows.sort(key=lambda row: row[0])
    start = rows[0][0]
    requests = []
    for when, prompt, generated in rows:
        i = population.draw(rng)
        requests.append(
            TraceRequest(
                (when - start) / speedup,
                population.keys[i],
                prompt,
                generated,
                population.ranks[i],
                population.tenants[i],
            )
        )
    description = (
        f"{Path(path).name}: {len(requests)} real arrivals and token counts"
        + (f", time divided by {speedup:g}" if speedup != 1 else "")
        + f"; adapters drawn from Zipf(alpha={zipf_alpha:g}) over {adapters} adapters "
        f"({tenants} tenants), seed {seed}"
    )
    return TraceConversion(requests, description, speedup)


def convert_alibaba(
    path: Path | str,
    *,
    target_rps: float = 20.0,
    rank: int = 0,
) -> TraceConversion:
    """Convert the Alibaba GenAI 2026 LoRA request trace: one adapter per real tenant.

    Each ``groupId`` becomes the tenant and its one adapter (``<groupId>/adapter00000@1``),
    so the trace's real tenant popularity is kept. Timestamps have one-second resolution:
    requests sharing a second are spread evenly over it, then time is compressed by the
    factor that makes the mean rate ``target_rps`` (reported in the result). The trace is
    image generation, so ``prompt_tokens`` is ``prompt_length`` and ``output_tokens`` is
    ``num_inference_steps`` (one denoising step is one forward pass, like one decode
    step); missing values count as 0 and 30 steps. Every row is kept, whatever its
    ``num_lora`` or status, since each one was a request the tenant sent.

    Raises:
        TraceFormatError: a missing column, a bad value, or fewer than two distinct seconds.
        SynthSpecError: ``target_rps`` not positive.
    """
    if not target_rps > 0:
        raise SynthSpecError(f"target_rps={target_rps!r} must be > 0")
    rows: list[tuple[float, str, int, int]] = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        needed = ("gmt_create", "groupId", "prompt_length", "num_inference_steps")
        missing = [name for name in needed if name not in (reader.fieldnames or ())]
        if missing:
            raise TraceFormatError(
                f"{path}:1: not an Alibaba GenAI request trace; missing column(s) "
                f"{', '.join(missing)}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                when = datetime.strptime(row["gmt_create"].strip(), "%Y-%m-%d %H:%M:%S")
            except ValueError:
                raise _bad(
                    path, line, "gmt_create", row["gmt_create"], "'YYYY-MM-DD HH:MM:SS'"
                ) from None
            group = row["groupId"].strip()
            if not group:
                raise _bad(path, line, "groupId", row["groupId"], "a tenant id such as G0001")
            try:
                prompt = round(float(row["prompt_length"] or 0))
                steps = round(float(row["num_inference_steps"] or 30))
            except ValueError:
                raise _bad(
                    path,
                    line,
                    "prompt_length/num_inference_steps",
                    f"{row['prompt_length']}/{row['num_inference_steps']}",
                    "numbers",
                ) from None
            rows.append((when.timestamp(), group, max(0, prompt), max(1, steps)))
    rows.sort(key=lambda row: row[0])
    times = _spread_within_seconds([row[0] for row in rows])
    span = times[-1] - times[0]
    if len(rows) < 2 or span <= 0:
        raise TraceFormatError(f"{path}: the trace needs rows in at least two distinct seconds")
    native_rps = len(rows) / span
    compression = target_rps / native_rps
    start = times[0]
    requests = [
        TraceRequest(
            (when - start) / compression, adapter_key(group, 0), prompt, steps, rank, group
        )
        for when, (_, group, prompt, steps) in zip(times, rows, strict=True)
    ]
    description = (
        f"{Path(path).name}: {len(requests)} requests from "
        f"{len({row[1] for row in rows})} real tenants (one adapter each), "
        f"{span / 86400:.1f} days compressed {compression:,.0f}x to {target_rps:g} req/s"
    )
    return TraceConversion(requests, description, compression)


def _spread_within_seconds(times: Sequence[float]) -> list[float]:
    """Sorted one-second-resolution times with each second's ``n`` requests at ``j / n``."""
    spread: list[float] = []
    start = 0
    while start < len(times):
        end = start
        while end < len(times) and times[end] == times[start]:
            end += 1
        count = end - start
        spread.extend(times[start] + j / count for j in range(count))
        start = end
    return spread
