"""TTA: P(YES) averaged over each image and its mirror, in the fit, the bundle and predict."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from swipr_core.data.loaders import Augment
from swipr_core.errors import SwiprError
from swipr_core.serve import bundle
from swipr_core.serve.export import ServingModel, export_onnx, save_weights, torch_probs
from swipr_core.serve.predict import Predictor
from swipr_core.serve.tta import bundle_averages, flip_average, manifest_record, mirrored
from swipr_core.train.flip_average import FlipAverage
from tests.studykit import finished_demo_study, run_cli

CACHE_PX, IMAGE_SIZE = 24, 16
AUG = Augment(image_size=IMAGE_SIZE, mean=(0.5,) * 3, std=(0.25,) * 3)


class LeftBright(torch.nn.Module):
    """A 'model' that says YES when the left half is brighter than the right: orientation matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        score = x[..., :half].mean(dim=(1, 2, 3)) - x[..., half:].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(score), 3 * score], dim=1)


def _images(n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, CACHE_PX, CACHE_PX, 3), dtype=np.uint8)
    images[0, :, : CACHE_PX // 2] = 255   # left bright: YES, and its mirror NO
    return images


def test_the_flip_average_is_the_mean_of_the_image_and_its_mirror():
    images = _images()
    plain = ServingModel(LeftBright(), AUG).eval()
    averaged = ServingModel(FlipAverage(LeftBright()), AUG).eval()
    p, p_mirror, p_tta = torch_probs(plain, images), torch_probs(plain, mirrored(images)), torch_probs(averaged, images)
    assert p[0] > 0.9 and p_mirror[0] < 0.1          # the model's answer depends on orientation
    np.testing.assert_allclose(p_tta, (p + p_mirror) / 2, atol=1e-6)
    assert np.abs(p_tta - p).max() > 0.3             # so TTA changed what it says
    # An averaged model is mirror-blind: averaging it again changes nothing.
    np.testing.assert_allclose(torch_probs(averaged, mirrored(images)), p_tta, atol=1e-6)
    np.testing.assert_allclose(flip_average(lambda b: torch_probs(plain, b), images), p_tta, atol=1e-6)


def _bundle(folder, tta: bool):
    serving = ServingModel(FlipAverage(LeftBright()) if tta else LeftBright(), AUG).eval()
    out = folder / ("tta" if tta else "plain")
    staging = bundle.staging_dir(out)
    save_weights(torch.nn.Linear(1, 1), staging / bundle.WEIGHTS, {"arch": "left_bright"})
    export_onnx(serving, CACHE_PX, staging / bundle.ONNX)
    manifest = {"arch": "left_bright", "cache_px": CACHE_PX, "image_size": IMAGE_SIZE, "mean": [0.5] * 3,
                "std": [0.25] * 3, "classes": ["NO", "YES"], "threshold": 0.5,
                "tta": manifest_record(tta, 0.5, 0.4, 10)}
    bundle.finish(staging, out, manifest)
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tta")
    images = _images()
    files = []
    for i, pixels in enumerate(images):
        from PIL import Image

        files.append(folder / f"img_{i}.png")
        Image.fromarray(pixels).save(files[-1])
    plain = ServingModel(LeftBright(), AUG).eval()
    expected = (torch_probs(plain, images) + torch_probs(plain, mirrored(images))) / 2
    return _bundle(folder, False), _bundle(folder, True), files, torch_probs(plain, images), expected


def test_predict_honours_the_bundle_and_the_flag(bundles):
    plain_bundle, tta_bundle, files, plain_probs, tta_probs = bundles

    def probs(path, **kwargs):
        predictor = Predictor(path, **kwargs)
        return predictor, np.array([row.p_yes for row in predictor.predict(files, batch_size=4)])

    predictor, got = probs(plain_bundle)
    assert not predictor.tta
    np.testing.assert_allclose(got, plain_probs, atol=1e-5)
    # --tta on a plain bundle: predict averages itself
    predictor, got = probs(plain_bundle, tta_flip=True)
    assert predictor.tta
    np.testing.assert_allclose(got, tta_probs, atol=1e-5)
    # a bundle fit with --tta averages by default (inside model.onnx), and --tta doesn't average twice
    for flag in (False, True):
        predictor, got = probs(tta_bundle, tta_flip=flag)
        assert predictor.tta
        np.testing.assert_allclose(got, tta_probs, atol=1e-5)


def test_the_predict_command_takes_tta_and_says_so(bundles):
    plain_bundle, _, files, plain_probs, tta_probs = bundles
    for flag, expected in (([], plain_probs), (["--tta"], tta_probs)):
        result = run_cli("predict", plain_bundle, *files, "--json", *flag)
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["tta"] is bool(flag)
        np.testing.assert_allclose([row["p_yes"] for row in answer["predictions"]], expected, atol=1e-5)


def test_a_bad_tta_entry_is_one_line(tmp_path):
    assert bundle_averages({}, tmp_path) is False   # bundles from before TTA
    assert bundle_averages({"tta": manifest_record(True, 1.0, 0.9, 3)}, tmp_path) is True
    with pytest.raises(SwiprError, match="'tta' must be an object with a true/false 'used'"):
        bundle_averages({"tta": "yes"}, tmp_path)


def test_fit_with_tta_measures_both_losses_and_bundles_the_average(tmp_path_factory, tmp_path):
    from search.fit.interpret import top_losses_file
    from search.fit.replay import fit

    study, _ = finished_demo_study(tmp_path_factory)
    lines: list[str] = []
    outcome = fit(study, tmp_path / "bundle", tta=True, threads=1, echo=lines.append)
    record = outcome.manifest["tta"]
    assert record["used"] and record["in_model"] and record["augmentations"] == ["hflip"]
    said = [line for line in lines if line.startswith("TTA (")]
    assert len(said) == 1 and f"{record['val_loss_plain']:.4f} without, {record['val_loss_tta']:.4f} with" in said[0]
    # The two losses were measured, not copied: the plain one is the replay's validation loss.
    assert record["val_loss_plain"] == pytest.approx(outcome.replay_value, rel=1e-4)
    assert record["val_loss_tta"] != record["val_loss_plain"]
    # model.onnx averages: the export check passed against the flip-averaged validation probabilities.
    assert outcome.manifest["export_check"]["vs_replay_validation"] <= outcome.manifest["export_check"]["tolerance"]
    assert Predictor(outcome.bundle).tta
    png = top_losses_file(outcome.bundle)
    assert png.read_bytes().startswith(b"\x89PNG") and any(str(png) in line for line in lines)
    assert json.loads((outcome.bundle / bundle.MANIFEST).read_text())["tta"] == record
