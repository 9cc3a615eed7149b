"""Bundle files on disk: hashed manifest, atomic replace, and refusal of any changed byte."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from swipr_core.errors import SwiprError
from swipr_core.serve import bundle

MANIFEST = {"arch": "test_resnet", "cache_px": 48, "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
            "classes": ["NO", "YES"], "threshold": 0.42, "study": "demo", "trial": 3}


def write_bundle(out: Path, onnx: bytes = b"onnx graph bytes", weights: bytes = b"safetensors bytes") -> str:
    staging = bundle.staging_dir(out)
    (staging / bundle.ONNX).write_bytes(onnx)
    (staging / bundle.WEIGHTS).write_bytes(weights)
    return bundle.finish(staging, out, MANIFEST)


def only_the_bundle(folder: Path, out: Path) -> bool:
    """`folder` holds `out` (a link) and the one version it points at: no staging folder,
    no replaced version, no link left behind."""
    return sorted(p.name for p in folder.iterdir()) == sorted([out.name, os.readlink(out)])


def flip(file: Path, position: int) -> None:
    data = bytearray(file.read_bytes())
    data[position] ^= 0x01
    file.write_bytes(bytes(data))


def test_written_bundle_verifies_and_hashes_every_file(tmp_path):
    out = tmp_path / "b"
    sha = write_bundle(out)
    verified = bundle.verify(out, load=(bundle.ONNX,))
    # The manifest names each file's SHA-256; the returned hash is the manifest file's.
    assert verified.manifest["files"][bundle.ONNX]["sha256"] == bundle.sha256_bytes(b"onnx graph bytes")
    assert verified.manifest["files"][bundle.WEIGHTS]["sha256"] == bundle.sha256_bytes(b"safetensors bytes")
    assert sha == verified.manifest_sha256 == bundle.sha256_file(out / bundle.MANIFEST)
    assert verified.contents == {bundle.ONNX: b"onnx graph bytes"}
    assert verified.manifest["threshold"] == 0.42
    assert only_the_bundle(tmp_path, out)


@pytest.mark.parametrize("name", [bundle.ONNX, bundle.WEIGHTS, bundle.MANIFEST])
def test_one_changed_byte_anywhere_is_refused(tmp_path, name):
    # Every position of every file: a flipped bit is either bad JSON, a manifest whose
    # checksum fails, or a file whose SHA-256 doesn't match.
    out = tmp_path / "b"
    write_bundle(out)
    file = out / name
    original = file.read_bytes()
    for position in range(len(original)):
        flip(file, position)
        with pytest.raises(SwiprError):
            bundle.verify(out)
        file.write_bytes(original)
    bundle.verify(out)


def test_edited_manifest_value_is_refused(tmp_path):
    out = tmp_path / "b"
    write_bundle(out)
    manifest = json.loads((out / bundle.MANIFEST).read_text())
    manifest["threshold"] = 0.1   # still valid JSON, but not what was written
    (out / bundle.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SwiprError, match="checksum"):
        bundle.verify(out)


def test_missing_file_and_escaping_names_are_refused(tmp_path):
    out = tmp_path / "b"
    write_bundle(out)
    (out / bundle.WEIGHTS).unlink()
    with pytest.raises(SwiprError, match="can't be read"):
        bundle.verify(out)
    write_bundle(out)
    manifest = json.loads((out / bundle.MANIFEST).read_text())
    manifest["files"]["../secret"] = {"sha256": "0" * 64}
    manifest[bundle.CHECKSUM_KEY] = bundle.manifest_checksum(manifest)
    (out / bundle.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SwiprError, match="plain file name"):
        bundle.verify(out)


def test_not_a_bundle(tmp_path):
    with pytest.raises(SwiprError, match="not a model bundle"):
        bundle.verify(tmp_path)
    (tmp_path / bundle.MANIFEST).write_text('{"format": "something else"}')
    with pytest.raises(SwiprError, match="not a swipr-bundle"):
        bundle.verify(tmp_path)


def test_previous_bundle_is_replaced_but_other_folders_are_not(tmp_path):
    out = tmp_path / "b"
    write_bundle(out, onnx=b"first")
    write_bundle(out, onnx=b"second")
    assert bundle.verify(out).contents[bundle.ONNX] == b"second"
    assert only_the_bundle(tmp_path, out)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.jpg").write_bytes(b"x")
    with pytest.raises(SwiprError, match="not empty"):
        bundle.staging_dir(other)
    assert (other / "keep.jpg").read_bytes() == b"x"
    (tmp_path / "file").write_text("x")
    with pytest.raises(SwiprError, match="not a folder"):
        bundle.check_target(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_bundle(empty)
    bundle.verify(empty)


def test_special_and_oversized_files_are_refused_before_reading(tmp_path):
    out = tmp_path / "b"
    write_bundle(out)
    (out / bundle.WEIGHTS).unlink()
    os.mkfifo(out / bundle.WEIGHTS)   # hashing it would wait forever for a writer
    with pytest.raises(SwiprError, match="model.safetensors: not a regular file"):
        bundle.verify(out)
    write_bundle(out)
    (out / bundle.ONNX).write_bytes(b"onnx graph bytes" + b"x" * 1000)   # more than the manifest's size
    with pytest.raises(SwiprError, match="model.onnx: larger than 16 bytes"):
        bundle.verify(out)
    write_bundle(out)
    (out / bundle.MANIFEST).write_bytes(b" " * (bundle.MAX_MANIFEST_BYTES + 1))
    with pytest.raises(SwiprError, match="larger than"):
        bundle.verify(out)
    assert not bundle.is_bundle(out)


def test_expect_sha256_must_match_the_manifest_file(tmp_path):
    out = tmp_path / "b"
    digest = write_bundle(out)
    assert bundle.verify(out, expect_sha256=digest).manifest_sha256 == digest
    with pytest.raises(SwiprError, match=f"SHA-256 {digest} is not the expected {'a' * 64}"):
        bundle.verify(out, expect_sha256="a" * 64)
    with pytest.raises(SwiprError, match="64 hex digits"):
        bundle.verify(out, expect_sha256="xyz")
