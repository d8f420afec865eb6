"""``loramux sim`` and ``loramux trace``: replay traces against placement policies.

``sim`` runs the discrete-event simulator (:func:`scheduler.simulate`) on a trace CSV;
``trace synth|azure|alibaba`` writes trace CSVs. Scheduler imports happen inside the
commands so ``loramux --help`` stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

_DEFAULT_RANK_MIX = "8:0.5,16:0.3,64:0.2"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def _parse_rank_mix(text: str) -> dict[int, float]:
    """``"8:0.5,16:0.5"`` -> ``{8: 0.5, 16: 0.5}``."""
    mix: dict[int, float] = {}
    try:
        for part in text.split(","):
            rank, _, weight = part.partition(":")
            mix[int(rank)] = float(weight or 1)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a rank mix; write RANK:WEIGHT pairs, e.g. {_DEFAULT_RANK_MIX}"
        ) from None
    return mix


def _parse_options(pairs: list[str]) -> dict[str, object]:
    """``["epsilon=0.1", "mode=x"]`` -> ``{"epsilon": 0.1, "mode": "x"}`` (numbers parsed)."""
    options: dict[str, object] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--policy-option")
        value: object = raw
        for convert in (int, float):
            try:
                value = convert(raw)
                break
            except ValueError:
                continue
        options[name] = value
    return options


def sim(
    trace: Annotated[
        Path, typer.Option(help="Trace CSV: arrival_s,adapter,prompt_tokens,output_tokens.")
    ],
    policy: Annotated[str, typer.Option(help="Placement policy name.")] = "adaptive",
    replicas: Annotated[int, typer.Option(min=1, help="Number of replicas.")] = 8,
    gpu_slots: Annotated[int, typer.Option(min=1, help="GPU adapter slots per replica.")] = 8,
    host_cache_mb: Annotated[float, typer.Option(min=0, help="Host cache per replica.")] = 16384,
    disk_cache_mb: Annotated[float, typer.Option(min=0, help="Disk cache per replica.")] = 131072,
    profile: Annotated[str, typer.Option(help="Cost profile: a100-7b or cpu.")] = "a100-7b",
    view_refresh_ms: Annotated[
        float, typer.Option(min=0, help="Refresh the router's views every N ms (0: exact).")
    ] = 0.0,
    exact_load: Annotated[
        bool,
        typer.Option(
            help="With refreshed views, still read queue lengths at every decision "
            "(as Ray's queue-length cache does)."
        ),
    ] = False,
    optimistic_views: Annotated[
        bool,
        typer.Option(
            help="With refreshed views, mark each placement in the view until the next "
            "report (loramux's router does; Ray's multiplexed routing does not)."
        ),
    ] = True,
    policy_option: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=VALUE passed to the policy; repeatable. holder_floor defaults to "
            "the profile's batch size up to 32, as the services router sets it from the "
            "replicas'."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the policy's random choices.")] = 0,
    bound: Annotated[bool, typer.Option(help="Also compute the pooled Belady bound.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Replay a trace on simulated replicas with one placement policy."""
    from scheduler import SchedulerError
    from scheduler import SimConfig
    from scheduler import batch_options
    from scheduler import cost_profile
    from scheduler import make_policy
    from scheduler import read_trace
    from scheduler import simulate as run_simulation

    try:
        requests = read_trace(trace)
        costs = cost_profile(profile)
        # Sized to the profile's batch as the services router sizes it to the replicas'.
        options = {**batch_options(policy, costs.max_batch), **_parse_options(policy_option or [])}
        chosen = make_policy(policy, seed=seed, **options)
        config = SimConfig(
            replicas=replicas,
            gpu_slots=gpu_slots,
            profile=costs,
            host_cache_mb=host_cache_mb,
            disk_cache_mb=disk_cache_mb,
            view_refresh_s=view_refresh_ms / 1000,
            exact_load=exact_load,
            optimistic_views=optimistic_views,
            bound=bound,
        )
        if as_json:
            result = run_simulation(requests, chosen, config)
        else:
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task(f"simulating {policy}", total=len(requests))
                result = run_simulation(
                    requests, chosen, config, progress=lambda done: bar.update(task, completed=done)
                )
    except SchedulerError as exc:
        raise _fail(str(exc.args[0] if exc.args else exc)) from None
    except OSError as exc:
        raise _fail(f"cannot read {trace}: {exc.strerror or exc}") from None
    summary = result.to_json()
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{policy} on {replicas} x {gpu_slots} slots ({profile})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in summary.items():
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)


