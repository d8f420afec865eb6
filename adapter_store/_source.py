"""Reading an adapter's two files out of whatever the user hands over.

Accepted sources: a directory holding ``adapter_config.json`` and
``adapter_model.safetensors``; a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` archive holding
them (at its root or in one folder); the two files themselves, in any order; or, for
HTTP uploads, a ``{filename: bytes or file}`` map of either one archive or the two files.

Policy: nothing is ever extracted under a name and nothing is read past the size cap.
A file or archive member of up to 1 MiB is read into memory; a larger one (the weights)
is copied in 1 MiB chunks into an anonymous temporary file that is then mapped read-only
(:data:`Payload`), so reading, validating, hashing and storing an adapter of any size
holds a few MiB of it in memory. Archive members are only read after every member's
name and type has been checked: absolute paths, ``..``, backslashes, control characters, links, devices and
duplicate names make the whole archive unacceptable, since each one is how hostile
archives overwrite files elsewhere. Declared sizes are summed before any data is read
and decompressed bytes are counted while reading, so an archive bomb stops at the cap.
Pickle weights (``adapter_model.bin``) are never opened.

Failure mode: :class:`UnsafeFormatError` for pickle or hostile members,
:class:`AdapterTooLargeError` above the cap, :class:`InvalidConfigError` /
:class:`MalformedWeightsError` when the config / weights file is missing, and
:class:`InvalidAdapterError` for a container that is unreadable, empty, or holds
several adapters.
"""

from __future__ import annotations

import gzip
import io
import lzma
import mmap
import os
import posixpath
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from adapter_store.exceptions import AdapterTooLargeError
from adapter_store.exceptions import InvalidAdapterError
from adapter_store.exceptions import InvalidConfigError
from adapter_store.exceptions import MalformedWeightsError
from adapter_store.exceptions import UnsafeFormatError

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdapterFiles",
    "AdapterLimits",
    "Payload",
    "read_adapter_source",
    "read_adapter_upload",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PICKLE_WEIGHTS_STEM = "adapter_model."
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_TAR_SUFFIXES = (".tar",)
_TGZ_SUFFIXES = (".tar.gz", ".tgz")
_ZIP_SUFFIXES = (".zip",)
_SAVE_SAFETENSORS = (
    "save the adapter with safetensors: peft_model.save_pretrained(dir, safe_serialization=True)"
)
_GIVE_BOTH = f"give a directory or archive holding {CONFIG_NAME} and {WEIGHTS_NAME}, or both files"
# Tar headers and padding on top of the members' bytes: 512 bytes per header, padding
# to 512, the end-of-archive blocks. Generous so a valid archive is never cut short.
_TAR_OVERHEAD_PER_MEMBER = 2048
# Files up to this size are held in memory; larger ones are spooled and mapped.
_IN_MEMORY_BYTES = 1 << 20
_SPOOL_CHUNK = 1 << 20
# A PEFT adapter_config.json is a few KB; this bounds what a hostile one costs to parse.
_MAX_CONFIG_BYTES = 1 << 20

Payload = bytes | mmap.mmap
"""A file's content: bytes, or a read-only mapping of a spooled copy (larger files).
Both are buffers: ``len``, slicing and ``memoryview`` work alike."""


@dataclass(frozen=True)
class AdapterLimits:
    """Caps enforced while reading and validating an adapter. The scaling and weight
    bounds are far above what training produces (docs/reliability.md lists measured
    values) and stop adapters whose outputs would overflow."""

    max_bytes: int = 1 << 30
    """The two files together, and the declared content of an archive."""
    max_rank: int = 256
    """Every module's LoRA rank."""
    max_header_bytes: int = 16 << 20
    """The safetensors JSON header."""
    max_tensors: int = 65_536
    max_archive_members: int = 1_000
    max_scaling: float = 1024.0
    """Each module's effective scaling: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
    max_weight_abs: float = 1024.0
    """Every weight's magnitude."""
    validation_budget_s: float = 30.0
    """The wall-clock budget of one validation."""


