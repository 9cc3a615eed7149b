"""A bundle folder that also holds a user's own files: a new bundle replaces only what the
old manifest lists, and refuses (naming the extra files) when there is anything else, unless
--force."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from swipr_core.errors import SwiprError
from swipr_core.serve import bundle
from tests.studykit import one_line_error, run_cli, write_study

MANIFEST = {"arch": "test_resnet", "cache_px": 48, "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
            "classes": ["NO", "YES"], "threshold": 0.42, "study": "demo", "trial": 3}


def write_bundle(out: Path, onnx: bytes, force: bool = False) -> str:
    forced = {"force": True} if force else {}
    staging = bundle.staging_dir(out, **forced)
    (staging / bundle.ONNX).write_bytes(onnx)
    (staging / bundle.WEIGHTS).write_bytes(b"safetensors bytes")
    return bundle.finish(staging, out, MANIFEST, **forced)


def copied_bundle_with_notes(tmp_path: Path) -> Path:
    """What the issue did: a real folder copied from a bundle, then the user's thesis and notes added."""
    write_bundle(tmp_path / "first", b"old")
    copy = tmp_path / "model"
    shutil.copytree(tmp_path / "first", copy)   # follows the link: a real folder
    (copy / "thesis.txt").write_text("chapter 1")
    (copy / "notes").mkdir()
    (copy / "notes" / "a.md").write_text("keep me")
    return copy


def test_a_bundle_with_the_users_files_is_refused_and_nothing_is_touched(tmp_path):
    out = copied_bundle_with_notes(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for step in (lambda: bundle.check_target(out), lambda: write_bundle(out, b"new")):
        with pytest.raises(SwiprError) as error:
            step()
        assert "notes/, thesis.txt" in str(error.value) and "--force" in str(error.value)
    assert (out / "thesis.txt").read_text() == "chapter 1"
    assert (out / "notes" / "a.md").read_text() == "keep me"
    assert bundle.verify(out).contents[bundle.ONNX] == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # no staging folder left


def test_force_replaces_the_folder_whole(tmp_path):
    out = copied_bundle_with_notes(tmp_path)
    write_bundle(out, b"new", force=True)
    assert bundle.verify(out).contents[bundle.ONNX] == b"new"
    assert not (out / "thesis.txt").exists()


def test_a_file_added_through_the_link_is_the_users_too(tmp_path):
    out = tmp_path / "model"
    write_bundle(out, b"first")
    write_bundle(out, b"second")   # only listed files: replaced without a word
    (out / "README.txt").write_text("mine")   # written into the version the link points at
    with pytest.raises(SwiprError, match="README.txt, which the bundle's manifest doesn't list"):
        write_bundle(out, b"third")
    assert (out / "README.txt").read_text() == "mine"
    assert bundle.verify(out).contents[bundle.ONNX] == b"second"


def test_a_file_added_while_the_model_trains_is_refused_at_the_swap(tmp_path):
    out = tmp_path / "model"
    write_bundle(out, b"first")
    staging = bundle.staging_dir(out)   # the check before training passes
    (staging / bundle.ONNX).write_bytes(b"second")
    (staging / bundle.WEIGHTS).write_bytes(b"w")
    (out / "draft.docx").write_text("written meanwhile")
    with pytest.raises(SwiprError, match="draft.docx"):
        bundle.finish(staging, out, MANIFEST)
    assert (out / "draft.docx").exists() and bundle.verify(out).contents[bundle.ONNX] == b"first"


def test_swipr_fit_refuses_in_one_line_before_any_work(tmp_path, data_dir):
    path = write_study(tmp_path, data_dir)   # no study in its storage yet: the refusal must come first
    out = copied_bundle_with_notes(tmp_path)
    line = one_line_error(run_cli("fit", path, "--out", out))
    assert f"{out}: holds notes/, thesis.txt, which the bundle's manifest doesn't list" in line
    # --force passes this check; the run then stops at the next one (no study yet), touching nothing.
    forced = one_line_error(run_cli("fit", path, "--out", out, "--force"))
    assert "thesis.txt" not in forced and "no such database file" in forced
    assert (out / "thesis.txt").read_text() == "chapter 1"
