"""Trace CSV reading and validation, the synthetic generator and the trace converters."""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from pathlib import Path

import pytest

from scheduler import SynthSpec
from scheduler import SynthSpecError
from scheduler import TraceFormatError
from scheduler import TraceRequest
from scheduler import convert_alibaba
from scheduler import convert_azure
from scheduler import read_trace
from scheduler import synthesize
from scheduler import write_trace


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    rows = [
        TraceRequest(0.0, "t1/a@1", 10, 5, 16, "t1"),
        TraceRequest(0.5, "", 3, 1, 0, ""),
        TraceRequest(0.5, "t2/b@3", 0, 7, 8, "t2"),
    ]
    path = tmp_path / "trace.csv"
    assert write_trace(rows, path) == 3
    assert read_trace(path) == rows


def test_optional_columns_may_be_absent_and_extra_ones_are_ignored(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "t.csv",
        "output_tokens,adapter,note,arrival_s,prompt_tokens\n4,x@1,hello,1.5,9\n",
    )
    assert read_trace(path) == [TraceRequest(1.5, "x@1", 9, 4, 0, "")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", r"empty"),
        ("arrival_s,adapter,prompt_tokens\n", r":1: .*output_tokens"),
        ("arrival_s,adapter,prompt_tokens,output_tokens\n", r"no requests"),
        ("arrival_s,adapter,prompt_tokens,output_tokens\nsoon,a,1,1\n", r":2: column 'arrival_s'"),
        ("arrival_s,adapter,prompt_tokens,output_tokens\n-1,a,1,1\n", r":2: column 'arrival_s'"),
        (
            "arrival_s,adapter,prompt_tokens,output_tokens\n0,a,1.5,1\n",
            r":2: column 'prompt_tokens'",
        ),
        (
            "arrival_s,adapter,prompt_tokens,output_tokens\n0,a,1,0\n",
            r":2: column 'output_tokens'.*>= 1",
        ),
        ("arrival_s,adapter,prompt_tokens,output_tokens,rank\n0,a,1,1,-8\n", r":2: column 'rank'"),
        ("arrival_s,adapter,prompt_tokens,output_tokens\n0,a,1\n", r":2: the row has 3 fields"),
        (
            "arrival_s,adapter,prompt_tokens,output_tokens\n2,a,1,1\n1,a,1,1\n",
            r":3: column 'arrival_s'.*sort the trace",
        ),
    ],
)
def test_bad_traces_name_the_line_and_column(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(TraceFormatError, match=expected):
        read_trace(path)


def test_synthesize_is_deterministic_and_follows_the_spec() -> None:
    spec = SynthSpec(
        adapters=50, tenants=5, zipf_alpha=1.0, arrival_cv=3.0, rate_rps=200.0,
        duration_s=100.0, rank_mix={8: 1.0}, prompt_mean=100, output_mean=20, seed=7,
    )  # fmt: skip
    rows = synthesize(spec)
    assert rows == synthesize(spec)
    assert rows != synthesize(dataclasses.replace(spec, seed=8))
    assert abs(len(rows) / 100.0 - 200.0) < 40  # the mean rate, within a few sigma
    gaps = [b.arrival_s - a.arrival_s for a, b in itertools.pairwise(rows)]
    assert 2.0 < statistics.pstdev(gaps) / statistics.fmean(gaps) < 4.0
    assert all(row.rank == 8 and row.adapter.startswith(row.tenant + "/") for row in rows)
    assert len({row.tenant for row in rows}) == 5
    # True Zipf: the most popular adapter gets 1 / H(50) of requests (H(50) = 4.499).
    top = sum(row.adapter == "tenant0000/adapter00000@1" for row in rows) / len(rows)
    assert top == pytest.approx(1 / 4.499, abs=0.03)
    assert statistics.fmean(row.prompt_tokens for row in rows) == pytest.approx(100, rel=0.15)


def test_synthesize_can_mix_in_base_model_requests() -> None:
    rows = synthesize(SynthSpec(rate_rps=100, duration_s=20, base_model_fraction=0.5, seed=1))
    share = sum(row.adapter == "" for row in rows) / len(rows)
    assert 0.4 < share < 0.6


def test_synthesize_rejects_bad_parameters() -> None:
    with pytest.raises(SynthSpecError, match="rate_rps"):
        synthesize(SynthSpec(rate_rps=0))
    with pytest.raises(SynthSpecError, match="rank mix"):
        synthesize(SynthSpec(rank_mix={0: 1.0}))
    with pytest.raises(ValueError, match="zipf alpha"):  # SynthSpecError is a ValueError
        synthesize(SynthSpec(zipf_alpha=-1.0))


def test_converters_reject_bad_parameters_before_reading(tmp_path: Path) -> None:
    missing = tmp_path / "never-read.csv"
    with pytest.raises(SynthSpecError, match="speedup"):
        convert_azure(missing, speedup=0.0)
    with pytest.raises(SynthSpecError, match="target_rps"):
        convert_alibaba(missing, target_rps=0.0)


def test_convert_azure_keeps_real_arrivals_and_tokens(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "azure.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,0\n"
        "2023-11-16 18:15:51.2224670,879,55\n",
    )
    converted = convert_azure(path, adapters=10, tenants=2, zipf_alpha=1.2, speedup=2.0, seed=3)
    rows = converted.requests
    assert [row.arrival_s for row in rows] == pytest.approx([0.0, 2.157289, 2.2709385])
    assert [(row.prompt_tokens, row.output_tokens) for row in rows] == [
        (374, 44), (396, 1), (879, 55),
    ]  # fmt: skip
    assert all(row.adapter for row in rows)
    assert "Zipf(alpha=1.2) over 10 adapters" in converted.description
    assert (
        rows
        == convert_azure(path, adapters=10, tenants=2, zipf_alpha=1.2, speedup=2, seed=3).requests
    )


def test_convert_azure_names_a_bad_timestamp(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n")
    with pytest.raises(TraceFormatError, match=r":2: column 'TIMESTAMP'"):
        convert_azure(path)


def test_convert_alibaba_maps_tenants_spreads_seconds_and_compresses(tmp_path: Path) -> None:
    header = (
        "gmt_create,predict_type,predict_status,exec_time_seconds,groupId,prompt_length,"
        "negative_prompt_length,num_images_per_prompt,num_inference_steps,"
        "checkpoint_model_version_id,num_lora\n"
    )
    path = _write(
        tmp_path / "ali.csv",
        header
        + "2024-11-15 16:00:00,TXT_2_IMG,SUCCEED,32.0,G0001,63.0,26.0,1.0,30.0,M0000,0\n"
        + "2024-11-15 16:00:00,TXT_2_IMG,SUCCEED,32.0,G0002,10.0,,1.0,40.0,M0000,1\n"
        + "2024-11-15 16:00:09,TXT_2_IMG,FAILED,32.0,G0001,,,1.0,,M0000,0\n",
    )
    converted = convert_alibaba(path, target_rps=1.0)
    rows = converted.requests
    # Native: 3 requests over 9 s (the two at 16:00:00 spread to +0 and +0.5 s).
    assert converted.time_compression == pytest.approx(3.0)
    assert [row.arrival_s for row in rows] == pytest.approx([0.0, 0.5 / 3, 3.0])
    assert [row.adapter for row in rows] == [
        "G0001/adapter00000@1", "G0002/adapter00000@1", "G0001/adapter00000@1",
    ]  # fmt: skip
    assert [(row.prompt_tokens, row.output_tokens) for row in rows] == [(63, 30), (10, 40), (0, 30)]
    assert "2 real tenants" in converted.description and "3x" in converted.description


def test_convert_alibaba_rejects_another_format(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.csv", "a,b\n1,2\n")
    with pytest.raises(TraceFormatError, match="groupId"):
        convert_alibaba(path)


def _top_adapter(rows: list[TraceRequest], start: float, end: float) -> str:
    window = [row.adapter for row in rows if start <= row.arrival_s < end]
    return max(set(window), key=window.count)


def test_drift_re_ranks_popularity_every_period() -> None:
    base = SynthSpec(
        adapters=20, tenants=4, zipf_alpha=1.5, rate_rps=200, duration_s=40, seed=3,
        drift_fraction=1.0,
    )  # fmt: skip
    steady = synthesize(base)
    drifting = synthesize(dataclasses.replace(base, drift_period_s=10))
    assert drifting == synthesize(dataclasses.replace(base, drift_period_s=10))
    tops = [_top_adapter(drifting, 10 * i, 10 * (i + 1)) for i in range(4)]
    assert len(set(tops)) >= 3  # a full re-rank every 10 s: the hot adapter changes
    assert {_top_adapter(steady, 10 * i, 10 * (i + 1)) for i in range(4)} == {
        "tenant0000/adapter00000@1"
    }
    # Before the first re-rank the two traces draw the same adapters.
    assert [r.adapter for r in drifting if r.arrival_s < 10] == [
        r.adapter for r in steady if r.arrival_s < 10
    ]


def test_flash_crowds_concentrate_extra_requests_in_their_windows() -> None:
    spec = SynthSpec(
        adapters=500, tenants=50, zipf_alpha=0.8, rate_rps=100, duration_s=120, seed=4,
        flash_period_s=60, flash_duration_s=10, flash_intensity=1.0,
    )  # fmt: skip
    rows = synthesize(spec)
    assert rows == synthesize(spec)
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(rows))
    # rate_rps includes the crowds: the steady stream is 100 / (1 + 1.0 * 10/60).
    assert spec.steady_rate_rps == pytest.approx(100 / (1 + 10 / 60))
    assert len(rows) / 120 == pytest.approx(100, rel=0.1)
    for period in range(2):
        window = [r for r in rows if 60 * period <= r.arrival_s < 60 * (period + 1)]
        per_second = {}
        for row in window:
            per_second.setdefault(int(row.arrival_s), []).append(row.adapter)
        # In the crowd's seconds one adapter takes about half the requests.
        peak = max(max(map(keys.count, set(keys))) / len(keys) for keys in per_second.values())
        assert peak > 0.35


def test_tenant_churn_brings_new_tenants_and_keys() -> None:
    spec = SynthSpec(
        adapters=100, tenants=20, rate_rps=100, duration_s=60, seed=5,
        churn_period_s=20, churn_fraction=0.25,
    )  # fmt: skip
    rows = synthesize(spec)
    first = {r.tenant for r in rows if r.arrival_s < 20}
    last = {r.tenant for r in rows if r.arrival_s >= 40}
    assert first <= {f"tenant{i:04d}" for i in range(20)}
    new = last - {f"tenant{i:04d}" for i in range(20)}
    assert len(new) >= 5  # two churns of 5 tenants each, most of them requested
    assert all(row.adapter.startswith(row.tenant + "/") for row in rows)
    assert len({r.adapter for r in rows}) > 100  # keys never seen before appear


def test_synthesize_rejects_bad_workload_options() -> None:
    for options, name in (
        ({"drift_period_s": -1}, "drift_period_s"),
        ({"drift_fraction": 1.5}, "drift_fraction"),
        ({"flash_period_s": 10, "flash_duration_s": 20}, "flash_duration_s"),
        ({"flash_period_s": 100, "flash_adapters": 0}, "flash_adapters"),
        ({"churn_fraction": -0.1}, "churn_fraction"),
    ):
        with pytest.raises(SynthSpecError, match=name):
            synthesize(SynthSpec(**options))  # type: ignore[arg-type]
