"""`swipr fit`: replay a finished trial exactly, check it, and write its model bundle.

The replay is the trial's own run again — its params, its seed (user attr `seed`), the same
split (checked by data fingerprint) and the same epochs — so the final model is the model
the search measured, not a look-alike. Its final validation loss is compared with the
trial's value; the tolerance was measured (see REPLAY_RTOL). The decision threshold is
then picked on the validation split, the bundle is written, the ONNX export is checked
against PyTorch on the validation images, and the trial is linked to the bundle.
"""
from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import optuna

from swipr_core.errors import SwiprError

# Replay tolerance on the final validation loss: |replay - trial| <= ATOL + RTOL * |trial|.
# Measured with bench/replay_drift.py on the demo study (CPU, fp32, 2 cores): with the trial's
# torch thread count every replay was bit-identical (difference 0.0); with another thread
# count reductions are summed in another order and the loss moved by up to 1.3%. Another
# seed moved it by 1.2% to 156% (median ~11%). No tolerance separates the two completely;
# 2% covers float noise and still flags most other runs, and the manifest keeps the exact
# difference. The fit uses the trial's thread count where the trial recorded it.
REPLAY_ATOL = 1e-4
REPLAY_RTOL = 2e-2
THREADS_ATTR = "cpu_threads"   # a trial's torch thread count, where the objective records it
SAMPLE_IMAGES = 256   # validation images the ONNX export is checked on


@dataclass
class FitOutcome:
    trial_number: int
    trial_value: float
    replay_value: float
    matched: bool
    bundle: Path
    manifest_sha256: str
    manifest: dict