@dataclass(frozen=True, eq=False)
class AdapterFiles:
    """The raw content of an adapter's two files, not yet validated (see :data:`Payload`)."""

    config_bytes: bytes
    """``adapter_config.json``, at most 1 MiB."""
    weights_bytes: Payload
    """``adapter_model.safetensors``, mapped from a spooled copy above 1 MiB."""

    def __eq__(self, other: object) -> bool:
        # By content: a mapped file and bytes with the same content are equal.
        if not isinstance(other, AdapterFiles):
            return NotImplemented
        return self.config_bytes == other.config_bytes and memoryview(
            self.weights_bytes
        ) == memoryview(other.weights_bytes)

    __hash__ = None  # type: ignore[assignment]

    @property
    def size_bytes(self) -> int:
        return len(self.config_bytes) + len(self.weights_bytes)


def _too_large(what: str, size: int, limits: AdapterLimits) -> AdapterTooLargeError:
    return AdapterTooLargeError(
        f"{what} is {size} bytes, more than the cap of {limits.max_bytes} bytes: "
        "push a smaller adapter (lower rank or fewer target modules, or float16/bfloat16 "
        "weights) or ask the operator to raise the cap"
    )


def _pickle_refused(what: str) -> UnsafeFormatError:
    return UnsafeFormatError(
        f"{what} is a pickle file, which is never loaded because unpickling can run "
        f"arbitrary code; {_SAVE_SAFETENSORS}"
    )


def _is_pickle(name: str) -> bool:
    return name.lower().endswith(_PICKLE_SUFFIXES)


def _archive_kind(name: str) -> str | None:
    lower = name.lower()
    for kind, suffixes in (("tgz", _TGZ_SUFFIXES), ("tar", _TAR_SUFFIXES), ("zip", _ZIP_SUFFIXES)):
        if lower.endswith(suffixes):
            return kind
    return None


def _pick(found: Mapping[str, Payload], origin: str) -> AdapterFiles:
    """Choose the config and weights among ``found`` (basename -> content) or explain why not."""
    config, weights = found.get(CONFIG_NAME), found.get(WEIGHTS_NAME)
    # Other pickles (training_args.bin, optimizer.pt) are left alone: not adapter weights.
    pickled = sorted(n for n in found if _is_pickle(n) and n.startswith(_PICKLE_WEIGHTS_STEM))
    if weights is None and pickled:
        raise _pickle_refused(f"{origin}: {pickled[0]}")
    if config is None:
        raise InvalidConfigError(f"{origin} has no {CONFIG_NAME}; {_GIVE_BOTH}")
    if weights is None:
        raise MalformedWeightsError(f"{origin} has no {WEIGHTS_NAME}; {_GIVE_BOTH}")
    if len(config) > _MAX_CONFIG_BYTES:
        raise InvalidConfigError(
            f"{origin}: {CONFIG_NAME} is {len(config)} bytes, more than {_MAX_CONFIG_BYTES}; "
            "a PEFT adapter config is a few KB: save it with peft_model.save_pretrained(dir)"
        )
    return AdapterFiles(config_bytes=bytes(config), weights_bytes=weights)


def _read_capped(
    stream: IO[bytes], cap: int, what: str, limits: AdapterLimits, *, counted: int = 0
) -> Payload:
    """Up to ``cap`` bytes of ``stream``: in memory if small, else spooled and mapped.
    ``counted`` bytes of ``what`` were read before (the refusal reports the sum)."""
    head = stream.read(min(cap, _IN_MEMORY_BYTES) + 1)
    if len(head) <= _IN_MEMORY_BYTES:
        if len(head) > cap:
            raise _too_large(what, counted + len(head), limits)
        return head
    with tempfile.TemporaryFile(prefix="loramux-upload-") as spool:
        spool.write(head)
        size = len(head)
        del head
        while chunk := stream.read(min(_SPOOL_CHUNK, cap + 1 - size)):
            size += len(chunk)
            if size > cap:
                raise _too_large(what, counted + size, limits)
            spool.write(chunk)
        spool.flush()
        # The mapping keeps the (nameless) file's pages after it is closed.
        return mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ)


