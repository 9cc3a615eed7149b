"""What of the study file a trial trained with, recorded on the trial, and read back by a fit.

A trial's params say only what it drew from [space]. The network ([model]) and the pixels it
saw ([data] cache_px) come from the study file, which can change after the trial ran (or
while a run goes on). So every trial records them, with the SHA-256 of the file's version,
and `swipr fit` replays the trial's, whatever the file says now.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from objectives.trial_attrs import STUDY_FILE_ATTR, set_attr
from search.studyfile.sections import StudyFile
from swipr_core.errors import SwiprError
from swipr_core.train.model_spec import ModelSpec

MODEL_ATTR = "model"                    # {"arch", "pretrained", "weights"}: [model] as trained
CACHE_PX_ATTR = "cache_px"              # [data] cache_px: the pixels the trial's images had


def trained_with(study_file: StudyFile) -> dict:
    """The user attrs a trial records before it trains."""
    model = study_file.model
    return {MODEL_ATTR: {"arch": model.arch, "pretrained": model.pretrained,
                         "weights": None if model.weights is None else str(model.weights)},
            CACHE_PX_ATTR: study_file.data.cache_px, STUDY_FILE_ATTR: study_file.sha256}


def check_same_version(study_file: StudyFile, run_sha256: str) -> None:
    """Refuse a study file read again (a Dask worker reads its own copy) that is no longer the
    version the run started with: the run would go on as another study without a word."""
    if run_sha256 and study_file.sha256 != run_sha256:
        raise SwiprError(f"{study_file.path}: changed since the run started (SHA-256 {study_file.sha256[:12]}…, "
                         f"the run's {run_sha256[:12]}…); a running study keeps the file it started with: "
                         f"put it back, or stop the run and start it again")


class RecordTrainedWith:
    """An objective hook (objectives.finetune): the trial's settings go on it as it starts."""

    def __init__(self, study_file: StudyFile):
        self.attrs = trained_with(study_file)

    def on_start(self, trial, config) -> None:
        for key, value in self.attrs.items():
            set_attr(trial, key, value)


def as_trained(study_file: StudyFile, attrs: dict, label: str, echo: Callable[[str], None]) -> StudyFile:
    """`study_file` with [model] and cache_px as the trial (its user `attrs`) trained them; each
    difference from the file said in one line. A trial that recorded none (run by an older
    swipr) keeps the file's, said once."""
    recorded = attrs.get(MODEL_ATTR)
    if not isinstance(recorded, dict) or CACHE_PX_ATTR not in attrs:
        echo(f"{label} recorded no [model] or cache_px (run by an older swipr); using the study file's")
        return study_file
    weights = recorded.get("weights")
    model = ModelSpec(arch=recorded["arch"], pretrained=recorded["pretrained"],
                      weights=None if weights is None else Path(weights))
    cache_px = int(attrs[CACHE_PX_ATTR])
    changed = [(f"[model] {key}", getattr(model, key), getattr(study_file.model, key))
               for key in ("arch", "pretrained", "weights")]
    changed.append(("[data] cache_px", cache_px, study_file.data.cache_px))
    for key, trial_value, file_value in changed:
        if trial_value != file_value:
            echo(f"{label} trained with {key} = {trial_value!r}; {study_file.path} now says {file_value!r}: "
                 f"replaying the trial's")
    return dataclasses.replace(study_file, model=model,
                               data=dataclasses.replace(study_file.data, cache_px=cache_px))
