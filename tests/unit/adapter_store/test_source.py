"""Reading adapters from directories, archives, loose files and uploads, safely."""

from __future__ import annotations

import contextlib
import gzip
import io
import mmap
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from adapter_store import CONFIG_NAME
from adapter_store import WEIGHTS_NAME
from adapter_store import AdapterFiles
from adapter_store import AdapterLimits
from adapter_store import AdapterTooLargeError
from adapter_store import InvalidAdapterError
from adapter_store import InvalidConfigError
from adapter_store import MalformedWeightsError
from adapter_store import UnsafeFormatError
from adapter_store import read_adapter_source
from adapter_store import read_adapter_upload

CONFIG = b'{"peft_type": "LORA"}'
WEIGHTS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
EXPECTED = AdapterFiles(config_bytes=CONFIG, weights_bytes=WEIGHTS)


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    """An adapter directory as PEFT leaves it after training, with extra files."""
    d = tmp_path / "adapter"
    d.mkdir()
    (d / CONFIG_NAME).write_bytes(CONFIG)
    (d / WEIGHTS_NAME).write_bytes(WEIGHTS)
    (d / "README.md").write_text("# my adapter")
    (d / "training_args.bin").write_bytes(b"\x80\x04 not to be read")
    return d


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


ADAPTER = {CONFIG_NAME: CONFIG, WEIGHTS_NAME: WEIGHTS}


def test_directory(adapter_dir):
    assert read_adapter_source(adapter_dir) == EXPECTED
    assert read_adapter_source(str(adapter_dir)) == EXPECTED


def test_two_files_in_either_order_and_under_any_name(adapter_dir, tmp_path):
    config, weights = adapter_dir / CONFIG_NAME, adapter_dir / WEIGHTS_NAME
    assert read_adapter_source([config, weights]) == EXPECTED
    assert read_adapter_source((str(weights), str(config))) == EXPECTED
    (tmp_path / "cfg.json").write_bytes(CONFIG)
    (tmp_path / "w.safetensors").write_bytes(WEIGHTS)
    assert read_adapter_source([tmp_path / "w.safetensors", tmp_path / "cfg.json"]) == EXPECTED


@pytest.mark.parametrize(
    ("filename", "make"),
    [
        ("a.tar", lambda m: tar_bytes(m, "w")),
        ("a.tar.gz", tar_bytes),
        ("a.TGZ", tar_bytes),
        ("a.zip", zip_bytes),
    ],
)
@pytest.mark.parametrize("folder", ["", "my-adapter/", "./"])
def test_archives_at_root_or_in_one_folder(tmp_path, filename, make, folder):
    members = {folder + name: data for name, data in ADAPTER.items()}
    members[folder + "README.md"] = b"hello"
    path = tmp_path / filename
    path.write_bytes(make(members))
    assert read_adapter_source(path) == EXPECTED
    assert read_adapter_upload({filename: path.read_bytes()}) == EXPECTED


def test_tar_made_by_tar_of_a_directory(adapter_dir, tmp_path):
    path = tmp_path / "adapter.tgz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(adapter_dir, arcname=".")
    assert read_adapter_source(path) == EXPECTED


def test_upload_of_the_two_files():
    upload = {"adapter_model.safetensors": WEIGHTS, "adapter_config.json": CONFIG}
    assert read_adapter_upload(upload) == EXPECTED


@pytest.mark.parametrize(
    ("upload", "error", "message"),
    [
        (
            {"../adapter_config.json": CONFIG, WEIGHTS_NAME: WEIGHTS},
            UnsafeFormatError,
            "climbs out",
        ),
        ({"/etc/x.json": CONFIG, WEIGHTS_NAME: WEIGHTS}, UnsafeFormatError, "absolute"),
        (
            {CONFIG_NAME: CONFIG, "adapter_model.bin": b"\x80"},
            UnsafeFormatError,
            "is a pickle file",
        ),
        (
            {CONFIG_NAME: CONFIG},
            MalformedWeightsError,
            "the upload has no adapter_model.safetensors",
        ),
        (
            {CONFIG_NAME: CONFIG, WEIGHTS_NAME: WEIGHTS, "x.json": b"{}"},
            InvalidAdapterError,
            "upload one",
        ),
        ({"a.json": CONFIG, "b.json": CONFIG}, InvalidAdapterError, "upload one"),
        ({"a.zip": b"not a zip"}, InvalidAdapterError, "is not a readable zip archive"),
    ],
)
def test_bad_uploads(upload, error, message):
    with pytest.raises(error) as excinfo:
        read_adapter_upload(upload)
    assert type(excinfo.value) is error
    assert message in str(excinfo.value)


