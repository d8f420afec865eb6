"""The defensive safetensors header parser and the NaN/inf scan."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save

from adapter_store import MalformedWeightsError
from adapter_store import _safetensors as st_mod
from adapter_store._safetensors import check_values
from adapter_store._safetensors import parse_safetensors_header


def raw_file(header: dict[str, Any], body: bytes, *, pad: int = 0) -> bytes:
    """A safetensors file written by hand, so that its header can be anything."""
    text = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(text)) + text + body


def one_tensor(dtype: str, values: bytes, shape: list[int]) -> bytes:
    return raw_file(
        {"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(values)]}}, values
    )


def test_parses_a_file_written_by_safetensors_itself(tmp_path):
    arrays = {
        "b": np.arange(6, dtype=np.float16).reshape(2, 3),
        "a": np.ones((4,), dtype=np.float32),
        "i": np.array([[1, 2]], dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    data = save(arrays, metadata={"format": "pt"})
    header = parse_safetensors_header(data)

    assert header.metadata == {"format": "pt"}
    infos = header.by_name()
    assert set(infos) == set(arrays)
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), "np") as f:
        for name, array in arrays.items():
            info = infos[name]
            assert info.shape == tuple(f.get_slice(name).get_shape()) == array.shape
            assert data[info.start : info.end] == array.tobytes()
    starts = [t.start for t in header.tensors]
    assert starts == sorted(starts)


def test_header_padding_with_spaces_is_accepted():
    data = raw_file({"t": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"ab", pad=7)
    (info,) = parse_safetensors_header(data).tensors
    assert data[info.start : info.end] == b"ab"


BAD_FILES = [
    ("short", b"\x01\x02", "shorter than the 8-byte header length"),
    ("length_past_end", struct.pack("<Q", 100) + b"{}", "runs past the end of the file"),
    ("not_object", struct.pack("<Q", 2) + b"[]", "does not start with '{'"),
    ("not_utf8", struct.pack("<Q", 3) + b"{\xff}", "not valid UTF-8 JSON"),
    ("not_json", struct.pack("<Q", 3) + b"{a}", "not valid UTF-8 JSON"),
    (
        "deep_nesting",
        struct.pack("<Q", 100_005) + b'{"a":' + b"[" * 100_000,
        "not valid UTF-8 JSON",
    ),
    ("duplicate_names", struct.pack("<Q", 17) + b'{"a": {}, "a":{}}', "names 'a' twice"),
    ("bad_metadata", raw_file({"__metadata__": {"k": 1}}, b""), "__metadata__ must map strings"),
    ("entry_not_object", raw_file({"t": [1]}, b""), "is not a JSON object"),
    ("unknown_dtype", one_tensor("F7", b"\x00", [1]), "unknown dtype 'F7'"),
    ("negative_dim", one_tensor("U8", b"", [-1]), "not a list of sizes in [0, 2**63)"),
    ("bool_dim", one_tensor("U8", b"\x00", [True]), "not a list of sizes in [0, 2**63)"),
    ("float_dim", one_tensor("U8", b"\x00", [1.0]), "not a list of sizes in [0, 2**63)"),
    (
        "three_offsets",
        raw_file({"t": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 2]}}, b"\x00\x00"),
        "not [begin, end]",
    ),
    (
        "reversed_offsets",
        raw_file({"t": {"dtype": "U8", "shape": [1], "data_offsets": [1, 0]}}, b"\x00"),
        "not [begin, end]",
    ),
    ("size_mismatch", one_tensor("F32", b"\x00" * 6, [2]), "needs 8 bytes but its data_offsets"),
    (
        "huge_shape",
        raw_file(
            {"t": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 4]}}, b"\x00" * 4
        ),
        "needs",
    ),
    (
        "offsets_past_end",
        raw_file({"t": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}, b"\x00" * 4),
        "past the end of the 4-byte data section",
    ),
    (
        "overlap",
        raw_file(
            {
                "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
            },
            b"\x00" * 6,
        ),
        "tensors 'a' and 'b' overlap",
    ),
    (
        "gap",
        raw_file({"t": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, b"\x00" * 4),
        "bytes 0..2 of the data section belong to no tensor",
    ),
    (
        "trailing_bytes",
        raw_file({"t": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\x00" * 5),
        "3 bytes follow the last tensor's data",
    ),
]


@pytest.mark.parametrize(
    ("data", "message"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_malformed_headers_are_rejected_with_their_reason(data, message):
    with pytest.raises(MalformedWeightsError) as excinfo:
        parse_safetensors_header(data)
    assert message in str(excinfo.value)
    assert "re-save" in str(excinfo.value) or "save the adapter" in str(excinfo.value)


def test_header_and_tensor_count_caps():
    data = raw_file(
        {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(5)},
        b"\x00" * 5,
    )
    parse_safetensors_header(data, max_tensors=5)
    with pytest.raises(MalformedWeightsError, match="5 tensors, more than the cap of 4"):
        parse_safetensors_header(data, max_tensors=4)
    with pytest.raises(MalformedWeightsError, match="more than the cap of 64"):
        parse_safetensors_header(data, max_header_bytes=64)


def test_zero_size_tensors_may_share_an_offset():
    header = {
        "a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
        "b": {"dtype": "F32", "shape": [0, 5], "data_offsets": [0, 0]},
        "c": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
    }
    assert len(parse_safetensors_header(raw_file(header, b"\x07")).tensors) == 3


def _bits(dtype: str, value: float) -> bytes:
    if dtype == "BF16":
        return (np.array([value], "<f4").view("<u4") >> 16).astype("<u2").tobytes()
    return np.array([value], {"F16": "<f2", "F32": "<f4", "F64": "<f8"}[dtype]).tobytes()


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32", "F64"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_found_in_every_float_dtype(dtype, bad):
    values = _bits(dtype, 0.5) + _bits(dtype, bad) + _bits(dtype, -2.0)
    data = one_tensor(dtype, values, [3])
    header = parse_safetensors_header(data)
    with pytest.raises(MalformedWeightsError, match="tensor 't' holds 1 NaN or infinite values"):
        check_values(data, header.tensors)


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32", "F64"])
def test_extreme_finite_values_pass(dtype):
    info = np.finfo(
        {"F16": np.float16, "BF16": np.float32, "F32": np.float32, "F64": np.float64}[dtype]
    )
    big = 3.3e38 if dtype == "BF16" else float(info.max)
    values = b"".join(_bits(dtype, v) for v in (big, -big, float(info.tiny) / 4, -0.0, 0.0))
    data = one_tensor(dtype, values, [5])
    check_values(data, parse_safetensors_header(data).tensors)


def test_float8_nan_is_found_and_integers_are_not_scanned():
    data = one_tensor("F8_E4M3", bytes([0x10, 0x7F]), [2])
    with pytest.raises(MalformedWeightsError, match="1 NaN"):
        check_values(data, parse_safetensors_header(data).tensors)
    ints = one_tensor("I32", b"\xff\xff\xff\x7f" * 2, [2])  # the bits of a float32 NaN
    check_values(ints, parse_safetensors_header(ints).tensors)


def test_scan_counts_non_finite_values_across_chunks(monkeypatch):
    monkeypatch.setattr(st_mod, "_SCAN_CHUNK", 3)
    values = np.zeros(10, "<f4")
    values[[0, 9]] = np.nan
    data = one_tensor("F32", values.tobytes(), [10])
    with pytest.raises(MalformedWeightsError, match="holds 2 NaN"):
        check_values(data, parse_safetensors_header(data).tensors)


# ---- property tests: hostile bytes raise MalformedWeightsError or nothing ---------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
_entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "U8", "I64", "F8_E4M3", "X"]),
        "shape": st.lists(st.integers(-1, 6), max_size=3),
        "data_offsets": st.lists(st.integers(-1, 80), min_size=0, max_size=3),
    }
)
_headers = st.dictionaries(st.text(max_size=6), _entries | _json_values, max_size=5)


def _parse_and_scan(data: bytes) -> None:
    try:
        header = parse_safetensors_header(data, max_header_bytes=4096)
        check_values(data, header.tensors)
    except MalformedWeightsError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_arbitrary_bytes_raise_only_malformed_weights(data):
    _parse_and_scan(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_headers, st.binary(max_size=80), st.integers(-3, 3))
def test_arbitrary_headers_raise_only_malformed_weights(header, body, length_skew):
    text = json.dumps(header).encode()
    prefix = struct.pack("<Q", max(0, len(text) + length_skew))
    _parse_and_scan(prefix + text + body)