def _read_file(path: Path, limits: AdapterLimits, budget: int) -> Payload:
    """Read a regular file, refusing it before reading when it is larger than ``budget``."""
    try:
        # Checked before opening too: opening a named pipe would block until a writer comes.
        if not stat.S_ISREG(path.stat().st_mode):
            raise InvalidAdapterError(f"{path} is not a regular file; {_GIVE_BOTH}")
        with path.open("rb") as f:
            info = os.fstat(f.fileno())
            if info.st_size > budget:
                raise _too_large(str(path), info.st_size, limits)
            return _read_capped(f, budget, str(path), limits)
    except OSError as e:
        raise InvalidAdapterError(f"cannot read {path}: {e.strerror or e}; {_GIVE_BOTH}") from e


def read_adapter_source(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    limits: AdapterLimits = AdapterLimits(),
) -> AdapterFiles:
    """Read an adapter from a directory, an archive, or its two files (any order).

    Raises:
        UnsafeFormatError: pickle weights, or an archive member that is a link, a
            device, a duplicate, or whose name is absolute or climbs out with ``..``.
        AdapterTooLargeError: the files or the archive's content exceed ``max_bytes``.
        InvalidConfigError: no ``adapter_config.json``.
        MalformedWeightsError: no ``adapter_model.safetensors``.
        InvalidAdapterError: the path does not exist, the archive is unreadable or
            empty, or it holds more than one adapter.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            return _read_directory(path, limits)
        kind = _archive_kind(path.name)
        if kind is not None and path.is_file():
            return _read_archive_file(path, kind, limits)
        if not path.exists():
            raise InvalidAdapterError(f"{path} does not exist; {_GIVE_BOTH}")
        paths = [path]
    else:
        paths = [Path(p) for p in source]
    return _read_file_pair(paths, limits)


def _read_directory(path: Path, limits: AdapterLimits) -> AdapterFiles:
    names = {p.name for p in path.iterdir()}
    # Pickles are only named, never read: _pick refuses them when no safetensors is there.
    found: dict[str, Payload] = {n: b"" for n in names if _is_pickle(n)}
    budget = limits.max_bytes
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if name in names:
            found[name] = _read_file(path / name, limits, budget)
            budget -= len(found[name])
    return _pick(found, str(path))


def _read_file_pair(paths: list[Path], limits: AdapterLimits) -> AdapterFiles:
    for p in paths:
        if _is_pickle(p.name):
            raise _pickle_refused(str(p))
    if len(paths) != 2:
        shown = ", ".join(str(p) for p in paths) or "nothing"
        raise InvalidAdapterError(f"got {shown}; {_GIVE_BOTH}")
    by_role: dict[str, Path] = {}
    for p in paths:
        role = _role_of(p.name)
        if role is None or role in by_role:
            raise InvalidAdapterError(
                f"cannot tell which of {paths[0]} and {paths[1]} is the config (.json) and "
                f"which the weights (.safetensors); {_GIVE_BOTH}"
            )
        if not p.is_file():
            raise InvalidAdapterError(f"{p} does not exist or is not a file; {_GIVE_BOTH}")
        by_role[role] = p
    config = _read_file(by_role[CONFIG_NAME], limits, limits.max_bytes)
    weights = _read_file(by_role[WEIGHTS_NAME], limits, limits.max_bytes - len(config))
    return AdapterFiles(config_bytes=config, weights_bytes=weights)


def _role_of(filename: str) -> str | None:
    """Which of the two files a loose file is, by extension."""
    lower = filename.lower()
    if lower.endswith(".json"):
        return CONFIG_NAME
    if lower.endswith(".safetensors"):
        return WEIGHTS_NAME
    return None


def read_adapter_upload(
    files: Mapping[str, bytes | IO[bytes]], limits: AdapterLimits = AdapterLimits()
) -> AdapterFiles:
    """Read an adapter from uploaded files (their content, or binary files positioned at
    their start): one archive, or the config and the weights.

    File names only say which file is which (by extension); they are checked like
    archive member names and never used as paths. The files are read as
    :func:`read_adapter_source` reads (in chunks, up to the cap).

    Raises:
        The same errors as :func:`read_adapter_source`.
    """
    streams = {
        name: io.BytesIO(data) if isinstance(data, bytes) else data for name, data in files.items()
    }
    for name in streams:
        _safe_member_path(name, "upload")
    if len(streams) == 1:
        ((name, stream),) = streams.items()
        kind = _archive_kind(name)
        if kind is not None:
            return _read_archive(stream, kind, name, limits)
    by_role: dict[str, tuple[str, IO[bytes]]] = {}
    for name, stream in streams.items():
        if _is_pickle(name):
            raise _pickle_refused(f"the upload: {name}")
        role = _role_of(name)
        if role is None or role in by_role:
            raise InvalidAdapterError(
                f"the upload holds {sorted(files)}; upload one .tar/.tar.gz/.zip archive, "
                f"or {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        by_role[role] = (name, stream)
    found: dict[str, Payload] = {}
    counted = 0
    for role, (_, stream) in by_role.items():
        budget = limits.max_bytes - counted
        found[role] = _read_capped(stream, budget, "the upload", limits, counted=counted)
        counted += len(found[role])
    return _pick(found, "the upload")


# ---- archives -------------------------------------------------------------------------


def _safe_member_path(name: str, origin: str) -> str:
    """The member's normalized path; raise if it could escape or is not a plain name."""
    if not name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafeFormatError(
            f"{origin}: member name {name!r} is empty or holds control characters; "
            "re-create the archive from a plain adapter directory"
        )
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeFormatError(
            f"{origin}: member {name!r} has an absolute or Windows-style path, which could "
            "write outside the target directory; archive with relative paths "
            "(tar -C adapter_dir -czf adapter.tar.gz .)"
        )
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeFormatError(
            f"{origin}: member {name!r} climbs out of the archive with '..'; "
            "archive with relative paths (tar -C adapter_dir -czf adapter.tar.gz .)"
        )
    return "/".join(parts)


