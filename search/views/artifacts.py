"""Pictures and notes of a study, stored as Optuna artifacts that optuna-dashboard shows.

Every trial gets its loss/accuracy curves and the learning-rate schedule it actually ran
(pruned and failed trials too, up to the epoch they reached); the loss curve marks the cycle
ends, the epochs where the pruner judged the trial and the value it judged, and for a pruned
trial what it was compared with; both mark where a two-stage trial's stage 2 starts (a dashed
line, labelled with its image size, batch size and freeze); a finished trial also gets a
confusion matrix, a ROC curve and its top losses (search.views.top_losses) of its value's model
(the best finished schedule, objectives.record), for every trial that finished one. Each trial
gets a markdown note of its params and metrics (in optuna-dashboard's Note panel, and in one
line as a user attr: see store_trial_note), the study an optuna-dashboard note of its data. A
picture that can't be drawn or stored is reported on stderr and skipped: it must never turn a
finished trial into a failed one.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # files only, never a window; before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact  # noqa: E402
from optuna_dashboard import get_note, save_note  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from objectives.judging import AGAINST_ATTR, JUDGED_ATTR, ScheduleCut, judge  # noqa: E402
from objectives.optuna_compat import stored_trial, study_id  # noqa: E402
from objectives.optuna_compat import trial_id as id_of
from objectives.pausing import TrialPaused  # noqa: E402
from objectives.record import best_finished_record, record_of  # noqa: E402
from objectives.trial_attrs import attrs_of, set_attr  # noqa: E402
from search.study.data_record import data_summary, majority_baseline  # noqa: E402
from search.views.dashboard_compat import dashboard_note_attrs, note_chunk_key, note_version_key  # noqa: E402
from search.views.format import accuracy_text, fmt  # noqa: E402
from search.views.range_tests import RangeTestPictures  # noqa: E402
from search.views.results import last_epoch_loss, result_metrics, schedule_text  # noqa: E402
from search.views.stages import RecordStages, StageSpan, boundary_label, spans_of, stages_text  # noqa: E402
from search.views.top_losses import TOP_LOSSES_PNG, draw_top_losses  # noqa: E402
from swipr_core.data.split import valid_targets  # noqa: E402
from swipr_core.errors import SwiprError  # noqa: E402
from swipr_core.train.metrics import confusion_counts, roc_auc  # noqa: E402

# Artifact file names: the report finds the best trial's pictures by these.
CURVES_PNG = "curves.png"
LR_PNG = "lr_schedule.png"
CONFUSION_PNG = "confusion_matrix.png"
ROC_PNG = "roc_curve.png"
PICTURES = (CURVES_PNG, LR_PNG, CONFUSION_PNG, ROC_PNG, TOP_LOSSES_PNG)
NOTE_ATTR = "note"    # a trial's note in one line, a user attr (the whole note: the dashboard's Note panel)
NOTE_STATE_ATTR = "swipr:note_state"   # a trial system attr: the version and chunk count of its stored note


def artifact_dir(study_file) -> Path:
    """Where a study's artifacts live: $SWIPR_ARTIFACT_DIR, else `<study stem>.artifacts/` beside
    the study file (a shared folder is needed when workers on several machines share a study)."""
    configured = os.environ.get("SWIPR_ARTIFACT_DIR", "")
    if configured:
        return Path(configured).expanduser().resolve()
    return study_file.path.parent / f"{study_file.path.stem}.artifacts"


def check_artifact_dir(directory: Path | None) -> None:
    """Refuse an --artifact-dir that is not a folder. Named, so not a folder to skip quietly: a
    typo would serve a dashboard, or write a report, with no pictures and no word why."""
    if directory is not None and not directory.is_dir():
        what = "not a folder" if directory.exists() else "no such folder"
        raise SwiprError(f"--artifact-dir {directory}: {what}")


def open_artifact_store(directory: Path, create: bool = True) -> FileSystemArtifactStore:
    if create:
        directory.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(directory)


# --- pictures -------------------------------------------------------------------------------

def _shade_phases(ax, history) -> None:
    """Grey bands over the frozen epochs, so the unfreezing point shows on every curve; one band
    for each run of frozen epochs (a two-stage run can freeze again in stage 2)."""
    runs: list[list[int]] = []
    for record in history:
        if record.phase != "frozen":
            continue
        if runs and runs[-1][1] == record.epoch - 1:
            runs[-1][1] = record.epoch
        else:
            runs.append([record.epoch, record.epoch])
    for number, (first, last) in enumerate(runs):
        ax.axvspan(first - 0.5, last + 0.5, color="0.9", zorder=0, label="frozen body" if number == 0 else None)


def mark_stage(ax, boundary: StageSpan | None) -> None:
    """A vertical line where stage 2 starts (between its first epoch and the one before),
    labelled with what stage 2 trains."""
    if boundary is None:
        return
    x = boundary.first_epoch - 0.5
    ax.axvline(x, color="C4", linestyle="--", linewidth=1.5, zorder=2, label=boundary_label(boundary))
    # written up the line, beside it: across the top it would sit on the curves' first points
    ax.text(x, 0.97, f"stage {boundary.stage} ", transform=ax.get_xaxis_transform(), color="C4", rotation=90,
            ha="right", va="top", fontsize="small")


def stage_boundary(trial, history) -> StageSpan | None:
    """Stage 2's span as the trial recorded it (search.views.stages), where the run reached it."""
    spans = spans_of(attrs_of(trial))
    later = [span for span in spans if span.stage > 1]
    if not later or not any(r.epoch >= later[0].first_epoch for r in history):
        return None
    return later[0]


