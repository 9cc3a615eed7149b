"""Link a trial to its bundle where the study keeps its records."""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import upload_artifact

from search.views.artifacts import artifact_dir, open_artifact_store


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
