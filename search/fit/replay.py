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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, cast

import optuna
import torch

from objectives.record import TrialRecord, record_of
from objectives.trial_attrs import attrs_of
from search.fit.interpret import measure_tta, write_top_losses
from search.fit.link import link_trial
from search.fit.outputs import check_outputs
from search.study.data_record import FINGERPRINT_ATTR, prepare_study_data, refuse_other_data
from search.study.open import best_trial, open_study, quiet_optuna
from search.studyfile.url_text import redact
from search.studyfile import load_study_file
from search.studyfile.fields import keyed
from search.studyfile.trained_with import as_trained
from search.views import epoch_table
from search.views.format import count
from search.views.progress import Steps
from swipr_core.errors import SwiprError
from swipr_core.serve import bundle
from swipr_core.serve.bundle_writer import library_versions, model_manifest, write_bundle
from swipr_core.train.metrics import check_target_precision, choose_threshold, classification_report
from swipr_core.train.run import resolve_device, train
from swipr_core.train.schedule import TrainConfig

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


def trial_record(trial: optuna.trial.FrozenTrial, study_file) -> TrialRecord:
    """The trial's record (objectives.record): its plan is what the fit replays, up to its result's
    finished schedule; a trial written before the record has both rebuilt from its user attrs."""
    return record_of(trial, study_file.train.head_epochs)


def fit(study_path: Path, out: Path, trial_number: int | None = None, target_precision: float | None = None,
        device: str | None = None, strict: bool = False, threads: int | None = None,
        echo: Callable[[str], None] = print, tta: bool = False, force: bool = False) -> FitOutcome:
    """Replay the trial (the best one unless `trial_number`), write its bundle to `out`, link it.
    With `tta`, the bundle's model averages each image with its mirror (search.fit.interpret)."""
    out = bundle.target_path(out)
    check_target_precision(target_precision)   # before an hour of training, not after
    study_file = load_study_file(study_path)
    check_outputs(study_file, out, force)
    quiet_optuna()
    study = open_study(study_file, create=False)
    trial = pick_trial(study, trial_number)
    record = trial_record(trial, study_file)
    config = record.replay_config()
    echo(f"trial {trial.number}{' (best)' if trial_number is None else ''} of study '{study.study_name}': "
         f"val_loss {trial.value:.6g}, seed {config.seed}, {count(config.epochs, 'epoch')}, params {json.dumps(trial.params)}")
    study_file = as_trained(study_file, attrs_of(trial), f"trial {trial.number}", echo)   # its [model], cache_px
    echo("data: reading the labels and checking the image cache...")
    dataset = prepare_study_data(study_file)
    recorded = attrs_of(trial).get(FINGERPRINT_ATTR, study.user_attrs.get(FINGERPRINT_ATTR))
    refuse_other_data(recorded, dataset, study_file, f"the one trial {trial.number} was trained on; the replay "
                      f"would not be that trial. Restore the labels file the study used")
    echo(f"data: fingerprint {dataset.fingerprint} matches the trial's")
    result, replay = replay_trial(study_file, trial, config, dataset, device, threads, echo,
                                  record.plan.cpu_threads if record.plan else None)
    if strict and not replay["matched"]:
        raise SwiprError(f"trial {trial.number}: replay is outside the tolerance and --strict is set; "
                         f"no bundle written")
    echo(f"TTA: scoring the {int(sum(dataset.split.is_valid))} validation images as they are and mirrored...")
    result, tta_record = measure_tta(result, dataset, config, replay["device"], tta, echo)
    threshold, scores = judge(result, target_precision, echo)
    replay["roc_auc"] = compare_auc(record, scores["roc_auc"], echo)
    manifest = {
        # the size the model ends at (stage 2's, where it ran) is the one it predicts at
        **model_manifest(study_file.model.arch, study_file.data.cache_px, config.final_image_size, result.mean,
                         result.std, threshold),
        "study": study.study_name, "storage": redact(study_file.study.storage), "trial": trial.number,
        "params": trial.params, "seed": config.seed, "epochs": config.epochs, "head_epochs": config.head_epochs,
        "data_fingerprint": dataset.fingerprint, "replay": replay, "tta": tta_record,
        # NaN (a validation split with one class has no AUC) is not JSON: null instead.
        "metrics": {key: None if isinstance(value, float) and value != value else value for key, value in scores.items()},
        "libraries": library_versions(),
    }
    echo("export: writing the weights and model.onnx, and checking the ONNX model against PyTorch...")
    manifest_sha256 = write_bundle(out, result, dataset, manifest, checked_vs_training=replay["device"] == "cpu",
                                   echo=echo, force=force)
    linked = link_trial(study, study_file, trial, out, manifest_sha256)
    echo(f"wrote bundle {out} (manifest sha256 {manifest_sha256}); linked to trial {trial.number} by {linked}")
    write_top_losses(out, result, dataset, threshold.value, echo)
    written = json.loads((out / bundle.MANIFEST).read_text())
    return FitOutcome(trial.number, cast(float, trial.value), replay["val_loss"], replay["matched"], out,
                      manifest_sha256, written)


