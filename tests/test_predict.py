"""`swipr predict`: a verified bundle answers YES/NO on the CPU without torch, row per image."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swipr_core.data.images import load_square
from swipr_core.errors import SwiprError
from swipr_core.serve import bundle
from swipr_core.serve.predict import Predictor, expand_inputs

# One pytest-xdist worker runs this module, so its module-scoped study is built once.
pytestmark = pytest.mark.xdist_group("predict")

ROOT = Path(__file__).resolve().parents[1]
SWIPR = [sys.executable, "-m", "search.cli"]
CACHE_PX, IMAGE_SIZE = 48, 32


def make_images(folder: Path, n: int = 7) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        # Different sizes and aspect ratios: load_square must bring each to CACHE_PX.
        pixels = rng.integers(0, 256, (40 + 9 * i, 64 - 3 * i, 3), dtype=np.uint8)
        file = folder / f"img_{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(pixels).save(file)
        files.append(file)
    return files


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An untrained tiny network exported as a bundle; threshold at the median probability
    of the demo images so that both answers occur."""
    import timm
    import torch

    from swipr_core.data.loaders import Augment
    from swipr_core.serve.export import ServingModel, export_onnx, save_weights, torch_probs

    root = tmp_path_factory.mktemp("predict")
    images = make_images(root / "photos")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    serving = ServingModel(model, Augment(image_size=IMAGE_SIZE, mean=(0.5,) * 3, std=(0.25,) * 3)).eval()
    pixels = np.stack([load_square(f, CACHE_PX) for f in images])
    reference = torch_probs(serving, pixels)
    out = root / "bundle"
    staging = bundle.staging_dir(out)
    save_weights(model, staging / bundle.WEIGHTS, {"arch": "test_resnet"})
    export_onnx(serving, CACHE_PX, staging / bundle.ONNX)
    manifest = {"arch": "test_resnet", "cache_px": CACHE_PX, "image_size": IMAGE_SIZE, "mean": [0.5] * 3,
                "std": [0.25] * 3, "classes": ["NO", "YES"], "threshold": float(np.median(reference))}
    bundle.finish(staging, out, manifest)
    return out, images, reference


def test_answers_match_pytorch_and_broken_files_get_their_own_row(served, tmp_path):
    out, images, reference = served
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    missing = tmp_path / "missing.jpg"
    predictor = Predictor(out)
    inputs = [images[0], broken, *images[1:4], missing, *images[4:]]
    rows = list(predictor.predict(inputs, batch_size=3))
    # One row per input, in input order; the two bad ones carry an error and no answer.
    assert [row.image for row in rows] == [str(p) for p in inputs]
    assert rows[1].answer is None and "can't decode image" in rows[1].error
    assert rows[5].answer is None and rows[5].error == "no such file"
    good = [row for row in rows if row.error is None]
    probs = np.array([row.p_yes for row in good])
    # The exported model gives PyTorch's probabilities, through predict's own decoding.
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    assert [row.answer for row in good] == ["YES" if p >= predictor.threshold else "NO" for p in probs]
    assert {row.answer for row in good} == {"YES", "NO"}


def test_batch_size_does_not_change_probabilities(served):
    out, images, _ = served
    predictor = Predictor(out)
    one = [row.p_yes for row in predictor.predict(images, batch_size=1)]
    many = [row.p_yes for row in predictor.predict(images, batch_size=32)]
    np.testing.assert_allclose(one, many, atol=1e-6)
    with pytest.raises(SwiprError, match="batch-size"):
        list(predictor.predict(images, batch_size=0))


def test_folders_are_walked_for_every_file_through_symlinked_folders(served, tmp_path):
    # Serving picks files as training does, by decoding, not by suffix: a .jfif and a symlinked
    # folder's files are tried too, every file not hidden once, none skipped without a row.
    _, images, _ = served
    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(images[0].read_bytes())
    (photos / "notes.txt").write_text("not an image")
    (photos / ".hidden.jpg").write_bytes(images[0].read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "b.jfif").write_bytes(images[0].read_bytes())
    (photos / "more" / "linked").symlink_to(elsewhere)
    (photos / "more" / "loop").symlink_to(photos)   # back to a folder above: walked once
    found = expand_inputs([photos, tmp_path / "nope.jpg"])
    assert found == [photos / "a.jpg", photos / "notes.txt", photos / "more/linked/b.jfif", tmp_path / "nope.jpg"]


@pytest.mark.parametrize("suffix", [".jfif", ".jpe", ".heic"])
def test_a_folder_of_unusual_suffixes_gets_a_row_per_file(served, tmp_path, suffix):
    # A folder of only such files printed nothing and exited 0.
    out, images, _ = served
    folder = tmp_path / "photos"
    folder.mkdir()
    # A JPEG named .jfif or .jpe is a JPEG; this .heic holds text, as Pillow can't read HEIC.
    (folder / f"x{suffix}").write_bytes(images[0].read_bytes() if suffix != ".heic" else b"ftypheic...")
    done = run_cli("predict", out, folder, "--json", timeout=60)
    rows = json.loads(done.stdout)["predictions"]
    assert [Path(row["image"]).name for row in rows] == [f"x{suffix}"]
    if suffix == ".heic":
        assert done.returncode == 1 and "can't decode image" in rows[0]["error"]
    else:
        assert done.returncode == 0 and rows[0]["answer"] in ("YES", "NO"), done.stderr


