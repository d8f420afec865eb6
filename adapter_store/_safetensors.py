"""A defensive reader of the safetensors container, for bytes nobody has vouched for.

The format is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON mapping
tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to
the data section after the header), an optional ``"__metadata__"`` map of strings, then
the data. :func:`parse_safetensors_header` checks everything the header claims against
the bytes actually there before any tensor is touched: the length prefix is inside the
file and under a cap, the JSON is a flat object without duplicate names, every dtype is
known, every byte range matches its shape and lies inside the data, and the ranges tile
the data section exactly (no overlap, no gap, no trailing bytes), as the reference
implementation requires. Shapes have at most :data:`MAX_DIMS` dimensions of at most
``2**63 - 1`` each, checked before any product is taken, so no size computation grows
with the numbers a header holds. :func:`check_values` then scans floating tensors for
NaN, infinity and magnitudes above a bound on the raw bits (one integer maximum per
chunk), so no value is ever converted.

Failure mode: every problem raises :class:`MalformedWeightsError` naming the tensor or
byte range at fault; arbitrary input raises nothing else, allocates at most the header
cap plus a bounded scan buffer, and costs time linear in the file size.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from adapter_store.exceptions import MalformedWeightsError

__all__ = [
    "DTYPE_SIZES",
    "FLOAT_DTYPES",
    "SafetensorsHeader",
    "TensorInfo",
    "check_values",
    "parse_safetensors_header",
]

# Byte width of every dtype the safetensors format defines.
DTYPE_SIZES: Mapping[str, int] = MappingProxyType(
    {
        "BOOL": 1,
        "U8": 1,
        "I8": 1,
        "F8_E5M2": 1,
        "F8_E4M3": 1,
        "I16": 2,
        "U16": 2,
        "F16": 2,
        "BF16": 2,
        "I32": 4,
        "U32": 4,
        "F32": 4,
        "I64": 8,
        "U64": 8,
        "F64": 8,
    }
)

# For each floating dtype: the unsigned integer view of one element and the mask of bits
# that are all set exactly when the value is NaN or infinite (all exponent bits for IEEE
# formats; exponent and mantissa for F8_E4M3, which has no infinity).
_NON_FINITE_MASKS: Mapping[str, tuple[str, int]] = MappingProxyType(
    {
        "F64": ("<u8", 0x7FF0_0000_0000_0000),
        "F32": ("<u4", 0x7F80_0000),
        "F16": ("<u2", 0x7C00),
        "BF16": ("<u2", 0x7F80),
        "F8_E5M2": ("u1", 0x7C),
        "F8_E4M3": ("u1", 0x7F),
    }
)
FLOAT_DTYPES: frozenset[str] = frozenset(_NON_FINITE_MASKS)

# Safetensors stores sizes as 64-bit unsigned integers; any tensor a LoRA adapter holds
# has 2 dimensions, and no model tensor has more than a handful.
MAX_DIMS = 8
_MAX_SIZE = (1 << 63) - 1
_LENGTH_PREFIX = 8
_METADATA_KEY = "__metadata__"
# Elements scanned per step by check_values: bounds the temporary arrays to a few MiB.
_SCAN_CHUNK = 1 << 18
_RESAVE = "re-save the adapter with model.save_pretrained(dir, safe_serialization=True)"


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor's entry, with ``start``/``end`` as absolute offsets into the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class SafetensorsHeader:
    """A validated header: tensors sorted by offset, and the free-form metadata."""

    tensors: tuple[TensorInfo, ...]
    metadata: Mapping[str, str]

    def by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}


def _malformed(problem: str, fix: str = _RESAVE) -> MalformedWeightsError:
    return MalformedWeightsError(f"adapter_model.safetensors: {problem}; {fix}")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _malformed(f"the header names {key!r} twice")
        obj[key] = value
    return obj


def _is_count(value: object) -> bool:
    # bool is an int subclass; a header saying ``true`` for a size is malformed.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_SIZE


def parse_safetensors_header(
    data: bytes | memoryview,
    *,
    max_header_bytes: int = 16 << 20,
    max_tensors: int = 65_536,
) -> SafetensorsHeader:
    """Parse and check the header of the safetensors file held in ``data``.

    Raises:
        MalformedWeightsError: the file is truncated, the header is too long, not JSON,
            holds duplicate or unknown entries, an unknown dtype, or byte ranges that do
            not match their shapes, overlap, leave gaps or run past the end.
    """
    size = len(data)
    if size < _LENGTH_PREFIX:
        raise _malformed(
            f"the file is {size} bytes, shorter than the 8-byte header length; "
            "it is truncated or not a safetensors file"
        )
    (header_len,) = struct.unpack("<Q", bytes(data[:_LENGTH_PREFIX]))
    if header_len > size - _LENGTH_PREFIX:
        raise _malformed(
            f"the header length {header_len} runs past the end of the file "
            f"({size} bytes); the file is truncated or not a safetensors file"
        )
    if header_len > max_header_bytes:
        raise _malformed(
            f"the header is {header_len} bytes, more than the cap of {max_header_bytes}",
            "an adapter's header takes about 150 bytes per tensor: " + _RESAVE,
        )
    data_start = _LENGTH_PREFIX + header_len
    raw = bytes(data[_LENGTH_PREFIX:data_start])
    if not raw.startswith(b"{"):
        raise _malformed("the header does not start with '{', so it is not a JSON object")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except MalformedWeightsError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _malformed(f"the header is not valid UTF-8 JSON ({type(e).__name__})") from e
    if not isinstance(header, dict):
        raise _malformed("the header is not a JSON object")
    metadata = header.pop(_METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _malformed("__metadata__ must map strings to strings")
    if len(header) > max_tensors:
        raise _malformed(
            f"the header lists {len(header)} tensors, more than the cap of {max_tensors}",
            "split the adapter or raise AdapterLimits.max_tensors",
        )
    data_len = size - data_start
    tensors = sorted(
        (_tensor_info(name, entry, data_start, data_len) for name, entry in header.items()),
        key=lambda t: (t.start, t.end),
    )
    _check_tiling(tensors, data_start, size)
    return SafetensorsHeader(tuple(tensors), MappingProxyType(dict(metadata)))


def _tensor_info(name: str, entry: object, data_start: int, data_len: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _malformed(f"the entry for tensor {name!r} is not a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise _malformed(
            f"tensor {name!r} has unknown dtype {dtype!r} (known: {', '.join(DTYPE_SIZES)})",
            "save the adapter in float16, bfloat16 or float32 with safetensors",
        )
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise _malformed(
            f"tensor {name!r} has a shape that is not a list of at most {MAX_DIMS} sizes"
        )
    if not all(_is_count(d) for d in shape):
        raise _malformed(f"tensor {name!r} has shape {shape!r}, not a list of sizes in [0, 2**63)")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _malformed(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
    begin, end = offsets
    if end > data_len:
        raise _malformed(
            f"tensor {name!r} has data_offsets [{begin}, {end}] past the end of the "
            f"{data_len}-byte data section; the file is truncated"
        )
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise _malformed(
            f"tensor {name!r} ({dtype}, shape {shape}) needs {expected} bytes but its "
            f"data_offsets [{begin}, {end}] span {end - begin}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _check_tiling(tensors: list[TensorInfo], data_start: int, size: int) -> None:
    """The sorted byte ranges must cover the data section exactly once."""
    cursor = data_start
    previous: TensorInfo | None = None
    for t in tensors:
        if t.start < cursor:
            assert previous is not None  # cursor only moves past data_start after a tensor
            raise _malformed(
                f"tensors {previous.name!r} and {t.name!r} overlap (bytes "
                f"{t.start - data_start}..{cursor - data_start} of the data section)"
            )
        if t.start > cursor:
            raise _malformed(
                f"bytes {cursor - data_start}..{t.start - data_start} of the data section "
                "belong to no tensor"
            )
        cursor, previous = t.end, t
    if cursor != size:
        raise _malformed(f"{size - cursor} bytes follow the last tensor's data")


def check_values(
    data: bytes | memoryview,
    tensors: tuple[TensorInfo, ...] | list[TensorInfo],
    max_abs: float = math.inf,
    on_chunk: Callable[[], None] | None = None,
) -> None:
    """Check every floating tensor in ``tensors`` (from a validated header) for NaN,
    infinity and values with ``abs(x) > max_abs``.

    Magnitudes are compared as integers: clearing the sign bit leaves a code that grows
    with ``abs(x)`` in every IEEE-style format, so one maximum per chunk decides both
    checks. ``on_chunk`` is called after each chunk (a deadline check).

    Raises:
        MalformedWeightsError: naming the first tensor with a non-finite value or a
            value above ``max_abs``.
    """
    # numpy is a server dependency: imported here so the light client can import the
    # package's constants (the SDK reads CONFIG_NAME and WEIGHTS_NAME).
    import numpy as np

    for t in tensors:
        spec = _NON_FINITE_MASKS.get(t.dtype)
        if spec is None:
            continue
        view_dtype, non_finite = spec
        width, numel = DTYPE_SIZES[t.dtype], t.numel
        magnitude_bits = np.array(_SIGN_CLEARED[t.dtype], dtype=view_dtype)
        largest = 0
        for first in range(0, numel, _SCAN_CHUNK):
            count = min(_SCAN_CHUNK, numel - first)
            bits = np.frombuffer(
                data, dtype=view_dtype, count=count, offset=t.start + first * width
            )
            largest = max(largest, int(np.bitwise_and(bits, magnitude_bits).max()))
            if largest >= non_finite:
                _raise_non_finite(data, t, view_dtype, non_finite)
            if on_chunk is not None:
                on_chunk()
        if largest > _largest_code_within(t.dtype, max_abs):
            raise MalformedWeightsError(
                f"adapter_model.safetensors: tensor {t.name!r} holds a value of magnitude "
                f"{_decode(t.dtype, largest):.4g}, above the limit of {max_abs:g}; trained "
                "LoRA weights are far smaller: fix or retrain the adapter"
            )


def _raise_non_finite(data: bytes | memoryview, t: TensorInfo, view_dtype: str, mask: int) -> None:
    import numpy as np

    bad = 0
    for first in range(0, t.numel, _SCAN_CHUNK):
        count = min(_SCAN_CHUNK, t.numel - first)
        bits = np.frombuffer(
            data, dtype=view_dtype, count=count, offset=t.start + first * DTYPE_SIZES[t.dtype]
        )
        bad += int(np.count_nonzero((bits & mask) == mask))
    raise MalformedWeightsError(
        f"adapter_model.safetensors: tensor {t.name!r} holds {bad} NaN or infinite "
        "values; training diverged or the weights were corrupted: fix or retrain "
        "the adapter and save it again"
    )


# Every bit but the sign bit, per floating dtype.
_SIGN_CLEARED: Mapping[str, int] = MappingProxyType(
    {dtype: (1 << (8 * DTYPE_SIZES[dtype] - 1)) - 1 for dtype in _NON_FINITE_MASKS}
)


def _decode(dtype: str, code: int) -> float:
    """The value of a non-negative code (sign bit clear) of a floating dtype."""
    import numpy as np

    if dtype == "F64":
        return float(np.array(code, dtype="<u8").view("<f8"))
    if dtype == "F32":
        return float(np.array(code, dtype="<u4").view("<f4"))
    if dtype == "F16":
        return float(np.array(code, dtype="<u2").view("<f2"))
    if dtype == "BF16":
        return float(np.array(code << 16, dtype="<u4").view("<f4"))
    if dtype == "F8_E5M2":  # the top byte of a float16
        return float(np.array(code << 8, dtype="<u2").view("<f2"))
    # F8_E4M3 (fn): exponent bias 7, 3 mantissa bits, no infinity.
    exponent, mantissa = code >> 3, code & 7
    if exponent == 0:
        return mantissa / 8 * 2.0**-6
    return (1 + mantissa / 8) * 2.0 ** (exponent - 7)


@functools.lru_cache(maxsize=64)
def _largest_code_within(dtype: str, max_abs: float) -> int:
    """The largest finite non-negative code whose value is <= ``max_abs``.

    Codes of non-negative values are ordered like the values, so a binary search over
    codes finds it without converting any tensor data.
    """
    low, high = 0, _NON_FINITE_MASKS[dtype][1] - 1  # every code below the mask is finite
    if dtype == "F8_E4M3":
        high = 0x7E
    while low < high:
        middle = (low + high + 1) // 2
        if _decode(dtype, middle) <= max_abs:
            low = middle
        else:
            high = middle - 1
    return low
