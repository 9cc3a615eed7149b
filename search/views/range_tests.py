"""The range tests a study ran ([space] lr finder, `swipr lr-find`): counted, what they cost
beside the trials' own epochs (objectives.lr_record.range_test_cost), and drawn as study
artifacts, where the dashboard shows them."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact

from objectives.lr_record import picture_name, range_test_cost
from search.views.lr_plot import finding_title, plot_lr_find
from swipr_core.train.lr_finding import LRFinding


def range_test_rows(study: optuna.Study) -> list[tuple[str, str]]:
    """("range tests", "6, 30 s ≈ 34.5 epochs") for the summary table and `swipr study best`;
    no row for a study without one."""
    cost = range_test_cost(study)
    if not cost["count"]:
        return []
    if cost["uncosted"] == cost["count"]:
        return [("range tests", f"{cost['count']} (an older study's: their cost was not recorded)")]
    text = f"{cost['count']}, {cost['seconds']:.0f} s ≈ {cost['epochs_equivalent']:.1f} epochs"
    notes = []
    if cost["by_lr_find"]:
        notes.append(f"{cost['by_lr_find']} by swipr lr-find")
    if cost["uncosted"]:
        notes.append(f"{cost['uncosted']} from an older study, cost not recorded")
    return [("range tests", text + (f" ({'; '.join(notes)})" if notes else ""))]


def upload_picture(study: optuna.Study, store, picture: Path, name: str) -> str:
    """Upload `picture` as the study artifact `name`; a failure is a warning (the curve is on the
    study already, and the report draws it from there). Returns " and study artifact NAME" or ""."""
    try:
        with tempfile.TemporaryDirectory(prefix="swipr-lr-find-") as tmp:
            copy = Path(tmp) / name
            copy.write_bytes(picture.read_bytes())
            upload_artifact(artifact_store=store, file_path=str(copy), study_or_trial=study, mimetype="image/png")
    except Exception as error:  # noqa: BLE001 - see the docstring
        return not_stored(error)
    return f" and study artifact {name}"


def not_stored(error: Exception) -> str:
    """Say on stderr why the plot is not a study artifact (the plot and the curve are kept
    elsewhere, so it is a warning); returns "", the note to add to the line that names the plot."""
    print(f"warning: could not store the plot as a study artifact: {type(error).__name__}: {error}",
          file=sys.stderr, flush=True)
    return ""


class RangeTestPictures:
    """An objective hook: each range test the search runs (objectives.lr_finder.StudyFinder's
    on_range_test) drawn and stored as a study artifact, as `swipr lr-find` stores its own."""

    def __init__(self, store):
        self.store = store

    def on_range_test(self, study: optuna.Study, finding: LRFinding, record: dict) -> None:
        name = picture_name(record["key"], record["version"])
        with tempfile.TemporaryDirectory(prefix="swipr-lr-find-") as tmp:
            try:
                picture = plot_lr_find(finding, Path(tmp) / name, title=f"{finding_title(finding)}, v{record['version']}")
            except Exception as error:  # noqa: BLE001 - a picture must not fail the trial
                print(f"warning: could not draw range test {record['key']}: {type(error).__name__}: {error}",
                      file=sys.stderr, flush=True)
                return
            upload_picture(study, self.store, picture, name)