def replay_trial(study_file, trial, config: TrainConfig, dataset, device: str | None, threads: int | None,
                 echo, planned_threads: int | None = None) -> tuple:
    """(TrainResult, replay record) of the trial's run again, with its CPU thread count."""
    name, where = study_file.device_from(device)
    with keyed(where):
        resolved = resolve_device(name)
    precision = study_file.train.precision
    # CPU reductions are summed per thread: the trial's thread count gives its exact numbers.
    if threads is not None and threads < 1:   # 0 is not "the default"
        raise SwiprError(f"--threads must be 1 or more, got {threads}")
    threads = threads or planned_threads or attrs_of(trial).get(THREADS_ATTR) or torch.get_num_threads()
    echo(f"replaying on {resolved} ({precision} precision, {count(threads, 'CPU thread')})...")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    echo(epoch_table.header())
    # a bar over the epochs on a terminal, the table's rows above it; in a pipe the rows alone
    steps = Steps(config.epochs, f"trial {trial.number} replay", "epochs", lines=0)
    above = steps.above(echo)

    def on_epoch(record) -> None:
        above(epoch_table.row(trial.number, record))
        steps.update(f"val_loss {record.valid_loss:.4f}")

    try:
        result = train(dataset, config, study_file.model, device=str(resolved), precision=precision,
                       compile=study_file.train.compile, on_epoch=on_epoch)
    finally:
        steps.close()
        torch.set_num_threads(previous_threads)
    replay = compare_replay(trial, float(result.metrics["val_loss"]), echo)
    replay.update(device=str(resolved), precision=precision, cpu_threads=threads)
    return result, replay


RECALL_FLOOR = 0.2   # a precise threshold that finds fewer YES photos than this is worth a warning


def judge(result, target_precision: float | None, echo) -> tuple:
    """(threshold, scores) on the validation split, said in three lines: the threshold's
    precision and recall come from the photos that chose it, so they are said with their counts
    and as the optimistic figures they are."""
    threshold = choose_threshold(result.valid_probs, result.valid_targets, target_precision)
    scores = classification_report(result.valid_probs, result.valid_targets, threshold.value)
    pairs = [(float(prob) >= threshold.value, int(target) == 1)
             for prob, target in zip(result.valid_probs, result.valid_targets, strict=True)]
    n_yes, n_called = sum(yes for _, yes in pairs), sum(called for called, _ in pairs)
    hits = sum(called and yes for called, yes in pairs)
    echo(f"validation ({scores['n_valid']} images, {scores['valid_yes_fraction']:.0%} YES): "
         f"ROC AUC {scores['roc_auc']:.4f}, PR AUC {scores['pr_auc']:.4f}, "
         f"balanced accuracy {scores['balanced_accuracy']:.4f}, accuracy {scores['accuracy']:.4f} "
         f"(majority baseline {scores['majority_accuracy']:.4f}, always {scores['majority_class']})")
    echo(f"threshold {threshold.value:.4f} ({threshold.rule}): precision {scores['precision']:.4f} "
         f"({hits} of {n_called} called YES), recall {scores['recall']:.4f} ({hits} of {n_yes} YES), "
         f"F1 {scores['f1']:.4f}")
    echo(f"note: the threshold was chosen on these same {n_yes} validation YES photo{'s' if n_yes != 1 else ''}, "
         f"so its precision and recall are optimistic: expect lower on new photos")
    if target_precision is not None and scores["recall"] < RECALL_FLOOR:
        echo(f"warning: the threshold for --target-precision {target_precision:g} finds only "
              f"{scores['recall']:.0%} of the YES photos (recall {scores['recall']:.4f} < {RECALL_FLOOR}): a lower "
              f"--target-precision, or none (best F1), keeps more of them")
    return threshold, scores


def compare_auc(record: TrialRecord, replay_auc: float, echo) -> dict:
    """The replay's ROC AUC against the one the trial recorded for its value's model."""
    recorded = record.result.roc_auc if record.result is not None else None
    if replay_auc != replay_auc:   # one class in the validation split: no AUC either way
        return {"trial": recorded, "replay": None}
    if recorded is None or record.result is None:
        echo(f"ROC AUC {replay_auc:.4f}; the trial recorded none for its best schedule (run by an older swipr)")
        return {"trial": None, "replay": replay_auc}
    same = "the same as" if abs(replay_auc - recorded) < 1e-9 else f"off by {abs(replay_auc - recorded):.2g} from"
    echo(f"ROC AUC {replay_auc:.4f}, {same} the trial's {recorded:.4f} (its best schedule, after epoch "
         f"{record.result.epoch})")
    return {"trial": recorded, "replay": replay_auc}


def compare_replay(trial: optuna.trial.FrozenTrial, replay_value: float, echo) -> dict:
    """The replay's final loss against the trial's, said in words; the record for the manifest."""
    trial_value = cast(float, trial.value)   # a COMPLETE trial's (pick_trial): always set
    diff = abs(replay_value - trial_value)
    tolerance = replay_tolerance(trial_value)
    matched = diff <= tolerance
    rule = f"{REPLAY_ATOL:g} + {REPLAY_RTOL:g} x |trial's|"
    if diff == 0:
        echo(f"replay: val_loss {replay_value:.6g} equals the trial's exactly (tolerance {tolerance:.2g} = {rule})")
    elif matched:
        echo(f"replay: val_loss {replay_value:.6g} vs the trial's {trial.value:.6g}: off by {diff:.2g}, "
             f"within tolerance {tolerance:.2g} = {rule}")
    else:
        echo(f"replay: val_loss {replay_value:.6g} vs the trial's {trial.value:.6g}: off by {diff:.3g} "
             f"({diff / max(abs(trial_value), 1e-12):.1%}), OUTSIDE tolerance {tolerance:.2g} = {rule}. Same params, "
             f"seed and data can still differ: GPU kernels (cuDNN convolutions, atomics) are not deterministic, "
             f"bf16/fp16 rounds differently, another CPU thread count or library version sums in another order, "
             f"and a change to the training code since the trial (augmentation, schedule) makes it another run")
    return {"trial_val_loss": trial.value, "val_loss": replay_value, "difference": diff, "tolerance": tolerance,
            "tolerance_rule": rule, "matched": matched}
