"""The search space a study runs on, recorded on the study, and a changed [space] checked
against it before any trial runs.

Optuna keeps each param's distribution with every trial and refuses a trial whose
distribution it can't compare with the earlier ones (a categorical with other choices, a
float turned int, log turned on): every new trial would FAIL. Such a change is refused here
in one line; one Optuna can take (a wider or narrower range) goes on, and says so.

The record is a study system attr (SPACE_SYSTEM_ATTR, ~1 kB of JSON: as a user attr it made
`optuna studies` print unreadable rows); studies written before kept it as the user attr
SPACE_ATTR, which is still read.
"""
from __future__ import annotations

import json

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
    distribution_to_json,
    json_to_distribution,
)

from objectives.optuna_compat import set_study_system_attr, study_system_attrs
from objectives.space import STAGE2, Choices, FinderLR, Range, param_name
from search.studyfile import StudyFile
from swipr_core.errors import SwiprError

SPACE_ATTR = "search_space"                 # older studies: the record as a study user attr
SPACE_SYSTEM_ATTR = "swipr:search_space"   # the record, as a study system attr


def distribution(spec: Range | Choices | FinderLR) -> BaseDistribution:
    """The distribution objectives.space.suggest asks Optuna for."""
    if isinstance(spec, FinderLR):
        return distribution(spec.factor)
    if isinstance(spec, Choices):
        return CategoricalDistribution(list(spec.values))
    if spec.is_int:
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))
    return FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)


def describe(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return json.dumps(list(dist.choices))
    if not isinstance(dist, IntDistribution | FloatDistribution):
        raise TypeError(f"no description for {type(dist).__name__}")
    kind = "integers" if isinstance(dist, IntDistribution) else "numbers"
    how = ", log" if dist.log else (f", step {dist.step}" if dist.step not in (None, 1) else "")
    return f"{kind} {dist.low}..{dist.high}{how}"


def _recorded(study: optuna.Study) -> dict[str, BaseDistribution]:
    """The space the study ran on: as recorded, or (for older studies) from its trials."""
    stored = recorded_space(study)
    if stored:   # each one a dict; older studies stored escaped JSON text
        return {name: json_to_distribution(value if isinstance(value, str) else json.dumps(value))
                for name, value in stored.items()}
    found: dict[str, BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        found.update(trial.distributions)
    return found


def recorded_space(study: optuna.Study) -> dict | None:
    """The recorded space as stored ({param: distribution as a dict, or older studies' JSON
    text}), from the system attr, else an older study's user attr; None: none recorded."""
    stored = study_system_attrs(study).get(SPACE_SYSTEM_ATTR)
    if stored is None:
        stored = study.user_attrs.get(SPACE_ATTR)
    return stored if isinstance(stored, dict) else None


def _where(study_file: StudyFile, name: str) -> tuple[str, str]:
    """(the table, the key) a param comes from: stage 2's ([space.stage2]) are named stage2_<key>."""
    if name.startswith(STAGE2):
        return "space.stage2", name[len(STAGE2):]
    return "space", name


def _refuse_another_pipeline(study: optuna.Study, study_file: StudyFile, old: dict, new: dict) -> None:
    """A study whose trials ran one stage can't go on with two, nor the other way: a trial's
    value would be another pipeline's (as a changed [study] n_cycles would be another meaning)."""
    before, now = (any(name.startswith(STAGE2) for name in names) for names in (old, new))
    if not old or before == now or not study.get_trials(deepcopy=False):
        return
    said = "adds a [space.stage2] table" if now else "has no [space.stage2] table"
    ran = "one stage" if now else "two stages"
    raise SwiprError(f"{study_file.path}: {said}, but study '{study.study_name}' ran its trials with {ran}, and their "
                     f"values would mean another run. Give the study a new [study] name, or put [space.stage2] back "
                     f"as it was")


def check_space(study: optuna.Study, study_file: StudyFile) -> list[str]:
    """Refuse a [space] (or [space.stage2]) the study can't take; record the one it runs on, both
    stages. Returns notes to print."""
    old = _recorded(study)
    new = {param_name(name, spec): distribution(spec) for name, spec in study_file.space.items()}
    _refuse_another_pipeline(study, study_file, old, new)
    notes = []
    for name, dist in new.items():
        if name not in old or old[name] == dist:
            continue
        table, key = _where(study_file, name)
        try:
            check_distribution_compatibility(old[name], dist)
        except ValueError:
            raise SwiprError(
                f"{study_file.where(table)} {key} is {describe(dist)}, but study '{study.study_name}' ran on "
                f"{describe(old[name])}, and Optuna can't mix the two in one study. Give the study a new "
                f"[study] name, or put [{table}] {key} back as it was") from None
        notes.append(f"note: [{table}] {key} changed from {describe(old[name])} to {describe(dist)}; "
                     f"study '{study.study_name}' goes on with it")
    # as dicts, not distribution_to_json's text: readable in the dashboard and in SQL
    set_study_system_attr(study, SPACE_SYSTEM_ATTR,
                          {name: json.loads(distribution_to_json(dist)) for name, dist in new.items()})
    return notes
