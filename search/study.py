"""A study file -> an Optuna study: storage, sampler, pruner, data fingerprint, warm start."""
from __future__ import annotations

import optuna

from search.pruners import make_pruner
from search.samplers import make_sampler
from search.storage import open_storage, redact
from search.study_file import StudyFile
from swipr_core.data import DataSpec, Dataset
from swipr_core.errors import SwiprError

FINGERPRINT_ATTR = "data_fingerprint"


def data_spec(study_file: StudyFile) -> DataSpec:
    return study_file.data


def open_study(study_file: StudyFile, create: bool = True) -> optuna.Study:
    storage = open_storage(study_file.study.storage, create=create)
    sampler = make_sampler(study_file.study.sampler, study_file.study.seed)
    pruner = make_pruner(study_file.study.pruner, study_file.study.pruner_startup_trials,
                         study_file.study.pruner_warmup_epochs)
    name = study_file.study.name
    if create:
        return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                   direction="minimize", load_if_exists=True)
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise SwiprError(f"no study named '{name}' in {redact(study_file.study.storage)} "
                         f"(start it with `swipr study run {study_file.path.name}`)") from None


def check_fingerprint(study: optuna.Study, dataset: Dataset, study_file: StudyFile) -> None:
    """Record the split's fingerprint on a new study; refuse data that differs from it."""
    recorded = study.user_attrs.get(FINGERPRINT_ATTR)
    if recorded is None:
        study.set_user_attr(FINGERPRINT_ATTR, dataset.fingerprint)
        study.set_user_attr("data_counts", dataset.split.counts())
        study.set_user_attr("data_excluded", dataset.split.meta.get("excluded", {}))
        return
    if recorded != dataset.fingerprint:
        raise SwiprError(
            f"{study_file.data.labels_file}: data fingerprint {dataset.fingerprint} differs from "
            f"{recorded}, the one study '{study.study_name}' was started on: its trials would not be comparable. "
            f"Restore the labels file the study used, or give the study a new [study] name"
        )


def enqueue_warm_start(study: optuna.Study, study_file: StudyFile) -> int:
    """Enqueue the notebook's configurations as a new study's first trials; return how many.

    Params outside this study's space are left for the sampler to choose, so a small
    demo space still starts from the notebook's learning rate and schedule.
    """
    from objectives.finetune import NOTEBOOK_CONFIGS, in_space

    if not study_file.study.warm_start or study.trials:
        return 0
    for config in NOTEBOOK_CONFIGS:
        params = {name: value for name, value in config.items() if in_space(study_file.space[name], value)}
        study.enqueue_trial(params, skip_if_exists=True)
    return len(NOTEBOOK_CONFIGS)


def describe_trial(trial: optuna.trial.FrozenTrial) -> str:
    state = trial.state.name
    value = f" val_loss {trial.value:.4f}" if trial.value is not None else ""
    epochs = trial.user_attrs.get("epochs")
    steps = f" after {epochs} epoch{'s' if epochs != 1 else ''}" if epochs else ""
    params = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    return f"trial {trial.number} {state}{value}{steps}  {params}"


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        raise SwiprError(f"study '{study.study_name}' has no completed trial yet") from None