def test_control_characters_in_names_cannot_forge_rows(served, tmp_path):
    out, images, _ = served
    folder = tmp_path / "photos"
    folder.mkdir()
    forged = folder / "a.jpg\nYES   1.0000  forged.jpg"
    forged.write_bytes(images[0].read_bytes())
    (folder / "b\rc.jpg").write_bytes(b"not an image")
    done = run_cli("predict", out, folder, timeout=60)
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout   # one row per file, whatever its name holds
    assert lines[0].endswith("a.jpg\\nYES   1.0000  forged.jpg") and lines[0].split()[0] in ("YES", "NO")
    assert lines[1].startswith("ERROR") and "b\\rc.jpg" in lines[1] and "\r" not in done.stdout


def test_nothing_is_unpickled(served, monkeypatch):
    out, images, _ = served

    def refuse(*args, **kwargs):
        raise AssertionError("predict must never unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert all(row.error is None for row in Predictor(out).predict(images))


def test_predict_needs_neither_torch_nor_training_stack(served):
    # A CPU server has only Pillow, numpy and onnxruntime: predicting must not import more.
    out, images, _ = served
    script = (
        "import sys; from swipr_core.serve.predict import Predictor\n"
        f"rows = list(Predictor({str(out)!r}).predict([{str(images[0])!r}]))\n"
        "assert rows[0].error is None, rows\n"
        "loaded = [m for m in ('torch', 'fastai', 'optuna', 'timm') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_cli_json_rows_and_exit_status(served, tmp_path):
    out, images, _ = served
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"PNG? no")
    done = subprocess.run([*SWIPR, "predict", str(out), str(images[0].parent), str(broken), "--json"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr   # 1: some images could not be read
    report = json.loads(done.stdout)
    rows = report["predictions"]
    assert len(rows) == len(images) + 1
    assert all(row["answer"] in ("YES", "NO") and 0 <= row["p_yes"] <= 1 for row in rows[:-1])
    assert rows[-1]["image"] == str(broken) and rows[-1]["answer"] is None and rows[-1]["error"]
    assert report["manifest_sha256"] == bundle.sha256_file(out / bundle.MANIFEST)
    plain = subprocess.run([*SWIPR, "predict", str(out), str(images[0])], cwd=ROOT, capture_output=True, text=True)
    assert plain.returncode == 0
    answer, p_yes, image = plain.stdout.split()
    assert answer in ("YES", "NO") and image == str(images[0]) and 0 <= float(p_yes) <= 1


@pytest.mark.parametrize("threads", [0, -1])
def test_threads_below_1_is_refused_not_taken_as_all_cores(served, threads):
    out, _, _ = served
    with pytest.raises(SwiprError, match=f"--threads must be 1 or more, got {threads}"):
        Predictor(out, threads=threads)


def test_cli_refuses_a_bundle_with_one_byte_changed(served, tmp_path):
    out, images, _ = served
    copy = tmp_path / "bundle"
    copy.mkdir()
    for file in out.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    data = bytearray((copy / bundle.ONNX).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / bundle.ONNX).write_bytes(bytes(data))
    done = subprocess.run([*SWIPR, "predict", str(copy), str(images[0])], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.onnx" in lines[0] and "does not match" in lines[0]


def test_export_first_leaves_the_model_usable_and_equal(tmp_path):
    # Normalisation constants no earlier call has seen: the export is the first to use them.
    import timm
    import torch

    from swipr_core.data.loaders import Augment
    from swipr_core.serve.export import ServingModel, export_onnx, onnx_probs, torch_probs

    torch.manual_seed(1)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    serving = ServingModel(model, Augment(image_size=24, mean=(0.41, 0.42, 0.43), std=(0.31, 0.32, 0.33)))
    export_onnx(serving, 40, tmp_path / "m.onnx")
    images = np.random.default_rng(2).integers(0, 256, (1, 40, 40, 3), dtype=np.uint8)   # a batch of one
    np.testing.assert_allclose(onnx_probs((tmp_path / "m.onnx").read_bytes(), images), torch_probs(serving, images),
                               atol=1e-5)


# --- Hard to break: special files, pinned manifests, absurd images ------------------

def copy_bundle(out: Path, to: Path) -> Path:
    to.mkdir()
    for file in out.iterdir():
        (to / file.name).write_bytes(file.read_bytes())
    return to


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    # A timeout here is the bug: predict blocking forever on a FIFO instead of refusing it.
    return subprocess.run([*SWIPR, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_fifos_among_the_images_get_an_error_row(served, tmp_path):
    out, images, _ = served
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(images[0].read_bytes())
    os.mkfifo(folder / "b.jpg")   # inside a folder
    os.mkfifo(tmp_path / "arg.png")   # given as an argument
    done = run_cli("predict", out, folder, tmp_path / "arg.png", "--json", timeout=60)
    assert done.returncode == 1, done.stderr
    rows = {Path(row["image"]).name: row for row in json.loads(done.stdout)["predictions"]}
    assert rows["a.jpg"]["answer"] in ("YES", "NO")
    assert rows["b.jpg"]["error"] == rows["arg.png"]["error"] == "not a regular file"


@pytest.mark.parametrize("name", [bundle.MANIFEST, bundle.WEIGHTS, bundle.ONNX])
def test_a_fifo_in_place_of_a_bundle_file_is_refused(served, tmp_path, name):
    out, images, _ = served
    copy = copy_bundle(out, tmp_path / "bundle")
    (copy / name).unlink()
    os.mkfifo(copy / name)
    line = one_line(run_cli("predict", copy, images[0], timeout=60))
    assert name in line and "not a regular file" in line


def test_a_manifest_linked_to_dev_zero_is_refused_unread(served, tmp_path):
    out, images, _ = served
    copy = copy_bundle(out, tmp_path / "bundle")
    (copy / bundle.MANIFEST).unlink()
    (copy / bundle.MANIFEST).symlink_to("/dev/zero")
    line = one_line(run_cli("predict", copy, images[0], timeout=60))
    assert "manifest.json" in line and "not a regular file" in line


def test_expect_sha256_pins_the_manifest(served, tmp_path):
    out, images, _ = served
    pinned = bundle.sha256_file(out / bundle.MANIFEST)
    assert run_cli("predict", out, images[0], "--expect-sha256", pinned.upper()).returncode == 0
    line = one_line(run_cli("predict", out, images[0], "--expect-sha256", "0" * 64))
    assert "manifest.json" in line and pinned in line and "0" * 64 in line
    assert "64 hex digits" in one_line(run_cli("predict", out, images[0], "--expect-sha256", "abc"))
    with pytest.raises(SwiprError, match="not the expected"):
        Predictor(out, expect_sha256="f" * 64)


def rewrite_manifest(copy: Path, **changes) -> None:
    manifest = json.loads((copy / bundle.MANIFEST).read_text())
    manifest.update(changes)
    manifest[bundle.CHECKSUM_KEY] = bundle.manifest_checksum(manifest)
    (copy / bundle.MANIFEST).write_text(json.dumps(manifest))


def test_a_manifest_whose_cache_px_disagrees_with_the_model_is_refused(served, tmp_path):
    # Used to be a traceback from onnxruntime on the first batch.
    out, images, _ = served
    copy = copy_bundle(out, tmp_path / "bundle")
    rewrite_manifest(copy, cache_px=CACHE_PX + 8)
    line = one_line(run_cli("predict", copy, images[0]))
    assert f"cache_px {CACHE_PX + 8} disagrees with model.onnx, which takes {CACHE_PX}x{CACHE_PX}" in line


@pytest.mark.parametrize("changes", [{"cache_px": 10**6}, {"image_size": 0}])
def test_absurd_sizes_in_the_manifest_are_refused(served, tmp_path, changes):
    out, _, _ = served
    copy = copy_bundle(out, tmp_path / "bundle")
    rewrite_manifest(copy, **changes)
    with pytest.raises(SwiprError, match=f"{next(iter(changes))} .* is not a size"):
        Predictor(copy)


def peak_rss_of(args) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([*SWIPR, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)   # the rusage of this child alone
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc, usage.ru_maxrss * 1024


def test_a_thin_png_is_an_error_row_in_bounded_memory(served, tmp_path):
    # A 1x200000 PNG decoded whole takes 2.3 GB: it is refused from its header.
    out, images, _ = served
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 200_000)).save(strip)
    done, peak = peak_rss_of(["predict", out, strip])
    assert done.returncode == 1
    line = done.stdout.read().decode()
    assert line.startswith("ERROR") and "1x200000 pixels: aspect ratio" in line, line
    _, baseline = peak_rss_of(["predict", out, images[0]])
    assert peak < baseline + 32 * (1 << 20), (peak, baseline)


def test_an_image_pillow_cant_identify_is_said_in_words_not_python_objects(tmp_path):
    from PIL import UnidentifiedImageError

    from swipr_core.data.images import decode_problem

    # Pillow's own message names a Python object: "cannot identify image file <_io.BufferedReader name=6>"
    assert decode_problem(UnidentifiedImageError("cannot identify image file <_io.BufferedReader name=6>")) == \
        "not an image in a format Pillow reads"
    assert decode_problem(OSError("broken data stream when reading image file")) == \
        "broken data stream when reading image file"
    assert decode_problem(ValueError("")) == "the image data is damaged"
    assert "<" not in decode_problem(SyntaxError("not a PNG file <PIL.PngImagePlugin.ChunkStream object>"))
