"""`swipr fit`: a small study's best trial replayed exactly, thresholded and bundled."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from objectives.trial_attrs import attrs_of
from swipr_core.errors import SwiprError
from swipr_core.serve import bundle
from tests.readonly import read_only_folder
from tests.studykit import one_line_error, run_cli

# One pytest-xdist worker runs this module, so its module-scoped study is built once.
pytestmark = pytest.mark.xdist_group("fit")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Three unpruned trials of a tiny study, then a fit of the best one — both on one CPU
    thread: with the trial's thread count a CPU replay is bit-identical."""
    import torch

    from search.cli import main
    from search.fit.replay import fit
    from swipr_core.data.demo import write_demo_data

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fit")
    write_demo_data(root / "demo-data", n_images=120, image_px=48)
    (root / "studies").mkdir()
    text = (ROOT / "studies/demo.toml").read_text()
    for old, new in (("n_trials = 12", "n_trials = 3"), ('pruner = "successive_halving"', 'pruner = "none"'),
                     ("n_cycles = [2, 3]", "n_cycles = 2"), ("cycle_mult = [1, 2]", "cycle_mult = 1")):
        assert old in text
        text = text.replace(old, new)
    study_path = root / "studies" / "demo.toml"
    study_path.write_text(text)
    try:
        assert main(["study", "run", str(study_path), "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    lines: list[str] = []
    outcome = fit(study_path, root / "bundle", threads=1, echo=lines.append)
    assert torch.get_num_threads() == threads   # the replay's thread count doesn't leak
    return study_path, outcome, lines


def _study(study_path):
    from search.study.open import open_study
    from search.studyfile import load_study_file

    return open_study(load_study_file(study_path), create=False)


def test_replay_reproduces_the_best_trial(fitted):
    study_path, outcome, lines = fitted
    study = _study(study_path)
    best = study.best_trial
    assert outcome.trial_number == best.number
    # Same params, seed, data and thread count on a CPU: the same final loss, to the bit.
    assert outcome.replay_value == best.value
    assert outcome.matched
    assert any("equals the trial's exactly" in line and "tolerance" in line for line in lines)
    manifest = outcome.manifest
    assert manifest["replay"]["difference"] == 0.0 and manifest["replay"]["tolerance"] > 0
    assert manifest["replay"]["cpu_threads"] == 1
    assert manifest["trial"] == best.number and manifest["study"] == "demo"
    assert manifest["params"] == best.params and manifest["seed"] == attrs_of(best)["seed"]
    assert manifest["data_fingerprint"] == attrs_of(best)["data_fingerprint"]
    # the size the model ends at: stage 2's where its best schedule ran stage 2 (the demo has one)
    final_size = best.params["stage2_image_size"] if attrs_of(best).get("best_stage") == 2 else best.params["image_size"]
    assert manifest["image_size"] == final_size and manifest["cache_px"] == 48


def test_every_slow_step_is_announced_before_it_runs(fitted):
    # preparing the data, measuring TTA and exporting each say so before they start
    _, _, lines = fitted

    def at(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix))

    assert at("data: reading the labels and checking the image cache...") < at("data: fingerprint")
    assert at("TTA: scoring the ") < at("TTA (each image and its mirror")
    assert at("export: writing the weights and model.onnx") < at("export: model.onnx gives")
    assert "1 epochs" not in lines[0]


def test_metrics_for_skewed_data_and_the_threshold(fitted):
    _, outcome, lines = fitted
    metrics = outcome.manifest["metrics"]
    for key in ("roc_auc", "pr_auc", "balanced_accuracy", "accuracy", "majority_accuracy", "f1"):
        assert 0 <= metrics[key] <= 1, key
    # The demo data is mostly NO: the baseline is always-NO's accuracy.
    assert metrics["majority_class"] == "NO" and metrics["majority_accuracy"] == 1 - metrics["valid_yes_fraction"]
    assert outcome.manifest["threshold"] == metrics["threshold"]
    assert outcome.manifest["threshold_rule"].startswith("best F1")
    assert any(line.startswith("validation (") and "majority baseline" in line for line in lines)


def test_bundle_is_verified_linked_and_export_equals_pytorch(fitted):
    import timm
    import torch
    from safetensors.torch import load_file

    from search.fit.link import link_attr
    from swipr_core.data.loaders import Augment
    from swipr_core.serve.export import ServingModel, torch_probs
    from swipr_core.serve.predict import Predictor

    study_path, outcome, _ = fitted
    verified = bundle.verify(outcome.bundle, load=(bundle.ONNX, bundle.WEIGHTS))
    assert verified.manifest_sha256 == outcome.manifest_sha256
    assert set(verified.manifest["files"]) == {bundle.ONNX, bundle.WEIGHTS}
    assert verified.manifest["export_check"]["max_abs_difference"] <= verified.manifest["export_check"]["tolerance"]
    assert verified.manifest["libraries"]["torch"] == torch.__version__.split("+")[0]
    study = _study(study_path)
    link = study.user_attrs[link_attr(outcome.trial_number)]
    assert link == {"bundle": str(outcome.bundle), "manifest_sha256": outcome.manifest_sha256}
    # Beside the study's pictures, a study artifact holds the manifest with that hash.
    from optuna.artifacts import get_all_artifact_meta

    from search.studyfile import load_study_file
    from search.views.artifacts import artifact_dir, open_artifact_store

    metas = [m for m in get_all_artifact_meta(study) if m.filename == f"{link_attr(outcome.trial_number)}_manifest.json"]
    assert len(metas) == 1
    with open_artifact_store(artifact_dir(load_study_file(study_path))).open_reader(metas[0].artifact_id) as reader:
        assert bundle.sha256_bytes(reader.read()) == outcome.manifest_sha256

    # Rebuild the network from the safetensors weights alone and compare it with the ONNX
    # model that predict runs, on random cache-sized images.
    manifest = verified.manifest
    model = timm.create_model(manifest["arch"], pretrained=False, num_classes=2)
    model.load_state_dict(load_file(str(outcome.bundle / bundle.WEIGHTS)))
    serving = ServingModel(model.eval(), Augment(manifest["image_size"], tuple(manifest["mean"]),
                                                 tuple(manifest["std"])))
    images = np.random.default_rng(1).integers(0, 256, (9, 48, 48, 3), dtype=np.uint8)
    np.testing.assert_allclose(Predictor(outcome.bundle).model.probs(images), torch_probs(serving, images),
                               atol=1e-5)
    assert not np.allclose(torch_probs(serving, images), torch_probs(serving, images)[0])   # not a constant


def test_only_complete_trials_replay(fitted, tmp_path):
    from search.fit.replay import fit

    study_path, _, _ = fitted
    study = _study(study_path)
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params=study.best_trial.params,
        distributions=study.best_trial.distributions, intermediate_values={0: 0.5}))
    pruned = study.trials[-1].number
    with pytest.raises(SwiprError, match="PRUNED, not COMPLETE"):
        fit(study_path, tmp_path / "b", trial_number=pruned, echo=lambda line: None)
    with pytest.raises(SwiprError, match="no such trial"):
        fit(study_path, tmp_path / "b", trial_number=999, echo=lambda line: None)
    assert not (tmp_path / "b").exists()


