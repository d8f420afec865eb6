"""Run every placement policy on the goal grid and the real traces; write the results table.

The grid (issue "Cache-aware scheduler", Goals): synthetic traces with Zipf alpha in
{0.8, 1.0, 1.2} and inter-arrival CV in {1, 3}, each at 1,000 adapters on 8 replicas and
at 5,000 adapters on 32 replicas; then the Azure conversation and code traces (Zipf 1.0
over 1,000 adapters) and the Alibaba GenAI trace (one adapter per real tenant). Every
policy of ``scheduler.POLICY_NAMES`` replays the same trace with the ``a100-7b`` profile,
16 GPU slots, 16 GiB host and 128 GiB disk cache per replica, and the pooled Belady bound.

Prints one JSON object per run and writes the table between the ``results`` markers of
``docs/scheduler-results.md`` (the prose around them is kept). Takes a few minutes::

    python -m benchmarks.sim_results                   # 20,000 requests per synthetic run
    python -m benchmarks.sim_results --requests 5000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scheduler import (
    POLICY_NAMES,
    SimConfig,
    SimResult,
    SynthSpec,
    TraceRequest,
    convert_alibaba,
    convert_azure,
    cost_profile,
    make_policy,
    simulate,
    synthesize,
)

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces"
DOC = ROOT / "docs" / "scheduler-results.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

PROFILE = "a100-7b"
GPU_SLOTS = 16
RATE_PER_REPLICA = 4.0  # ~60% of an a100-7b replica's throughput at these lengths


@dataclass(frozen=True)
class Scenario:
    name: str
    replicas: int
    build: Callable[[], tuple[list[TraceRequest], str]]


def _synthetic(alpha: float, cv: float, adapters: int, replicas: int, requests: int) -> Scenario:
    rate = RATE_PER_REPLICA * replicas
    spec = SynthSpec(
        adapters=adapters, tenants=adapters // 10, zipf_alpha=alpha, arrival_cv=cv,
        rate_rps=rate, duration_s=requests / rate, seed=1,
    )  # fmt: skip

    def build() -> tuple[list[TraceRequest], str]:
        return synthesize(spec), (
            f"synthetic: Zipf {alpha} over {adapters} adapters, Gamma arrivals CV {cv} at "
            f"{rate:g} req/s, prompt 512 / output 128 tokens mean (lognormal, CV 1), "
            "ranks 8/16/64 at 50/30/20%"
        )

    return Scenario(f"zipf{alpha}-cv{cv}-{adapters}a-{replicas}r", replicas, build)


def _azure(kind: str, speedup: float, replicas: int) -> Scenario:
    def build() -> tuple[list[TraceRequest], str]:
        converted = convert_azure(
            TRACES / f"azure_llm_2023_{kind}.csv",
            adapters=1000, tenants=100, zipf_alpha=1.0, speedup=speedup, seed=1,
        )  # fmt: skip
        return converted.requests, converted.description

    return Scenario(f"azure-{kind}-x{speedup:g}-{replicas}r", replicas, build)


def _alibaba(rate: float, replicas: int) -> Scenario:
    def build() -> tuple[list[TraceRequest], str]:
        converted = convert_alibaba(
            TRACES / "alibaba_genai_2026_lora_requests.csv", target_rps=rate
        )
        return converted.requests, converted.description

    return Scenario(f"alibaba-{rate:g}rps-{replicas}r", replicas, build)


def scenarios(requests: int) -> list[Scenario]:
    grid = [
        _synthetic(alpha, cv, adapters, replicas, requests)
        for adapters, replicas in ((1000, 8), (5000, 32))
        for alpha in (0.8, 1.0, 1.2)
        for cv in (1.0, 3.0)
    ]
    # Real traces at ~60% load too: the Azure traces are sped up (their native rates are
    # 5.5 and 2.5 req/s with long prompts), the Alibaba trace compressed to a target rate.
    return [*grid, _azure("conv", 3.0, 8), _azure("code", 4.0, 8), _alibaba(32.0, 8)]


def run(scenario: Scenario, trace: list[TraceRequest]) -> list[SimResult]:
    config = SimConfig(
        replicas=scenario.replicas, gpu_slots=GPU_SLOTS, profile=cost_profile(PROFILE), bound=True
    )
    return [simulate(trace, make_policy(name, seed=1), config) for name in POLICY_NAMES]


def staleness(requests: int) -> tuple[str, list[tuple[float, SimResult]]]:
    """cache_aware on one bursty scenario with router views refreshed every 0/100/1000 ms."""
    scenario = _synthetic(1.0, 3.0, 1000, 8, requests)
    trace, _ = scenario.build()
    out = []
    for refresh in (0.0, 0.1, 1.0):
        config = SimConfig(
            replicas=scenario.replicas, gpu_slots=GPU_SLOTS, profile=cost_profile(PROFILE),
            view_refresh_s=refresh, bound=True,
        )  # fmt: skip
        out.append((refresh, simulate(trace, make_policy("cache_aware", seed=1), config)))
    return scenario.name, out


def render_staleness(name: str, runs: list[tuple[float, SimResult]]) -> str:
    lines = [
        "",
        f"### Stale router views (cache_aware, `{name}`)",
        "",
        "| view refresh | GPU hit | loading | TTFT p99 s | latency p99 s | imbalance | "
        "occupancy imb. |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for refresh, r in runs:
        label = "exact" if not refresh else f"{refresh * 1000:g} ms"
        lines.append(
            f"| {label} | {r.gpu_hit_rate:.3f} | {r.loading_hit_rate:.3f} | "
            f"{r.ttft_p99_s:.2f} | {r.latency_p99_s:.1f} | {r.load_imbalance:.2f} | "
            f"{r.occupancy_imbalance:.2f} |"
        )
    return "\n".join(lines)


def _goals(results: dict[str, SimResult]) -> list[str]:
    """The goals for cache_aware in one scenario, each 'met' or by how much missed.

    Five columns: the issue's four, plus occupancy imbalance <= 1.3 as the stricter
    reading of the load goal. A missed TTFT goal says when half of ray_multiplex's p99
    is below cache_aware's own p99 over GPU hits (no load to wait for), where no
    placement of these requests could meet it.
    """
    ours, ray = results.get("cache_aware"), results.get("ray_multiplex")
    if ours is None or ray is None:
        return ["n/a"] * 5
    bound = ours.bound_gpu_hit_rate or 0.0
    ttft_ratio = ray.ttft_p99_s / ours.ttft_p99_s if ours.ttft_p99_s > 0 else float("inf")
    ttft_detail = f"{ttft_ratio:.2f}x"
    if ttft_ratio < 2.0 and ray.ttft_p99_s / 2 < ours.ttft_p99_gpu_hit_s:
        ttft_detail += f" (target {ray.ttft_p99_s / 2:.2f} s < our GPU-hit p99 {ours.ttft_p99_gpu_hit_s:.2f} s)"
    checks = [
        (ours.gpu_hit_rate > ray.gpu_hit_rate, f"{ours.gpu_hit_rate - ray.gpu_hit_rate:+.3f}"),
        (ttft_ratio >= 2.0, ttft_detail),
        (ours.load_imbalance <= 1.3, f"{ours.load_imbalance:.2f}"),
        (ours.gpu_hit_rate >= 0.8 * bound, f"{ours.gpu_hit_rate / bound:.2f} of bound"),
        (ours.occupancy_imbalance <= 1.3, f"{ours.occupancy_imbalance:.2f}"),
    ]
    return [("met " if ok else "**missed** ") + detail for ok, detail in checks]


def render(rows: list[tuple[Scenario, str, list[SimResult], float]]) -> str:
    lines = [
        "### All runs",
        "",
        "| scenario | policy | GPU hit | bound | hit/bound | host hit | cold loads | "
        "TTFT p50 s | TTFT p99 s | GPU-hit TTFT p99 s | latency p99 s | imbalance | "
        "occupancy imb. | deferred |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, _, results, _ in rows:
        for r in results:
            bound = r.bound_gpu_hit_rate or 0.0
            lines.append(
                f"| {scenario.name} | {r.policy} | {r.gpu_hit_rate:.3f} | {bound:.3f} | "
                f"{r.gpu_hit_rate / bound if bound else 0:.2f} | {r.host_hit_rate:.3f} | "
                f"{r.cold_loads} | {r.ttft_p50_s:.3f} | {r.ttft_p99_s:.2f} | "
                f"{r.ttft_p99_gpu_hit_s:.2f} | {r.latency_p99_s:.1f} | "
                f"{r.load_imbalance:.2f} | {r.occupancy_imbalance:.2f} | {r.deferred_loads} |"
            )
    lines += [
        "",
        "### Goals for cache_aware, per scenario",
        "",
        "| scenario | requests | GPU hit vs ray_multiplex | ray p99 TTFT / ours (>= 2x) | "
        "load_imbalance (<= 1.3) | hit / bound (>= 0.8) | occupancy imb. (<= 1.3, "
        "stricter) |",
        "|---|---:|---|---|---|---|---|",
    ]
    for scenario, _, results, _ in rows:
        by_name = {r.policy: r for r in results}
        goals = " | ".join(_goals(by_name))
        lines.append(f"| {scenario.name} | {results[0].requests} | {goals} |")
    lines += ["", "### Traces", ""]
    for scenario, description, _, seconds in rows:
        lines.append(f"- `{scenario.name}`: {description} (all policies: {seconds:.0f} s)")
    return "\n".join(lines)


def write_doc(table: str, header: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Scheduler results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    DOC.write_text(f"{before}{BEGIN}\n{header}\n\n{table}\n{END}{after}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="per synthetic run")
    parser.add_argument("--only", default="", help="run scenarios whose name contains this")
    parser.add_argument("--no-doc", action="store_true", help="print JSON lines only")
    args = parser.parse_args(argv)
    rows = []
    for scenario in scenarios(args.requests):
        if args.only not in scenario.name:
            continue
        started = time.perf_counter()
        trace, description = scenario.build()
        results = run(scenario, trace)
        seconds = time.perf_counter() - started
        for result in results:
            print(json.dumps({"scenario": scenario.name, **result.to_json()}), flush=True)
        rows.append((scenario, description, results, seconds))
    stale_name, stale_runs = staleness(args.requests)
    for refresh, result in stale_runs:
        print(json.dumps({"scenario": stale_name, "view_refresh_s": refresh, **result.to_json()}))
    if not args.no_doc:
        header = (
            f"Generated by `python -m benchmarks.sim_results --requests {args.requests}` on "
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}: profile `{PROFILE}`, {GPU_SLOTS} GPU "
            "slots, 16 GiB host and 128 GiB disk cache per replica, policy seed 1, exact "
            "views, cold caches at the start."
        )
        write_doc(render(rows) + "\n" + render_staleness(stale_name, stale_runs), header)
        print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
