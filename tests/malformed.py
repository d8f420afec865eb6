"""A corpus of malformed adapters, as data, for every test that must reject them.

Each :class:`MalformedCase` starts from a valid PEFT adapter directory (made by
:func:`write_valid_adapter` for the tiny Llama, ``tests.factories.make_tiny_base``) and writes one broken
variant into an empty work directory; ``write`` returns the source to push: a
directory, an archive path, or a list of two file paths. Rejecting it must raise exactly
``case.error`` with ``case.message`` in the text.

Usage (validation layer)::

    base = make_tiny_base(tmp)               # or the session fixture tiny_base
    valid = write_valid_adapter(base.model, tmp / "valid")
    for case in MALFORMED_CASES:
        source = case.write(valid, tmp / case.id)
        files = read_adapter_source(source, case.limits)
        validate_adapter(files, base.manifest, case.limits)   # raises case.error

Usage (store): register ``base.manifest`` (its id is ``tests.factories.BASE``), build
the store with ``case.limits`` (only ``bytes_above_cap`` differs from the defaults), push
``source``, and check the store is unchanged. Cases with ``needs_manifest`` are only
rejected when the manifest is known.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np

from adapter_store import AdapterLimits
from adapter_store import AdapterTooLargeError
from adapter_store import IncompatibleAdapterError
from adapter_store import InvalidAdapterError
from adapter_store import InvalidConfigError
from adapter_store import MalformedWeightsError
from adapter_store import UnsafeFormatError
from adapter_store import UnsupportedFeatureError
from adapter_store import UnsupportedPatternError

__all__ = [
    "MALFORMED_CASES",
    "VALID_LORA_KWARGS",
    "MalformedCase",
    "write_valid_adapter",
]

# The valid adapter every case starts from: rank 8 on q_proj and v_proj of both layers.
VALID_LORA_KWARGS: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "target_modules": ["q_proj", "v_proj"],
}
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def write_valid_adapter(model: Any, out_dir: Path) -> Path:
    """The valid PEFT adapter (``VALID_LORA_KWARGS``) every case is derived from."""
    from tests.factories import make_peft_adapter

    return make_peft_adapter(model, Path(out_dir), **VALID_LORA_KWARGS)


@dataclass(frozen=True)
class MalformedCase:
    """One broken adapter: ``write(valid_dir, work_dir) -> source`` and the expected error."""

    id: str
    write: Callable[[Path, Path], Path | list[Path]]
    error: type[InvalidAdapterError]
    message: str
    limits: AdapterLimits = field(default_factory=AdapterLimits)
    needs_manifest: bool = False


# ---- helpers that edit a copy of the valid adapter --------------------------------------


def _copy(valid: Path, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, WEIGHTS):
        (work / name).write_bytes((valid / name).read_bytes())
    return work


def _edit_config(**changes: Any) -> Callable[[Path, Path], Path]:
    """A writer that sets (or, with value ``...``, deletes) config keys."""

    def write(valid: Path, work: Path) -> Path:
        _copy(valid, work)
        config = json.loads((work / CONFIG).read_text())
        for key, value in changes.items():
            if value is ...:
                config.pop(key, None)
            else:
                config[key] = value
        (work / CONFIG).write_text(json.dumps(config))
        return work

    return write


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _edit_raw(edit: Callable[[bytes], bytes]) -> Callable[[Path, Path], Path]:
    """A writer that rewrites the safetensors bytes with ``edit``."""

    def write(valid: Path, work: Path) -> Path:
        _copy(valid, work)
        (work / WEIGHTS).write_bytes(edit((work / WEIGHTS).read_bytes()))
        return work

    return write


def _edit_tensors(
    edit: Callable[[dict[str, np.ndarray]], None], **config_changes: Any
) -> Callable[[Path, Path], Path]:
    """A writer that edits the tensors (and optionally the config) and re-saves them."""
    from safetensors.numpy import load_file
    from safetensors.numpy import save_file

    def write(valid: Path, work: Path) -> Path:
        _edit_config(**config_changes)(valid, work)
        tensors = {name: array.copy() for name, array in load_file(str(work / WEIGHTS)).items()}
        edit(tensors)
        save_file(tensors, str(work / WEIGHTS), metadata={"format": "pt"})
        return work

    return write


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _header_past_end(data: bytes) -> bytes:
    return struct.pack("<Q", len(data) * 4) + data[8:]


def _overlap(data: bytes) -> bytes:
    header, body = _split(data)
    names = sorted(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"]
    )
    first_a = next(k for k in names if k.endswith("lora_A.weight"))
    later_a = [k for k in names if k.endswith("lora_A.weight")][-1]
    header[later_a]["data_offsets"] = list(header[first_a]["data_offsets"])
    return _join(header, body)


def _unknown_dtype(data: bytes) -> bytes:
    header, body = _split(data)
    header[Q_A]["dtype"] = "F12"
    return _join(header, body)


def _header_edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[bytes], bytes]:
    """A raw edit that rewrites the safetensors header JSON, leaving the data alone."""

    def rewrite(data: bytes) -> bytes:
        header, body = _split(data)
        edit(header)
        return _join(header, body)

    return rewrite


def _many_huge_dims(header: dict[str, Any]) -> None:
    # Hundreds of 300-digit dimensions: their product has ~90,000 digits.
    header[Q_A]["shape"] = [10**299 + 7] * 300


def _few_huge_dims(header: dict[str, Any]) -> None:
    header[Q_A]["shape"] = [10**299 + 7] * 2


def _huge_weights(tensors: dict[str, np.ndarray]) -> None:
    tensors[Q_B][0, 0] = 1e30


def _unicode_module(tensors: dict[str, np.ndarray]) -> None:
    for part in (Q_A, Q_B):
        tensors[part.replace("q_proj", "q_pr\u00f8j")] = tensors.pop(part)


def _set_nan(tensors: dict[str, np.ndarray]) -> None:
    tensors[Q_B][3, 2] = np.nan


def _halve_b_rank(tensors: dict[str, np.ndarray]) -> None:
    tensors[Q_B] = np.ascontiguousarray(tensors[Q_B][:, :4])


def _narrow_inputs(tensors: dict[str, np.ndarray]) -> None:
    tensors[Q_A] = np.ascontiguousarray(tensors[Q_A][:, :32])


def _rename_q_to_qq(tensors: dict[str, np.ndarray]) -> None:
    for name in (Q_A, Q_B):
        tensors[name.replace("q_proj", "qq_proj")] = tensors.pop(name)


def _drop_q_b(tensors: dict[str, np.ndarray]) -> None:
    del tensors[Q_B]


def _drop_layer1_q(tensors: dict[str, np.ndarray]) -> None:
    for name in (Q_A, Q_B):
        del tensors[name.replace("layers.0", "layers.1")]


def _add_embedding_lora(tensors: dict[str, np.ndarray]) -> None:
    tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = np.zeros((8, 256), np.float32)


def _config_not_json(valid: Path, work: Path) -> Path:
    (_copy(valid, work) / CONFIG).write_bytes(b"{r: 8")
    return work


def _pickle_only(valid: Path, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    (work / CONFIG).write_bytes((valid / CONFIG).read_bytes())
    # The bytes of a pickle: never unpickled by the store, so any content does.
    (work / "adapter_model.bin").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    return work


def _config_only(valid: Path, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    (work / CONFIG).write_bytes((valid / CONFIG).read_bytes())
    return work


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _tar_with(
    *extra: Callable[[Path], tuple[tarfile.TarInfo, bytes | None]],
) -> Callable[[Path, Path], Path]:
    """A writer for a .tar.gz of the valid adapter plus hostile ``extra`` members."""

    def write(valid: Path, work: Path) -> Path:
        members = [_file_member(n, (valid / n).read_bytes()) for n in (CONFIG, WEIGHTS)]
        members += [make(valid) for make in extra]
        return _tar(members, work / "adapter.tar.gz")

    return write


def _traversal(valid: Path) -> tuple[tarfile.TarInfo, bytes]:
    return _file_member("../../etc/adapter_config.json", b"{}")


def _absolute(valid: Path) -> tuple[tarfile.TarInfo, bytes]:
    return _file_member("/tmp/evil/notes.txt", b"x")


def _symlink(valid: Path) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo("README.md")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info, None


def _device(valid: Path) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo("zero")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 5
    return info, None


def _duplicate(valid: Path) -> tuple[tarfile.TarInfo, bytes]:
    return _file_member(CONFIG, (valid / CONFIG).read_bytes())


def _control_chars(valid: Path) -> tuple[tarfile.TarInfo, bytes]:
    return _file_member("notes\n\x1b[2J.txt", b"x")


def _backslash(valid: Path) -> tuple[tarfile.TarInfo, bytes]:
    return _file_member("..\\..\\windows\\evil.dll", b"x")


def _empty_archive(valid: Path, work: Path) -> Path:
    return _tar([], work / "empty.tar.gz")


def _declared_bomb(valid: Path, work: Path) -> Path:
    # A header claiming 2 GiB of weights with no data behind it: refused on the
    # declared size, before anything is read.
    info = tarfile.TarInfo(WEIGHTS)
    info.size = 2 << 30
    work.mkdir(parents=True, exist_ok=True)
    path = work / "bomb.tar.gz"
    path.write_bytes(gzip.compress(info.tobuf(format=tarfile.PAX_FORMAT)))
    return path


def _zip_symlink(valid: Path, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "adapter.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in (CONFIG, WEIGHTS):
            archive.writestr(name, (valid / name).read_bytes())
        link = zipfile.ZipInfo("weights-link")
        link.external_attr = 0o120777 << 16  # S_IFLNK: a symbolic link
        archive.writestr(link, "/etc/passwd")
    return path


def _loose_files_with_pickle(valid: Path, work: Path) -> list[Path]:
    work.mkdir(parents=True, exist_ok=True)
    (work / CONFIG).write_bytes((valid / CONFIG).read_bytes())
    (work / "adapter_model.bin").write_bytes(b"\x80\x04\x95")
    return [work / "adapter_model.bin", work / CONFIG]


MALFORMED_CASES: list[MalformedCase] = [
    # -- the safetensors container
    MalformedCase(
        "truncated_weights", _edit_raw(_truncate), MalformedWeightsError, "the file is truncated"
    ),
    MalformedCase(
        "header_length_past_end",
        _edit_raw(_header_past_end),
        MalformedWeightsError,
        "runs past the end of the file",
    ),
    MalformedCase("overlapping_offsets", _edit_raw(_overlap), MalformedWeightsError, "overlap"),
    MalformedCase(
        "unknown_dtype", _edit_raw(_unknown_dtype), MalformedWeightsError, "unknown dtype 'F12'"
    ),
    MalformedCase(
        "nan_weights", _edit_tensors(_set_nan), MalformedWeightsError, "1 NaN or infinite values"
    ),
    MalformedCase(
        "missing_lora_b",
        _edit_tensors(_drop_q_b),
        MalformedWeightsError,
        "has lora_A but no lora_B",
    ),
    MalformedCase(
        "a_b_rank_mismatch",
        _edit_tensors(_halve_b_rank),
        MalformedWeightsError,
        "lora_A has rank 8",
    ),
    MalformedCase(
        "missing_weights_file",
        _config_only,
        MalformedWeightsError,
        "has no adapter_model.safetensors",
    ),
    MalformedCase(
        "embedding_lora",
        _edit_tensors(_add_embedding_lora),
        UnsupportedFeatureError,
        "LoRA on embedding layers is not supported",
    ),
    MalformedCase(
        "header_many_huge_dims",
        _edit_raw(_header_edit(_many_huge_dims)),
        MalformedWeightsError,
        "not a list of at most 8 sizes",
    ),
    MalformedCase(
        "header_huge_dims",
        _edit_raw(_header_edit(_few_huge_dims)),
        MalformedWeightsError,
        "not a list of sizes in [0, 2**63)",
    ),
    MalformedCase(
        "huge_weights",
        _edit_tensors(_huge_weights),
        MalformedWeightsError,
        "holds a value of magnitude 1e+30, above the limit of 1024",
    ),
    MalformedCase(
        "non_ascii_module_path",
        _edit_tensors(_unicode_module),
        MalformedWeightsError,
        "not 1-512 printable ASCII characters",
    ),
    # -- the config, and its agreement with the weights
    MalformedCase(
        "config_not_json", _config_not_json, InvalidConfigError, "is not valid UTF-8 JSON"
    ),
    MalformedCase("missing_r", _edit_config(r=...), InvalidConfigError, "missing 'r'"),
    MalformedCase(
        "missing_target_modules",
        _edit_config(target_modules=...),
        InvalidConfigError,
        "missing 'target_modules'",
    ),
    MalformedCase(
        "rank_mismatch_config",
        _edit_config(r=4),
        InvalidConfigError,
        "has rank 8 in the weights but 4 in the config",
    ),
    MalformedCase(
        "weights_not_targeted",
        _edit_config(target_modules=["q_proj"]),
        InvalidConfigError,
        "does not select it",
    ),
    MalformedCase(
        "non_lora_peft_type",
        _edit_config(peft_type="IA3"),
        UnsupportedFeatureError,
        "peft_type 'IA3'",
    ),
    MalformedCase("dora", _edit_config(use_dora=True), UnsupportedFeatureError, "DoRA (use_dora)"),
    MalformedCase(
        "modules_to_save",
        _edit_config(modules_to_save=["lm_head"]),
        UnsupportedFeatureError,
        "modules_to_save stores",
    ),
    MalformedCase("trained_bias", _edit_config(bias="all"), UnsupportedFeatureError, "bias='all'"),
    # -- hostile values: each must be refused quickly, whatever Python's re would do
    MalformedCase(
        # Python's re needs minutes on a 31-character path (nested repeats, no match).
        "regex_bomb_target_modules",
        _edit_config(target_modules=r"([a-z_.0-9]+)*X"),
        InvalidConfigError,
        "target_modules='([a-z_.0-9]+)*X' does not select it",
    ),
    MalformedCase(
        "regex_backreference",
        _edit_config(target_modules=r".*(q|v)_pro(j)\2"),
        UnsupportedPatternError,
        "uses '\\\\2', which Python's re and RE2 read differently",
    ),
    MalformedCase(
        "regex_lookahead",
        _edit_config(exclude_modules=r"(?=.*k_proj).*"),
        UnsupportedPatternError,
        "exclude_modules pattern '(?=.*k_proj).*' cannot be matched in linear time",
    ),
    MalformedCase(
        "regex_too_long",
        _edit_config(rank_pattern={"q" * 5000: 8}),
        UnsupportedPatternError,
        "is 5000 characters, more than 1024",
    ),
    MalformedCase(
        "too_many_rank_patterns",
        _edit_config(rank_pattern={f"m{i}": 8 for i in range(5000)}),
        UnsupportedPatternError,
        "rank_pattern has 5000 entries, more than 4096",
    ),
    MalformedCase(
        "alpha_400_digits",
        _edit_config(lora_alpha=10**400),
        InvalidConfigError,
        "lora_alpha is an integer of 1329 bits",
    ),
    MalformedCase(
        "scaling_above_limit",
        _edit_config(lora_alpha=100_000),
        InvalidConfigError,
        "a scaling of 1.25e+04 (alpha 100000 / 8), above the limit of 1024",
    ),
    MalformedCase(
        "rslora_scaling_above_limit",
        _edit_config(alpha_pattern={"v_proj": 5000}, use_rslora=True),
        InvalidConfigError,
        "(alpha 5000 / sqrt(8)), above the limit of 1024",
    ),
    # -- the base model
    MalformedCase(
        "shape_not_in_base",
        _edit_tensors(_narrow_inputs),
        IncompatibleAdapterError,
        "maps 64 -> 64 features, but the adapter's LoRA maps 32 -> 64",
        needs_manifest=True,
    ),
    MalformedCase(
        "unknown_target_module",
        _edit_tensors(_rename_q_to_qq, target_modules=["q_proj", "qq_proj", "v_proj"]),
        IncompatibleAdapterError,
        "has no linear module 'model.layers.0.self_attn.qq_proj'",
        needs_manifest=True,
    ),
    MalformedCase(
        "targeted_module_without_weights",
        _edit_tensors(_drop_layer1_q),
        MalformedWeightsError,
        "has no LoRA weights for it",
        needs_manifest=True,
    ),
    # -- caps
    MalformedCase(
        "rank_above_cap",
        _edit_config(r=300),
        AdapterTooLargeError,
        "asks for rank 300, above the cap of 256",
    ),
    MalformedCase(
        "bytes_above_cap",
        _copy,
        AdapterTooLargeError,
        "more than the cap of 4096 bytes",
        limits=AdapterLimits(max_bytes=4096),
    ),
    MalformedCase("archive_declared_bomb", _declared_bomb, AdapterTooLargeError, "the content of"),
    # -- unsafe containers
    MalformedCase(
        "pickle_weights", _pickle_only, UnsafeFormatError, "adapter_model.bin is a pickle file"
    ),
    MalformedCase(
        "pickle_loose_file",
        _loose_files_with_pickle,
        UnsafeFormatError,
        "is a pickle file, which is never loaded",
    ),
    MalformedCase("empty_archive", _empty_archive, InvalidAdapterError, "is an empty archive"),
    MalformedCase(
        "archive_path_traversal",
        _tar_with(_traversal),
        UnsafeFormatError,
        "climbs out of the archive",
    ),
    MalformedCase(
        "archive_absolute_path",
        _tar_with(_absolute),
        UnsafeFormatError,
        "'/tmp/evil/notes.txt' has an absolute",
    ),
    MalformedCase(
        "archive_backslash_name",
        _tar_with(_backslash),
        UnsafeFormatError,
        "'..\\\\..\\\\windows\\\\evil.dll' has an absolute or Windows-style",
    ),
    MalformedCase("archive_symlink", _tar_with(_symlink), UnsafeFormatError, "is a symbolic link"),
    MalformedCase("archive_device", _tar_with(_device), UnsafeFormatError, "is a device file"),
    MalformedCase(
        "archive_duplicate_member",
        _tar_with(_duplicate),
        UnsafeFormatError,
        "lists 'adapter_config.json' twice",
    ),
    MalformedCase(
        "archive_control_chars",
        _tar_with(_control_chars),
        UnsafeFormatError,
        "holds control characters",
    ),
    MalformedCase(
        "zip_symlink", _zip_symlink, UnsafeFormatError, "'weights-link' is a link or special file"
    ),
]