def judging_marks(trial, history) -> dict:
    """Where the pruner judged a trial and on what (objectives.judging), for plot_curves."""
    attrs = attrs_of(trial)
    prune_at = attrs.get("prune_at", "epoch")
    losses, flags = [r.valid_loss for r in history], [bool(getattr(r, "cycle_end", False)) for r in history]
    reported = [judge(losses[:n], flags[:n], prune_at).value for n in range(1, len(history) + 1)]
    return {"prune_at": prune_at, "reported": reported, "judged": list(attrs.get(JUDGED_ATTR, [])),
            "against": attrs.get(AGAINST_ATTR)}


def _mark_judging(ax, history, marks: dict) -> None:
    """Cycle ends, the judged value, the epochs it was judged at, and what a pruned trial lost to."""
    for record in history:
        if getattr(record, "cycle_end", False):
            ax.axvline(record.epoch, color="0.75", linestyle=":", linewidth=1, zorder=0)
    epochs = [r.epoch for r in history]
    if marks["prune_at"] == "cycle_end":
        ax.step(epochs, [math.nan if v is None else v for v in marks["reported"]], where="post", color="k",
                linewidth=1, alpha=0.6, label="judged on: best cycle-end loss")
    judged = [(e, marks["reported"][e]) for e in marks["judged"] if e < len(marks["reported"])]
    if judged:
        ax.plot(*zip(*judged, strict=True), "D", color="k", markersize=5, label="judged here", zorder=3)
    against = marks["against"]
    if against and "median" in against:
        e, median = against["epoch"], against["median"]
        ax.errorbar([e], [median], yerr=[[median - against["best"]], [against["worst"] - median]], fmt="X",
                    color="C3", markersize=8, capsize=3, zorder=4,
                    label=f"pruned against: {against['n_completed']} finished trials (median, range)")


def plot_curves(history, path: Path, title: str, marks: dict | None = None, baseline: float | None = None,
                boundary: StageSpan | None = None, value_epoch: int | None = None) -> Path:
    """curves_figure, written to `path` (PNG)."""
    return _save(curves_figure(history, title, marks, baseline, boundary, value_epoch), path)


def _mark_value(loss_ax, acc_ax, history, value_epoch: int | None) -> None:
    """A star on the epoch whose finished schedule is the trial's value (its record's result)."""
    record = next((r for r in history if r.epoch == value_epoch), None)
    if record is None:
        return
    loss_ax.plot([record.epoch], [record.valid_loss], "*", color="C3", markersize=14, zorder=5,
                 label=f"the value: epoch {record.epoch}")
    acc_ax.plot([record.epoch], [record.accuracy], "*", color="C3", markersize=14, zorder=5,
                label=f"the value's epoch ({record.epoch})")


