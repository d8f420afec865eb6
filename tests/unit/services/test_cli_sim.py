"""``loramux sim`` and ``loramux trace``: the commands wire the simulator and the traces."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from services.cli import app

runner = CliRunner()

_JSON_KEYS = {
    "policy", "requests", "gpu_hit_rate", "host_hit_rate", "disk_hit_rate", "cold_loads",
    "s3_bytes", "ttft_p50_s", "ttft_p99_s", "latency_p50_s", "latency_p99_s",
    "throughput_rps", "load_imbalance", "bound_gpu_hit_rate",
}  # fmt: skip


def synth(tmp_path: Path, *, rate: int, seed: int) -> Path:
    """A 5 s trace over 30 rank-8 adapters, written by ``loramux trace synth``."""
    trace = tmp_path / "t.csv"
    made = runner.invoke(
        app,
        ["trace", "synth", "--adapters", "30", "--rate", str(rate), "--duration", "5",
         "--rank-mix", "8:1", "--seed", str(seed), "--out", str(trace)],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "wrote" in made.output and trace.exists()
    return trace


def test_synth_then_sim_prints_the_documented_json(tmp_path: Path) -> None:
    trace = synth(tmp_path, rate=20, seed=2)
    ran = runner.invoke(
        app,
        ["sim", "--trace", str(trace), "--policy", "least_loaded", "--replicas", "2",
         "--gpu-slots", "2", "--profile", "cpu", "--bound", "--json"],
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    result = json.loads(ran.output)
    assert set(result) >= _JSON_KEYS
    assert result["policy"] == "least_loaded" and result["requests"] > 0
    assert 0 <= result["gpu_hit_rate"] <= 1


def test_sim_models_a_router_that_reads_fresh_loads_but_reported_residency(
    tmp_path: Path,
) -> None:
    trace = synth(tmp_path, rate=40, seed=3)
    results = {}
    for extra in ([], ["--exact-load", "--no-optimistic-views"]):
        ran = runner.invoke(
            app,
            ["sim", "--trace", str(trace), "--policy", "ray_multiplex", "--replicas", "3",
             "--gpu-slots", "2", "--profile", "cpu", "--view-refresh-ms", "500", "--json",
             *extra],
        )  # fmt: skip
        assert ran.exit_code == 0, ran.output
        results[bool(extra)] = json.loads(ran.output)
    # The options reach the simulator: the same trace places differently.
    assert results[True] != results[False]


def test_sim_reports_bad_input_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,adapter,prompt_tokens,output_tokens\n0,a,x,1\n")
    result = runner.invoke(app, ["sim", "--trace", str(bad), "--json"])
    assert result.exit_code == 2
    assert "bad.csv:2: column 'prompt_tokens'" in result.output
    good = tmp_path / "good.csv"
    good.write_text("arrival_s,adapter,prompt_tokens,output_tokens\n0,a,1,1\n")
    result = runner.invoke(app, ["sim", "--trace", str(good), "--policy", "nope"])
    assert result.exit_code == 2 and "known policies" in result.output
    result = runner.invoke(app, ["sim", "--trace", str(good), "--policy-option", "epsilon"])
    assert result.exit_code != 0 and "NAME=VALUE" in result.output


def test_trace_azure_converts_a_file(tmp_path: Path) -> None:
    source = tmp_path / "azure.csv"
    source.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
    )
    out = tmp_path / "out.csv"
    result = runner.invoke(
        app, ["trace", "azure", str(source), "--adapters", "5", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "2 real arrivals" in result.output
    assert out.read_text().startswith("arrival_s,adapter,prompt_tokens,output_tokens,rank,tenant")


def test_synth_at_a_target_load_with_drift_and_flash_crowds(tmp_path: Path) -> None:
    from scheduler import cost_profile

    trace = tmp_path / "t.csv"
    made = runner.invoke(
        app,
        ["trace", "synth", "--adapters", "50", "--load", "0.5", "--replicas", "2",
         "--profile", "cpu", "--duration", "2", "--drift-period", "1", "--flash-period",
         "1", "--flash-duration", "0.5", "--churn-period", "1", "--seed", "2",
         "--out", str(trace)],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    expected = 0.5 * 2 * cost_profile("cpu").replica_capacity_rps(512, 128)
    assert f"({expected:.3g} req/s)" in made.output
    bad = runner.invoke(app, ["trace", "synth", "--load", "0", "--out", str(trace)])
    assert bad.exit_code == 2 and "--load" in bad.output


def test_sim_sizes_the_policy_to_the_profiles_batch(tmp_path: Path) -> None:
    trace = synth(tmp_path, rate=100, seed=4)
    results = {}
    for extra in (
        [],
        ["--policy-option", "holder_floor=32"],
        ["--policy-option", "holder_floor=1"],
    ):
        ran = runner.invoke(
            app,
            ["sim", "--trace", str(trace), "--policy", "adaptive", "--replicas", "3",
             "--gpu-slots", "8", "--profile", "cpu", "--json", *extra],
        )  # fmt: skip
        assert ran.exit_code == 0, ran.output
        results[" ".join(extra)] = json.loads(ran.output)
    # The cpu profile batches 32: the default is holder_floor=32, and an option overrides it.
    assert results[""] == results["--policy-option holder_floor=32"]
    assert results[""] != results["--policy-option holder_floor=1"]