def test_upload_size_cap():
    size = len(CONFIG) + len(WEIGHTS)
    with pytest.raises(
        AdapterTooLargeError, match=f"the upload is {size} bytes, more than the cap"
    ):
        read_adapter_upload(ADAPTER, AdapterLimits(max_bytes=size - 1))


def test_huge_file_is_refused_before_reading(adapter_dir):
    # A sparse 10 GiB file: refused on its size, not read into memory.
    with (adapter_dir / WEIGHTS_NAME).open("r+b") as f:
        f.truncate(10 << 30)
    with pytest.raises(AdapterTooLargeError, match="is 10737418240 bytes, more than the cap"):
        read_adapter_source(adapter_dir)


def test_pickle_directory_is_refused_without_reading_it(tmp_path):
    (tmp_path / CONFIG_NAME).write_bytes(CONFIG)
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80")
    (tmp_path / "optimizer.pt").write_bytes(b"\x80")
    with pytest.raises(
        UnsafeFormatError, match=r"adapter_model\.bin is a pickle file.*safe_serialization=True"
    ):
        read_adapter_source(tmp_path)


def test_declared_zip_sizes_are_capped_before_inflating(tmp_path):
    path = tmp_path / "bomb.zip"
    path.write_bytes(zip_bytes({CONFIG_NAME: CONFIG, WEIGHTS_NAME: b"\x00" * (2 << 20)}))
    assert path.stat().st_size < 20_000
    with pytest.raises(AdapterTooLargeError, match=r"the content of .*bomb\.zip is 2097173 bytes"):
        read_adapter_source(path, AdapterLimits(max_bytes=1 << 20))


def test_declared_tar_sizes_are_capped(tmp_path):
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(tar_bytes({CONFIG_NAME: CONFIG, WEIGHTS_NAME: b"\x00" * (2 << 20)}))
    with pytest.raises(AdapterTooLargeError, match="the content of"):
        read_adapter_source(path, AdapterLimits(max_bytes=1 << 20))


def test_expanded_tar_stream_is_capped_against_giant_pax_headers(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo(CONFIG_NAME)
        info.size = len(CONFIG)
        info.pax_headers = {"comment": "x" * (3 << 20)}
        archive.addfile(info, io.BytesIO(CONFIG))
    path = tmp_path / "pax.tar.gz"
    path.write_bytes(buf.getvalue())
    with pytest.raises(AdapterTooLargeError, match=r"\(expanded\)"):
        read_adapter_source(path, AdapterLimits(max_bytes=1 << 20, max_archive_members=10))


def test_member_count_cap(tmp_path):
    members = {f"notes/{i}.txt": b"" for i in range(20)} | ADAPTER
    path = tmp_path / "many.tar"
    path.write_bytes(tar_bytes(members, "w"))
    with pytest.raises(InvalidAdapterError, match="more than 10 members"):
        read_adapter_source(path, AdapterLimits(max_archive_members=10))


def test_two_adapters_in_one_archive(tmp_path):
    members = {f"{d}/{n}": b for d in ("ckpt-1", "ckpt-2") for n, b in ADAPTER.items()}
    path = tmp_path / "two.zip"
    path.write_bytes(zip_bytes(members))
    with pytest.raises(InvalidAdapterError, match="several folders \\(ckpt-1, ckpt-2\\)"):
        read_adapter_source(path)


def test_encrypted_zip_member(tmp_path):
    data = bytearray(zip_bytes({CONFIG_NAME: CONFIG}))
    # zipfile cannot write encrypted members: set the "encrypted" flag bit by hand in the
    # local header (flags at offset 6) and the central directory entry (offset 8).
    data[data.index(b"PK\x03\x04") + 6] |= 0x1
    data[data.index(b"PK\x01\x02") + 8] |= 0x1
    path = tmp_path / "locked.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidAdapterError, match="is encrypted"):
        read_adapter_source(path)


@pytest.mark.parametrize("filename", ["x.zip", "x.tar.gz", "x.tar"])
def test_corrupt_archives(tmp_path, filename):
    path = tmp_path / filename
    path.write_bytes(gzip.compress(b"garbage" * 100) if filename == "x.tar" else b"garbage" * 100)
    with pytest.raises(InvalidAdapterError, match="is not a readable"):
        read_adapter_source(path)


def test_truncated_tar_gz(tmp_path):
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(tar_bytes(ADAPTER)[:60])
    with pytest.raises(InvalidAdapterError, match="is not a readable tgz archive"):
        read_adapter_source(path)


def test_zip_directory_entries_are_fine(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.mkdir("adapter")
        for name, data in ADAPTER.items():
            archive.writestr(f"adapter/{name}", data)
    path = tmp_path / "a.zip"
    path.write_bytes(buf.getvalue())
    assert read_adapter_source(path) == EXPECTED


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        (["missing-dir"], "does not exist"),
        (["only.json"], "got "),
        ([], "got nothing"),
        (["a.json", "b.json"], "cannot tell which"),
        (["a.json", "b.txt"], "cannot tell which"),
    ],
)
def test_wrong_file_sets(tmp_path, paths, message):
    for p in paths:
        if p.endswith((".json", ".txt")):
            (tmp_path / p).write_bytes(CONFIG)
    source = [tmp_path / p for p in paths]
    with pytest.raises(InvalidAdapterError) as excinfo:
        read_adapter_source(source[0] if len(source) == 1 else source)
    assert type(excinfo.value) is InvalidAdapterError
    assert message in str(excinfo.value)