def replay_tolerance(trial_value: float) -> float:
    return REPLAY_ATOL + REPLAY_RTOL * abs(trial_value)


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    from search.study import best_trial

    if number is None:
        return best_trial(study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise SwiprError(f"--trial {number}: study '{study.study_name}' has no such trial "
                         f"(trials 0 to {max(trials)})" if trials else f"study '{study.study_name}' has no trials")
    trial = trials[number]
    if trial.state != optuna.trial.TrialState.COMPLETE:
        raise SwiprError(f"--trial {number}: trial is {trial.state.name}, not COMPLETE; only a finished run has "
                         f"a final validation loss to reproduce (a pruned trial's value is an intermediate one)")
    return trial


def train_config(trial: optuna.trial.FrozenTrial, space_keys, study_file):
    """The trial's TrainConfig: params as they were, its seed, and the head epochs it ran with."""
    from swipr_core.training import TrainConfig, sgdr_epochs

    missing = [key for key in space_keys if key not in trial.params]
    if missing or "seed" not in trial.user_attrs:
        what = f"params {', '.join(missing)}" if missing else "user attr 'seed'"
        raise SwiprError(f"trial {trial.number}: has no {what}; it wasn't run by `swipr study run`, can't replay it")
    params = {key: trial.params[key] for key in space_keys}
    head_epochs = study_file.train.head_epochs
    planned = trial.user_attrs.get("planned_epochs")
    if params["freeze"] == "frozen_then_unfrozen" and isinstance(planned, int):
        # The study file's head_epochs may have changed since; the trial's plan says what it ran.
        head_epochs = planned - sgdr_epochs(params["n_cycles"], params["cycle_len"], params["cycle_mult"])
    config = TrainConfig(**params, head_epochs=head_epochs, seed=int(trial.user_attrs["seed"]))
    ran = trial.user_attrs.get("epochs", planned)
    if ran is not None and ran != config.epochs:
        raise SwiprError(f"trial {trial.number}: ran {ran} epochs but its params plan {config.epochs}; can't replay it")
    return config


def code_version() -> str:
    """The project's git commit (with '+changes' when the tree differs from it), or 'unknown'."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "swipr-search": code_version()}
    for name in ("torch", "timm", "fastai", "optuna", "numpy", "pillow", "safetensors", "onnx", "onnxscript",
                 "onnxruntime", "scikit-learn"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def link_attr(trial_number: int) -> str:
    return f"trial_{trial_number}_bundle"


def link_trial(study: optuna.Study, study_file, trial: optuna.trial.FrozenTrial, out: Path,
               manifest_sha256: str) -> str:
    """Name the bundle and its manifest's SHA-256 where the study keeps its records.

    Optuna refuses every write to a finished trial — user attrs and artifacts alike raise
    UpdateFinishedTrialError — so the link is a study user attr keyed by the trial number
    (every storage keeps it, the dashboard shows it) and, beside the study's other artifacts,
    a study artifact holding the manifest itself (its SHA-256 is the one recorded).
    """
    study.set_user_attr(link_attr(trial.number), {"bundle": str(out), "manifest_sha256": manifest_sha256})
    linked = f"study user attr {link_attr(trial.number)}"
    try:
        import shutil
        import tempfile

        from optuna.artifacts import upload_artifact

        from search.artifacts import artifact_dir, open_artifact_store

        store = open_artifact_store(artifact_dir(study_file))
        with tempfile.TemporaryDirectory(prefix="swipr-bundle-") as tmp:
            copy = Path(tmp) / f"{link_attr(trial.number)}_manifest.json"
            shutil.copyfile(out / "manifest.json", copy)
            upload_artifact(artifact_store=store, file_path=str(copy), study_or_trial=study,
                            mimetype="application/json")
        linked += f" and study artifact {copy.name}"
    except Exception as error:  # noqa: BLE001 - the bundle is written and linked; the copy is extra
        print(f"warning: could not store the manifest as a study artifact: {type(error).__name__}: {error}",
              file=sys.stderr, flush=True)
    return linked


def fit(study_path: Path, out: Path, trial_number: int | None = None, target_precision: float | None = None,
        device: str | None = None, strict: bool = False, threads: int | None = None,
        echo: Callable[[str], None] = print) -> FitOutcome:
    import torch

    from search.study import data_spec, open_study
    from search.study_file import SPACE_KEYS, load_study_file
    from swipr_core import bundle
    from swipr_core.data import prepare_data
    from swipr_core.metrics import choose_threshold, classification_report
    from swipr_core.model import ModelSpec
    from swipr_core.training import resolve_device, train

    out = out.resolve()
    if target_precision is not None and not 0 < target_precision < 1:
        raise SwiprError(f"--target-precision must be between 0 and 1, got {target_precision}")
    bundle.check_target(out)   # before an hour of training, not after
    study_file = load_study_file(study_path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(study_file, create=False)
    trial = pick_trial(study, trial_number)
    config = train_config(trial, SPACE_KEYS, study_file)
    echo(f"trial {trial.number}{' (best)' if trial_number is None else ''} of study '{study.study_name}': "
         f"val_loss {trial.value:.6g}, seed {config.seed}, {config.epochs} epochs, params {json.dumps(trial.params)}")

    dataset = prepare_data(data_spec(study_file))
    recorded = trial.user_attrs.get("data_fingerprint", study.user_attrs.get("data_fingerprint"))
    if recorded != dataset.fingerprint:
        raise SwiprError(f"{study_file.data.labels_file}: data fingerprint {dataset.fingerprint} differs from "
                         f"{recorded}, the one trial {trial.number} was trained on; the replay would not be that "
                         f"trial. Restore the labels file the study used")
    echo(f"data: fingerprint {dataset.fingerprint} matches the trial's")

    device = resolve_device(device or study_file.train.device)
    precision = study_file.train.precision
    # CPU reductions are summed per thread: the trial's thread count gives its exact numbers.
    threads = threads or trial.user_attrs.get(THREADS_ATTR) or torch.get_num_threads()
    if not isinstance(threads, int) or threads < 1:
        raise SwiprError(f"--threads must be 1 or more, got {threads}")
    echo(f"replaying on {device} ({precision} precision, {threads} CPU threads)...")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = train(dataset, config, ModelSpec(study_file.model.arch, study_file.model.pretrained,
                                                  study_file.model.weights),
                       device=str(device), precision=precision, compile=study_file.train.compile,
                       on_epoch=lambda r: echo(f"  epoch {r.epoch} {r.phase}: train_loss {r.train_loss:.4f} "
                                               f"valid_loss {r.valid_loss:.4f}"))
    finally:
        torch.set_num_threads(previous_threads)
    replay = compare_replay(trial, float(result.metrics["val_loss"]), echo)
    replay.update(device=str(device), precision=precision, cpu_threads=threads)
    if strict and not replay["matched"]:
        raise SwiprError(f"trial {trial.number}: replay is outside the tolerance and --strict is set; "
                         f"no bundle written")

    threshold = choose_threshold(result.valid_probs, result.valid_targets, target_precision)
    scores = classification_report(result.valid_probs, result.valid_targets, threshold.value)
    echo(f"validation ({scores['n_valid']} images, {scores['valid_yes_fraction']:.0%} YES): "
         f"ROC AUC {scores['roc_auc']:.4f}, PR AUC {scores['pr_auc']:.4f}, "
         f"balanced accuracy {scores['balanced_accuracy']:.4f}, accuracy {scores['accuracy']:.4f} "
         f"(majority baseline {scores['majority_accuracy']:.4f}, always {scores['majority_class']})")
    echo(f"threshold {threshold.value:.4f} ({threshold.rule}): precision {scores['precision']:.4f}, "
         f"recall {scores['recall']:.4f}, F1 {scores['f1']:.4f}")

    manifest = {
        "arch": study_file.model.arch,
        "cache_px": study_file.data.cache_px,
        "image_size": config.image_size,
        "mean": list(result.mean),
        "std": list(result.std),
        "classes": ["NO", "YES"],
        "input": {"name": "images", "dtype": "uint8",
                  "shape": ["batch", study_file.data.cache_px, study_file.data.cache_px, 3],
                  "layout": "RGB, shorter side resized to cache_px (bilinear) and centre-cropped "
                            "(swipr_core.cache.load_square); resizing to image_size and normalising "
                            "happen inside model.onnx"},
        "output": {"name": "p_yes", "meaning": "P(YES); answer YES when p_yes >= threshold"},
        "threshold": threshold.value,
        "threshold_rule": threshold.rule,
        "study": study.study_name,
        "storage": _redacted(study_file.study.storage),
        "trial": trial.number,
        "params": trial.params,
        "seed": config.seed,
        "epochs": config.epochs,
        "head_epochs": config.head_epochs,
        "data_fingerprint": dataset.fingerprint,
        "replay": replay,
        # NaN (a validation split with one class has no AUC) is not JSON: null instead.
        "metrics": {key: None if isinstance(value, float) and value != value else value for key, value in scores.items()},
        "libraries": library_versions(),
    }
    manifest_sha256 = write_bundle(out, result, dataset, manifest, checked_vs_training=device.type == "cpu",
                                   echo=echo)
    linked = link_trial(study, study_file, trial, out, manifest_sha256)
    echo(f"wrote bundle {out} (manifest sha256 {manifest_sha256}); linked to trial {trial.number} by {linked}")
    written = json.loads((out / bundle.MANIFEST).read_text())
    return FitOutcome(trial.number, trial.value, replay["val_loss"], replay["matched"], out, manifest_sha256,
                      written)


def compare_replay(trial: optuna.trial.FrozenTrial, replay_value: float, echo) -> dict:
    """The replay's final loss against the trial's, said in words; the record for the manifest."""
    diff = abs(replay_value - trial.value)
    tolerance = replay_tolerance(trial.value)
    matched = diff <= tolerance
    rule = f"{REPLAY_ATOL:g} + {REPLAY_RTOL:g} x |trial's|"
    if diff == 0:
        echo(f"replay: val_loss {replay_value:.6g} equals the trial's exactly (tolerance {tolerance:.2g} = {rule})")
    elif matched:
        echo(f"replay: val_loss {replay_value:.6g} vs the trial's {trial.value:.6g}: off by {diff:.2g}, "
             f"within tolerance {tolerance:.2g} = {rule}")
    else:
        echo(f"replay: val_loss {replay_value:.6g} vs the trial's {trial.value:.6g}: off by {diff:.3g} "
             f"({diff / max(abs(trial.value), 1e-12):.1%}), OUTSIDE tolerance {tolerance:.2g} = {rule}. Same params, "
             f"seed and data can still differ: GPU kernels (cuDNN convolutions, atomics) are not deterministic, "
             f"bf16/fp16 rounds differently, another CPU thread count or library version sums in another order, "
             f"and a change to the training code since the trial (augmentation, schedule) makes it another run")
    return {"trial_val_loss": trial.value, "val_loss": replay_value, "difference": diff, "tolerance": tolerance,
            "tolerance_rule": rule, "matched": matched}


def write_bundle(out: Path, result, dataset, manifest: dict, checked_vs_training: bool, echo) -> str:
    """Weights, ONNX export (checked against PyTorch on validation images) and manifest,
    staged beside `out` and moved into place. Returns the manifest's SHA-256."""
    import shutil

    from swipr_core import bundle
    from swipr_core.export import (ONNX_TOLERANCE, ServingModel, cpu_copy, export_onnx, onnx_probs, save_weights,
                                   torch_probs)
    from swipr_core.loaders import Augment

    model = cpu_copy(result.model)
    serving = ServingModel(model, Augment(image_size=manifest["image_size"], mean=result.mean, std=result.std))
    staging = bundle.staging_dir(out)
    try:
        save_weights(model, staging / bundle.WEIGHTS, {"arch": manifest["arch"], "classes": "NO,YES"})
        export_onnx(serving.eval(), manifest["cache_px"], staging / bundle.ONNX)
        sample = _sample_images(dataset, SAMPLE_IMAGES)
        reference = torch_probs(serving, sample)
        exported = onnx_probs((staging / bundle.ONNX).read_bytes(), sample)
        onnx_diff = float(np.max(np.abs(reference - exported))) if len(sample) else 0.0
        # The serving wrapper must score validation as training did (same pre-processing, same
        # model). On a CPU the replay validated in fp32, so the two must agree; a GPU validated
        # with its own kernels (and bf16/fp16 autocast), so there the gap is only reported.
        train_diff = float(np.max(np.abs(reference - result.valid_probs[:len(sample)]))) if len(sample) else 0.0
        if onnx_diff > ONNX_TOLERANCE or (checked_vs_training and train_diff > ONNX_TOLERANCE):
            raise SwiprError(f"export check failed: on {len(sample)} validation images the ONNX model differs from "
                             f"PyTorch by {onnx_diff:.3g} and the serving model from training's validation by "
                             f"{train_diff:.3g} (tolerance {ONNX_TOLERANCE:g}); no bundle written")
        echo(f"export: model.onnx gives PyTorch's probabilities on {len(sample)} validation images "
             f"(max difference {onnx_diff:.2g}, tolerance {ONNX_TOLERANCE:g}); {train_diff:.2g} from the replay's "
             f"own validation{'' if checked_vs_training else ' (validated on the GPU: reported, not checked)'}")
        manifest = {**manifest, "export_check": {"images": int(len(sample)), "max_abs_difference": onnx_diff,
                                                 "tolerance": ONNX_TOLERANCE, "vs_replay_validation": train_diff}}
        return bundle.finish(staging, out, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sample_images(dataset, n: int) -> np.ndarray:
    """The first n validation images from the cache, in the order training validated them."""
    valid = dataset.split.indices(True)[:n]
    return np.ascontiguousarray(dataset.cache.open()[valid])


def _redacted(url: str) -> str:
    from search.storage import redact

    return redact(url)