# What tarfile, zipfile and their decompressors raise on damaged input; hostile bytes
# reach far into zipfile's parser (version, compression method, flag checks).
_UNREADABLE_ARCHIVE = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    OSError,  # includes gzip.BadGzipFile
    EOFError,
    NotImplementedError,
    ValueError,  # includes UnicodeDecodeError of member names
    struct.error,
    OverflowError,
)


class _CappedReader(io.RawIOBase):
    """Counts decompressed bytes read through it and stops at the cap (archive bombs)."""

    def __init__(self, inner: IO[bytes], cap: int, what: str, limits: AdapterLimits) -> None:
        self._inner, self._cap, self._what, self._limits = inner, cap, what, limits
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self._cap + 1 - self.count if size < 0 else min(size, self._cap + 1 - self.count)
        data = self._inner.read(want)
        self.count += len(data)
        if self.count > self._cap:
            raise _too_large(f"{self._what} (expanded)", self.count, self._limits)
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_archive_file(path: Path, kind: str, limits: AdapterLimits) -> AdapterFiles:
    try:
        with path.open("rb") as f:
            return _read_archive(f, kind, str(path), limits)
    except OSError as e:
        raise InvalidAdapterError(f"cannot read {path}: {e.strerror or e}") from e


def _read_archive(stream: IO[bytes], kind: str, origin: str, limits: AdapterLimits) -> AdapterFiles:
    try:
        members = (
            _zip_members(stream, origin, limits)
            if kind == "zip"
            else _tar_members(stream, kind == "tgz", origin, limits)
        )
        found = _collect(members, origin, limits)
    except _UNREADABLE_ARCHIVE as e:
        raise InvalidAdapterError(
            f"{origin} is not a readable {kind} archive ({e}); re-create it, or {_GIVE_BOTH}"
        ) from e
    return found