def curves_figure(history, title: str, marks: dict | None = None, baseline: float | None = None,
                  boundary: StageSpan | None = None, value_epoch: int | None = None):
    """Train and validation loss, and validation accuracy, per epoch; `marks` from judging_marks;
    `baseline` the majority-class accuracy, drawn dashed: the line the accuracy must clear;
    `boundary` stage 2's span (stage_boundary), marked where it starts."""
    epochs = [r.epoch for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    _shade_phases(loss_ax, history)
    mark_stage(loss_ax, boundary)
    loss_ax.plot(epochs, [r.train_loss for r in history], "o-", label="train loss")
    loss_ax.plot(epochs, [r.valid_loss for r in history], "o-", label="valid loss")
    if marks is not None:
        _mark_judging(loss_ax, history, marks)
    _mark_value(loss_ax, acc_ax, history, value_epoch)   # before the legends, which list it
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy")
    loss_ax.legend(fontsize="small")
    _shade_phases(acc_ax, history)
    mark_stage(acc_ax, boundary)
    acc_ax.plot(epochs, [r.accuracy for r in history], "o-", color="C2", label="valid accuracy")
    if baseline is not None and math.isfinite(baseline):
        acc_ax.axhline(baseline, color="0.3", linestyle="--", linewidth=1.2,
                       label=f"majority baseline {baseline:.3f}")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(0, 1)
    acc_ax.legend(fontsize="small")
    for ax in (loss_ax, acc_ax):
        ax.set_xticks(epochs)
    fig.suptitle(title)
    return fig


def plot_lr(history, path: Path, title: str, boundary: StageSpan | None = None) -> Path:
    """lr_figure, written to `path` (PNG)."""
    return _save(lr_figure(history, title, boundary), path)


def lr_figure(history, title: str, boundary: StageSpan | None = None):
    """The head's learning rate at every batch, on the epoch axis; stage 2's start marked."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    _shade_phases(ax, history)
    mark_stage(ax, boundary)
    xs, ys = [], []
    for record in history:
        n = len(record.lrs)
        xs += [record.epoch - 0.5 + (i + 0.5) / n for i in range(n)]
        ys += record.lrs
    ax.plot(xs, ys, color="C0")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate (head)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[1]:   # the frozen band or the stage line: say which is which
        # below the axis: inside, it sits on a restart's peak wherever it goes
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    return fig


def confusion(probs, targets, threshold: float = 0.5) -> list[list[int]]:
    """[[NO->NO, NO->YES], [YES->NO, YES->YES]]: rows are the truth, columns the answer."""
    counts = confusion_counts(probs, targets, threshold)
    return [[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]]


def plot_confusion(probs, targets, path: Path, title: str) -> Path:
    matrix = confusion(probs, targets)
    fig, ax = plt.subplots(figsize=(4, 3.8))
    ax.imshow(matrix, cmap="Blues")
    peak = max(max(row) for row in matrix) or 1
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=14,
                    color="white" if matrix[i][j] > peak / 2 else "black")
    ax.set_xticks([0, 1], ["NO", "YES"])
    ax.set_yticks([0, 1], ["NO", "YES"])
    ax.set_xlabel("model says")
    ax.set_ylabel("label")
    ax.set_title(title)
    return _save(fig, path)


def plot_roc(probs, targets, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4, 3.8))
    ax.plot([0, 1], [0, 1], ":", color="0.6", label="chance")
    if len(set(int(t) for t in targets)) == 2:
        fpr, tpr, _ = roc_curve(targets, probs)
        ax.plot(fpr, tpr, color="C1", label=f"AUC {roc_auc(probs, targets):.3f}")
    else:   # one class only in the validation set: no curve to draw, say so on the picture
        ax.text(0.5, 0.5, "validation set has one class only", ha="center")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (YES)")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="lower right")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --- notes ------------------------------------------------------------------------------------

def trial_note(number: int, state: str, params: dict, metrics: dict, baseline: float | None = None,
               stages: list[StageSpan] | None = None, value_is: str = "", last_epoch: tuple | None = None) -> str:
    """The trial's params and metrics (its result's: the value's schedule, `value_is` in words);
    its accuracy with the majority `baseline` beside it; a two-stage trial's `stages`
    (search.views.stages) in a line; `last_epoch` (epoch, val_loss) where it is another epoch."""
    lines = [f"## Trial {number}: {state}", ""]
    if value_is:
        lines += [f"Its value is {value_is}; the metrics and pictures are of that model.", ""]
    if stages:
        lines += [f"Stages: {stages_text(stages)}.", ""]
    lines += ["| param | value |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in params.items()]
    if last_epoch is not None:
        metrics = {**metrics, f"last epoch ({last_epoch[0]}) val_loss": last_epoch[1]}
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {accuracy_text(v, baseline) if k == 'val_accuracy' else fmt(v)} |"
                  for k, v in metrics.items() if k != "majority_accuracy"]
    return "\n".join(lines) + "\n"


def note_line(state: str, metrics: dict, baseline: float | None = None) -> str:
    """The note in one line, for the dashboard's user-attribute table and `status --json`."""
    parts = [state]
    if metrics.get("val_loss") is not None:
        parts.append(f"val_loss {fmt(metrics['val_loss'])}")
    if metrics.get("val_accuracy") is not None:
        parts.append(f"accuracy {accuracy_text(metrics['val_accuracy'], baseline)}")
    return ", ".join(parts)


def store_trial_note(trial, store, note: str, line: str) -> None:
    """A trial's note in optuna-dashboard's Note panel, and its one line as a user attr (NOTE_ATTR).

    The note goes where the dashboard's save_note puts it (dashboard_note_attrs), written key by
    key without save_note's two reads of every study system attr: each key is one row, so storing
    a note costs the same at any number of trials. The trial's own system attr NOTE_STATE_ATTR
    keeps the note's version and chunk count, so storing it again (a trial's note is rewritten
    when its result changes) raises the version the dashboard's editor checks and blanks the
    chunks a shorter note no longer uses. `store` is the study's artifact store; the note needs
    none of it. The study page reads the notes linearly in swipr's dashboard only
    (search.views.dashboard); plain optuna-dashboard scans every study system attr per trial."""
    storage, trial_id = trial.storage, id_of(trial)
    state = storage.get_trial_system_attrs(trial_id).get(NOTE_STATE_ATTR, {})
    attrs = dashboard_note_attrs(trial_id, note, state.get("version", 0) + 1)
    chunks = len(attrs) - 1
    for i in range(chunks, state.get("chunks", 0)):   # left by a longer note stored before: blank them
        attrs[note_chunk_key(trial_id, i)] = ""
    set_attr(trial, NOTE_ATTR, line)
    # the version last: a page read in between shows the new text under the old version, never
    # a new version over half a note
    for key in sorted(attrs, key=lambda key: key == note_version_key(trial_id)):
        storage.set_study_system_attr(study_id(trial.study), key, attrs[key])
    storage.set_trial_system_attr(trial_id, NOTE_STATE_ATTR,
                                  {"version": attrs[note_version_key(trial_id)], "chunks": chunks})


def study_note(name: str, data: dict) -> str:
    """The study's data note, from search.study.data_record.data_summary."""
    yes, no, excluded = data["yes"], data["no"], data["excluded"]
    share = yes / (yes + no) if yes + no else float("nan")
    lines = [f"## Study {name}: data", "",
             f"- images: {yes + no} (YES {yes}, NO {no}; YES share {share:.1%})",
             f"- validation images: {data['valid']}",
             f"- split fingerprint: `{data['fingerprint'] or '?'}`"]
    if excluded:
        lines += ["", "| excluded because | rows |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in excluded.items()]
        lines += [f"| **total** | {sum(excluded.values())} |"]
    return "\n".join(lines) + "\n"


def save_study_note(study: optuna.Study) -> None:
    """The data note, from what search.study.data_record.check_fingerprint recorded."""
    save_note(study, study_note(study.study_name, data_summary(study)))


# --- the objective's hook -----------------------------------------------------------------------

def _warn(trial, what: str, error: BaseException) -> None:
    print(f"warning: trial {trial.number}: could not store {what}: {type(error).__name__}: {error}",
          file=sys.stderr, flush=True)


class TrialArtifacts:
    """Objective hooks (see objectives.finetune) that upload each trial's pictures and note."""

    def __init__(self, store, dataset=None):
        self.store = store
        self.dataset = dataset   # its image cache gives the top-loss grid its pictures

    def on_result(self, trial, result) -> None:
        self._store(trial, "COMPLETE", result.history)

    def on_stop(self, trial, history, error: BaseException) -> None:
        state = "PRUNED" if isinstance(error, optuna.TrialPruned) else f"FAILED ({type(error).__name__})"
        if isinstance(error, ScheduleCut):   # stopped after a finished schedule: its value is that one's
            state = "COMPLETE (stopped by the pruner after a finished schedule, which it keeps)"
        if isinstance(error, TrialPaused):   # scheduler = "promote": it may be given its next cycle
            state = f"PAUSED after cycle {error.cycles}"
        self._store(trial, state, history)

    def _store(self, trial, state: str, history) -> None:
        """The note and pictures of the trial's record: its metrics, confusion, ROC and top losses
        are of its best finished schedule's model (the value's), from the predictions it kept."""
        record = record_of(stored_trial(trial))
        try:
            baseline, _ = majority_baseline(trial.study)
        except Exception as error:  # noqa: BLE001 - the pictures without the baseline, then
            baseline = None
            _warn(trial, "the majority baseline", error)
        if baseline is None and record.result is not None:   # a study that recorded none: the split's own
            baseline = record.result.majority_accuracy
        value_is = schedule_text(record) if record.result is not None else ""
        try:
            metrics = {**result_metrics(record), "epochs run": len(history)}
            note = trial_note(trial.number, state, trial.params, metrics, baseline, spans_of(attrs_of(trial)),
                              value_is=value_is, last_epoch=last_epoch_loss(trial, record))
            line = note_line(state, result_metrics(record), baseline)
            if record.result is not None:
                line += f" (after epoch {record.result.epoch})"
            store_trial_note(trial, self.store, note, line)
        except Exception as error:  # noqa: BLE001 - a note is never worth a trial
            _warn(trial, "its note", error)
        if not history:
            return
        title = f"trial {trial.number} ({state.split()[0].lower()})"
        try:
            marks = judging_marks(trial, history)
        except Exception as error:  # noqa: BLE001 - the curves without the marks, then
            marks = None
            _warn(trial, "the judging marks", error)
        boundary = stage_boundary(trial, history)
        value_epoch = record.result.epoch if record.result is not None else None
        # name -> the drawing, given where to write it and the title
        drawings: dict[str, Callable[[Path, str], Path]] = {
            CURVES_PNG: partial(plot_curves, history, marks=marks, baseline=baseline, boundary=boundary,
                                value_epoch=value_epoch),
            LR_PNG: partial(plot_lr, history, boundary=boundary)}
        best = best_finished_record(history)
        if best is not None and best.valid_probs is not None and self.dataset is not None:
            probs, targets = np.asarray(best.valid_probs), valid_targets(self.dataset.split)
            of = f"trial {trial.number}, epoch {best.epoch} (its value)"
            drawings[CONFUSION_PNG] = partial(_retitled, plot_confusion, probs, targets, title=of)
            drawings[ROC_PNG] = partial(_retitled, plot_roc, probs, targets, title=of)
            drawings[TOP_LOSSES_PNG] = partial(_retitled, partial(draw_top_losses, self.dataset), probs, targets,
                                               title=of)
        with tempfile.TemporaryDirectory(prefix="swipr-plots-") as tmp:
            for name, draw in drawings.items():
                try:
                    path = draw(Path(tmp) / name, title)
                    upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial,
                                    mimetype="image/png")
                except Exception as error:  # noqa: BLE001 - see the module docstring
                    _warn(trial, name, error)


def _retitled(draw, probs, targets, path: Path, _title: str, title: str) -> Path:
    """`draw(probs, targets, path, title)` under its own title, not the hook's."""
    return draw(probs, targets, path, title)


def trial_pictures(trial: optuna.trial.FrozenTrial, storage, store) -> dict[str, bytes]:
    """{file name: PNG bytes} of a stored trial's pictures (the newest upload of each name)."""
    found: dict[str, bytes] = {}
    for meta in get_all_artifact_meta(trial, storage=storage):
        if meta.filename in PICTURES:
            try:
                with store.open_reader(meta.artifact_id) as reader:
                    found[meta.filename] = reader.read()
            except Exception:  # noqa: BLE001 - an artifact file deleted by hand: show the rest
                continue
    return found


def make_objective_hooks(study_file, study: optuna.Study, dataset=None) -> list:
    """The artifact hooks for a study's objective, after the one that records a two-stage trial's
    stages (which its pictures mark); writes the study's data note once. With the trials'
    `dataset`, a finished trial also gets its top-loss grid."""
    if not get_note(study).strip():
        save_study_note(study)
    store = open_artifact_store(artifact_dir(study_file))
    return [RecordStages(), TrialArtifacts(store, dataset), RangeTestPictures(store)]