def test_changed_data_is_refused(fitted, tmp_path, monkeypatch):
    import search.fit.replay
    from search.fit.replay import fit

    study_path, _, _ = fitted
    real = search.fit.replay.prepare_study_data

    class Other:
        def __init__(self, dataset):
            self.split, self.cache, self.fingerprint = dataset.split, dataset.cache, "0123456789abcdef"

    monkeypatch.setattr(search.fit.replay, "prepare_study_data", lambda study_file: Other(real(study_file)))
    with pytest.raises(SwiprError, match="data fingerprint 0123456789abcdef differs"):
        fit(study_path, tmp_path / "b", echo=lambda line: None)


def test_cli_refuses_a_folder_that_is_not_a_bundle(fitted, tmp_path):
    study_path, _, _ = fitted
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"x")
    assert "refusing to overwrite" in one_line_error(run_cli("fit", study_path, "--out", tmp_path / "photos"))
    assert (tmp_path / "photos" / "keep.jpg").read_bytes() == b"x"


def test_target_precision_threshold():
    from swipr_core.train.metrics import choose_threshold, classification_report

    probs = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    targets = np.array([0, 0, 1, 0, 0, 1, 1, 1])
    # Best F1: YES from 0.7 up (precision 1, recall 0.75: F1 0.857) beats YES from 0.3 up (4/6, 1: F1 0.8).
    best = choose_threshold(probs, targets)
    assert best.value == 0.7 and classification_report(probs, targets, best.value)["precision"] == 1.0
    precise = choose_threshold(probs, targets, target_precision=0.7)
    assert precise.value == 0.6   # the lowest cut with precision >= 0.7 (3/4 = 0.75)
    report = classification_report(probs, targets, precise.value)
    assert report["precision"] == 0.75 and report["recall"] == 0.75
    assert report["balanced_accuracy"] == pytest.approx((0.75 + 0.75) / 2)
    assert report["majority_accuracy"] == 0.5
    with pytest.raises(SwiprError, match="between 0 and 1"):
        choose_threshold(probs, targets, target_precision=1.5)
    # Unreachable (the most confident answer is wrong): the most precise cut, said so.
    flipped = choose_threshold(probs, 1 - targets, target_precision=0.9)
    assert "not reached" in flipped.rule