def _collect(
    members: Iterator[tuple[str, IO[bytes] | None, int]], origin: str, limits: AdapterLimits
) -> AdapterFiles:
    """Check every member, keep the adapter files' bytes, and pick one adapter.

    ``members`` yields ``(path, reader or None for a folder, declared size)``; a reader
    is only valid until the next member is requested.
    """
    seen: set[str] = set()
    declared = 0
    files: dict[str, Payload] = {}  # member path -> content, for the two adapter files
    pickles: list[str] = []
    for count, (raw_name, reader, size) in enumerate(members, start=1):
        if count > limits.max_archive_members:
            raise InvalidAdapterError(
                f"{origin} has more than {limits.max_archive_members} members; archive "
                "only the adapter's two files"
            )
        path = _safe_member_path(raw_name, origin)
        if path in seen:
            raise UnsafeFormatError(
                f"{origin} lists {path!r} twice, so extraction would silently replace one "
                "copy with the other; re-create the archive"
            )
        seen.add(path)
        if reader is None:
            continue
        declared += size
        if declared > limits.max_bytes:
            raise _too_large(f"the content of {origin}", declared, limits)
        base = posixpath.basename(path)
        if base in (CONFIG_NAME, WEIGHTS_NAME):
            files[path] = _read_capped(reader, size, f"{origin}:{path}", limits)
        elif _is_pickle(base):
            pickles.append(path)
    if not seen:
        raise InvalidAdapterError(f"{origin} is an empty archive; {_GIVE_BOTH}")
    folders = {posixpath.dirname(p) for p in files}
    if len(folders) > 1:
        raise InvalidAdapterError(
            f"{origin} holds adapter files in several folders ({', '.join(sorted(folders))}); "
            "archive exactly one adapter"
        )
    found: dict[str, Payload] = {posixpath.basename(p): b"" for p in pickles}
    found.update({posixpath.basename(p): data for p, data in files.items()})
    return _pick(found, origin)


def _tar_members(
    stream: IO[bytes], gzipped: bool, origin: str, limits: AdapterLimits
) -> Iterator[tuple[str, IO[bytes] | None, int]]:
    # Streaming mode ("r|") reads the archive once, front to back, through the counting
    # reader: neither a gzip bomb nor a giant pax header can get past the cap.
    source: IO[bytes] = gzip.GzipFile(fileobj=stream, mode="rb") if gzipped else stream
    cap = limits.max_bytes + _TAR_OVERHEAD_PER_MEMBER * (limits.max_archive_members + 1)
    capped = io.BufferedReader(_CappedReader(source, cap, origin, limits))
    with tarfile.open(fileobj=capped, mode="r|") as archive:
        for member in archive:
            if member.isdir():
                yield member.name, None, 0
            elif member.isfile():
                yield member.name, archive.extractfile(member), member.size
            else:
                raise UnsafeFormatError(
                    f"{origin}: member {member.name!r} is a {_tar_type(member)}; only regular "
                    "files and folders are accepted, as links and devices can reach outside "
                    "the extraction directory: archive regular files only (tar --dereference)"
                )


def _tar_type(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "named pipe"
    return "special file"


def _zip_members(
    stream: IO[bytes], origin: str, limits: AdapterLimits
) -> Iterator[tuple[str, IO[bytes] | None, int]]:
    with zipfile.ZipFile(stream) as archive:
        infos = archive.infolist()
        # The central directory is checked whole before any data is inflated.
        declared = sum(i.file_size for i in infos)
        if declared > limits.max_bytes:
            raise _too_large(f"the content of {origin}", declared, limits)
        for info in infos:
            # Unix file type bits, when the archiver recorded them (0 from other systems).
            file_type = stat.S_IFMT(info.external_attr >> 16)
            if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeFormatError(
                    f"{origin}: member {info.filename!r} is a link or special file; only "
                    "regular files and folders are accepted, as links and devices can reach "
                    "outside the extraction directory: archive regular files only"
                )
            if info.flag_bits & 0x1:
                raise InvalidAdapterError(
                    f"{origin}: member {info.filename!r} is encrypted; re-create the archive "
                    "without a password"
                )
            if info.is_dir():
                yield info.filename, None, 0
            else:
                with archive.open(info) as member:
                    yield info.filename, member, info.file_size