def trace_synth(
    out: Annotated[Path, typer.Option(help="Where to write the trace CSV.")],
    adapters: Annotated[int, typer.Option(min=1)] = 1000,
    tenants: Annotated[int, typer.Option(min=1)] = 100,
    zipf_alpha: Annotated[float, typer.Option(min=0, help="P(i) ~ 1/i^alpha.")] = 1.0,
    cv: Annotated[float, typer.Option(help="Inter-arrival CV (Gamma; 1 = Poisson).")] = 1.0,
    rate: Annotated[float, typer.Option(help="Mean requests per second.")] = 50.0,
    load: Annotated[
        float | None,
        typer.Option(
            help="Instead of --rate: this fraction of the capacity of --replicas replicas "
            "of --profile with full batches (1.0 = saturated)."
        ),
    ] = None,
    replicas: Annotated[int, typer.Option(min=1, help="Replicas, for --load.")] = 8,
    profile: Annotated[str, typer.Option(help="Cost profile, for --load.")] = "a100-7b",
    duration: Annotated[float, typer.Option(help="Seconds of trace.")] = 600.0,
    rank_mix: Annotated[str, typer.Option(help="RANK:WEIGHT,...")] = _DEFAULT_RANK_MIX,
    prompt_mean: Annotated[float, typer.Option()] = 512.0,
    prompt_cv: Annotated[float, typer.Option(min=0)] = 1.0,
    output_mean: Annotated[float, typer.Option()] = 128.0,
    output_cv: Annotated[float, typer.Option(min=0)] = 1.0,
    max_tokens: Annotated[int, typer.Option(min=1)] = 4096,
    base_fraction: Annotated[float, typer.Option(help="Share of base-model-only requests.")] = 0.0,
    drift_period: Annotated[
        float, typer.Option(help="Re-rank popularity every N seconds (0: never).")
    ] = 0.0,
    drift_fraction: Annotated[float, typer.Option(help="Share of ranks re-ranked.")] = 0.2,
    flash_period: Annotated[
        float, typer.Option(help="One flash crowd every N seconds (0: none).")
    ] = 0.0,
    flash_duration: Annotated[float, typer.Option(help="Seconds a flash crowd lasts.")] = 60.0,
    flash_intensity: Annotated[
        float, typer.Option(help="A flash crowd's extra rate, as a multiple of the steady rate.")
    ] = 0.5,
    flash_adapters: Annotated[int, typer.Option(help="Adapters in each flash crowd.")] = 1,
    churn_period: Annotated[
        float, typer.Option(help="Replace a share of the tenants every N seconds (0: never).")
    ] = 0.0,
    churn_fraction: Annotated[float, typer.Option(help="Share of tenants replaced.")] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a synthetic trace: Zipf adapter popularity, Gamma arrivals, lognormal lengths,
    optionally with popularity drift, flash crowds and tenant churn."""
    from scheduler import SchedulerError
    from scheduler import SynthSpec
    from scheduler import cost_profile
    from scheduler import synthesize
    from scheduler import write_trace

    try:
        if load is not None:
            if not load > 0:
                raise _fail(f"--load {load!r} must be > 0 (a fraction of capacity, e.g. 0.8)")
            capacity = cost_profile(profile).replica_capacity_rps(prompt_mean, output_mean)
            rate = load * capacity * replicas
        spec = SynthSpec(
            adapters=adapters, tenants=tenants, zipf_alpha=zipf_alpha, arrival_cv=cv,
            rate_rps=rate, duration_s=duration, rank_mix=_parse_rank_mix(rank_mix),
            prompt_mean=prompt_mean, prompt_cv=prompt_cv, output_mean=output_mean,
            output_cv=output_cv, max_tokens=max_tokens, base_model_fraction=base_fraction,
            drift_period_s=drift_period, drift_fraction=drift_fraction,
            flash_period_s=flash_period, flash_duration_s=flash_duration,
            flash_intensity=flash_intensity, flash_adapters=flash_adapters,
            churn_period_s=churn_period, churn_fraction=churn_fraction, seed=seed,
        )  # fmt: skip
        count = write_trace(synthesize(spec), out)
    except SchedulerError as exc:
        raise _fail(str(exc.args[0] if exc.args else exc)) from None
    typer.echo(f"wrote {count} requests to {out} ({rate:.3g} req/s)")


def trace_azure(
    source: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Azure CSV.")],
    out: Annotated[Path, typer.Option(help="Where to write the trace CSV.")],
    adapters: Annotated[int, typer.Option(min=1)] = 1000,
    tenants: Annotated[int, typer.Option(min=1)] = 100,
    zipf_alpha: Annotated[float, typer.Option(min=0)] = 1.0,
    rank_mix: Annotated[str, typer.Option(help="RANK:WEIGHT,...")] = _DEFAULT_RANK_MIX,
    speedup: Annotated[float, typer.Option(help="Divide arrival times by this.")] = 1.0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Convert an Azure LLM 2023 trace; adapters are assigned by a Zipf law."""
    from scheduler import SchedulerError
    from scheduler import convert_azure
    from scheduler import write_trace

    try:
        converted = convert_azure(
            source, adapters=adapters, tenants=tenants, zipf_alpha=zipf_alpha,
            rank_mix=_parse_rank_mix(rank_mix), speedup=speedup, seed=seed,
        )  # fmt: skip
    except SchedulerError as exc:
        raise _fail(str(exc)) from None
    write_trace(converted.requests, out)
    typer.echo(f"wrote {out}: {converted.description}")


def trace_alibaba(
    source: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Alibaba CSV.")],
    out: Annotated[Path, typer.Option(help="Where to write the trace CSV.")],
    rate: Annotated[float, typer.Option(help="Target mean requests per second.")] = 20.0,
    rank: Annotated[int, typer.Option(min=0, help="Adapter rank (0: profile default).")] = 0,
) -> None:
    """Convert the Alibaba GenAI 2026 LoRA trace: one adapter per tenant, time compressed."""
    from scheduler import SchedulerError
    from scheduler import convert_alibaba
    from scheduler import write_trace

    try:
        converted = convert_alibaba(source, target_rps=rate, rank=rank)
    except SchedulerError as exc:
        raise _fail(str(exc)) from None
    write_trace(converted.requests, out)
    typer.echo(f"wrote {out}: {converted.description}")


def register(app: typer.Typer) -> None:
    """Add ``sim`` and the ``trace`` group to the ``loramux`` app."""
    app.command("sim")(sim)
    trace_app = typer.Typer(help="Make request traces for `loramux sim`.", no_args_is_help=True)
    trace_app.command("synth")(trace_synth)
    trace_app.command("azure")(trace_azure)
    trace_app.command("alibaba")(trace_alibaba)
    app.add_typer(trace_app, name="trace")
