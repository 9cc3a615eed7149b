"""The data a study was started on, recorded on the study: its split's fingerprint and counts."""
from __future__ import annotations

import optuna

from objectives.optuna_compat import set_study_system_attr, study_system_attrs
from objectives.trial_attrs import attrs_of
from search.studyfile import StudyFile
from search.studyfile.fields import keyed
from swipr_core.data.dataset import Dataset, prepare_data
from swipr_core.data.split import CLASSES
from swipr_core.errors import SwiprError
from swipr_core.train.metrics import majority_accuracy

FINGERPRINT_ATTR = "data_fingerprint"
# The accuracy of always answering the validation set's commoner class: what an accuracy is
# worth only above. One split per study (the fingerprint), so one baseline per study.
MAJORITY_ATTR = "majority_accuracy"
# Why rows were left out, by reason: a study system attr (as a user attr it made each row of
# `optuna studies` wider than 400 characters); older studies kept it as the user attr.
EXCLUDED_ATTR = "data_excluded"
EXCLUDED_SYSTEM_ATTR = "swipr:data_excluded"


def prepare_study_data(study_file: StudyFile) -> Dataset:
    """The study's labelled, split and cached data; a split the data can't support (too few
    images of a class on one side) names the study file's [data] key."""
    with keyed(study_file.where("data")):
        return prepare_data(study_file.data)


def check_fingerprint(study: optuna.Study, dataset: Dataset, study_file: StudyFile) -> None:
    """Record the split's fingerprint on a new study; refuse data that differs from it."""
    recorded = study.user_attrs.get(FINGERPRINT_ATTR)
    if recorded is None:
        study.set_user_attr(FINGERPRINT_ATTR, dataset.fingerprint)
        study.set_user_attr("data_counts", dataset.split.counts())
        set_study_system_attr(study, EXCLUDED_SYSTEM_ATTR, dataset.split.meta.get("excluded", {}))
        record_majority(study, dataset)
        return
    if MAJORITY_ATTR not in study.user_attrs:   # a study started before the baseline was recorded
        record_majority(study, dataset)
    refuse_other_data(recorded, dataset, study_file, f"the one study '{study.study_name}' was started on: its "
                      f"trials would not be comparable. Restore the labels file the study used, or give the "
                      f"study a new [study] name")


def refuse_other_data(recorded: str | None, dataset: Dataset, study_file: StudyFile, why: str) -> None:
    """A split whose fingerprint is not the recorded one is refused, saying `why` it matters."""
    if recorded != dataset.fingerprint:
        raise SwiprError(f"{study_file.data.labels_file}: data fingerprint {dataset.fingerprint} differs from "
                         f"{recorded}, {why}")


def record_majority(study: optuna.Study, dataset: Dataset) -> None:
    split = dataset.split
    valid = [target for target, flag in zip(split.targets(), split.is_valid, strict=True) if flag]
    if valid:
        study.set_user_attr(MAJORITY_ATTR, majority_accuracy(valid))
        study.set_user_attr("majority_class", CLASSES[int(sum(valid) / len(valid) > 0.5)])


def majority_baseline(study: optuna.Study) -> tuple[float | None, str]:
    """(accuracy of always answering the commoner class, that class) on the study's validation
    split: as recorded, else from a finished trial (older studies), else (None, "")."""
    attrs = study.user_attrs
    if attrs.get(MAJORITY_ATTR) is not None:
        return attrs[MAJORITY_ATTR], attrs.get("majority_class", "")
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        majority = attrs_of(trial).get(MAJORITY_ATTR)
        if majority is not None:
            return majority, ""
    return None, ""


def data_summary(study: optuna.Study) -> dict:
    """What check_fingerprint recorded: {yes, no, valid, excluded, fingerprint} (notes, report)."""
    attrs = study.user_attrs
    counts = attrs.get("data_counts", {})
    return {"yes": counts.get("YES", 0), "no": counts.get("NO", 0), "valid": counts.get("valid", 0),
            "excluded": study_system_attrs(study).get(EXCLUDED_SYSTEM_ATTR, attrs.get(EXCLUDED_ATTR, {})),
            "fingerprint": attrs.get(FINGERPRINT_ATTR)}