def test_named_pipe_is_not_opened(tmp_path):
    (tmp_path / CONFIG_NAME).write_bytes(CONFIG)
    os.mkfifo(tmp_path / WEIGHTS_NAME)
    with pytest.raises(InvalidAdapterError, match="is not a regular file"):
        read_adapter_source(tmp_path)


def test_empty_directory_names_the_missing_config(tmp_path):
    with pytest.raises(InvalidConfigError, match=r"has no adapter_config\.json"):
        read_adapter_source(tmp_path)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["a.zip", "a.tar", "a.tar.gz"]),
    st.binary(max_size=600),
    st.integers(0, 2000),
)
def test_hostile_archive_bytes_raise_only_adapter_errors(filename, noise, cut):
    # Start from a real archive so the fuzzing reaches past the magic bytes, then damage it.
    make = zip_bytes if filename.endswith(".zip") else tar_bytes
    data = make(ADAPTER)
    data = data[:cut] + noise + data[cut + len(noise) :]
    with contextlib.suppress(InvalidAdapterError):
        read_adapter_upload({filename: data}, AdapterLimits(max_bytes=1 << 16))


def test_training_pickles_next_to_a_missing_weights_file_are_not_blamed(tmp_path):
    (tmp_path / CONFIG_NAME).write_bytes(CONFIG)
    (tmp_path / "training_args.bin").write_bytes(b"\x80")
    with pytest.raises(MalformedWeightsError, match=r"has no adapter_model\.safetensors"):
        read_adapter_source(tmp_path)


def test_a_large_weights_file_is_spooled_into_a_mapping_and_reads_the_same(tmp_path):
    weights = WEIGHTS + bytes(range(256)) * (8 << 10)  # 2 MiB past the header bytes
    (tmp_path / CONFIG_NAME).write_bytes(CONFIG)
    (tmp_path / WEIGHTS_NAME).write_bytes(weights)

    from_disk = read_adapter_source(tmp_path)
    from_upload = read_adapter_upload({CONFIG_NAME: CONFIG, WEIGHTS_NAME: io.BytesIO(weights)})

    assert isinstance(from_disk.weights_bytes, mmap.mmap)  # not held in memory
    assert from_disk == from_upload == AdapterFiles(CONFIG, weights)
    assert from_disk.size_bytes == len(CONFIG) + len(weights)


def test_a_config_above_one_mib_is_refused_naming_its_size():
    config = b'{"r": 8, "padding": "' + b"x" * (1 << 20) + b'"}'

    with pytest.raises(
        InvalidConfigError, match=r"adapter_config.json is 1048599 bytes, more than 1048576"
    ):
        read_adapter_upload({CONFIG_NAME: config, WEIGHTS_NAME: WEIGHTS})