def test_a_precise_threshold_that_finds_few_yes_photos_warns():
    from types import SimpleNamespace

    from search.fit.replay import judge

    # 20 YES: only the most confident one is above every NO, so precision 0.9 leaves recall 0.05
    probs = np.concatenate([np.linspace(0.0, 0.5, 80), [0.99], np.linspace(0.1, 0.5, 19)])
    targets = np.concatenate([np.zeros(80), np.ones(20)])
    said = []
    judge(SimpleNamespace(valid_probs=probs, valid_targets=targets), 0.9, said.append)
    warning = [line for line in said if line.startswith("warning:")]
    assert warning and "recall 0.0500 < 0.2" in warning[0]
    # The figures come with the counts behind them, and are said to be optimistic: the same
    # validation photos chose the threshold.
    assert "precision 1.0000 (1 of 1 called YES), recall 0.0500 (1 of 20 YES)" in said[1], said
    assert said[2] == ("note: the threshold was chosen on these same 20 validation YES photos, so its "
                       "precision and recall are optimistic: expect lower on new photos")
    said.clear()
    judge(SimpleNamespace(valid_probs=probs, valid_targets=targets), None, said.append)   # best F1: no warning
    assert not [line for line in said if line.startswith("warning:")]


def test_replay_verdicts_in_words():
    from types import SimpleNamespace

    from search.fit.replay import compare_replay

    trial = SimpleNamespace(value=0.5)
    lines: list[str] = []
    assert compare_replay(trial, 0.5, lines.append)["matched"]
    assert compare_replay(trial, 0.505, lines.append)["matched"]        # 1%: within 1e-4 + 2%
    far = compare_replay(trial, 0.6, lines.append)                      # 20%: another run
    assert not far["matched"] and far["difference"] == pytest.approx(0.1)
    assert "exactly" in lines[0] and "within" in lines[1]
    assert "OUTSIDE" in lines[2] and "20.0%" in lines[2] and "not deterministic" in lines[2]


def test_threads_below_1_is_one_line_not_the_default(fitted, tmp_path):
    study_path, _, _ = fitted
    for threads in ("0", "-2"):
        error = one_line_error(run_cli("fit", study_path, "--out", tmp_path / "b", "--threads", threads))
        assert error == f"swipr: error: --threads must be 1 or more, got {threads}"
    assert not (tmp_path / "b").exists()


def test_strict_writes_nothing_outside_the_tolerance(fitted, tmp_path, monkeypatch):
    import search.fit.replay

    study_path, _, _ = fitted
    monkeypatch.setattr(search.fit.replay, "REPLAY_ATOL", -1.0)   # no replay can match
    with pytest.raises(SwiprError, match="--strict"):
        search.fit.replay.fit(study_path, tmp_path / "b", strict=True, threads=1, echo=lambda line: None)
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


def test_a_read_only_out_is_refused_before_the_replay(fitted, tmp_path):
    study_path, _, _ = fitted
    with read_only_folder(tmp_path / "ro") as ro:
        result = run_cli("fit", study_path, "--out", ro / "model")
        error = one_line_error(result)
        assert error.startswith(f"swipr: error: --out {ro / 'model'}: can't write in {ro} (")
        assert result.stdout == ""   # nothing replayed: refused before the training, not after


def test_a_read_only_storage_is_refused_before_the_replay(fitted, tmp_path, monkeypatch):
    import shutil

    study_path, _, _ = fitted

    def copy_study(folder):
        for file in study_path.parent.glob("demo.db*"):
            shutil.copy(file, folder / file.name)

    with read_only_folder(tmp_path / "ro", copy_study) as ro:
        monkeypatch.setenv("SWIPR_STORAGE", f"sqlite:///{ro / 'demo.db'}")
        result = run_cli("fit", study_path, "--out", tmp_path / "model")
        error = one_line_error(result)
        assert error.startswith(f"swipr: error: the study's storage, where the fit links the trial to its "
                                f"bundle: can't write {ro / 'demo.db'} (")
        assert result.stdout == "" and not (tmp_path / "model").exists()


def test_a_bundle_folder_with_the_users_files_is_replaced_only_with_force(fitted, tmp_path):
    import shutil

    from search.fit.replay import fit

    study_path, outcome, _ = fitted
    out = tmp_path / "model"
    shutil.copytree(outcome.bundle, out)   # a real folder, copied from the bundle
    (out / "thesis.txt").write_text("chapter 1")
    line = one_line_error(run_cli("fit", study_path, "--out", out, "--threads", "1"))
    assert "holds thesis.txt, which the bundle's manifest doesn't list" in line and "--force" in line
    assert (out / "thesis.txt").read_text() == "chapter 1"
    forced = fit(study_path, out, threads=1, echo=lambda line: None, force=True)
    assert not (out / "thesis.txt").exists() and bundle.verify(out).manifest_sha256 == forced.manifest_sha256
