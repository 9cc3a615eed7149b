"""How a study's trials get their cycles ([study] n_cycles), recorded on the study.

"budget" (nested schedules) and "sampled" give a trial's params and value different meanings:
with a budget, n_cycles is no param and the value is the best finished schedule on the way.
So a study keeps the way it started: the first run records it (and each trial its own), and a
study that ran before the key existed ran "sampled". A study file that asks for the other way is refused in one line;
one that says nothing goes on the recorded way, and says so where that is not the default.
"""
from __future__ import annotations

import optuna

from objectives.space import DEFAULT_N_CYCLES_MODE, MODE_ATTR
from objectives.trial_attrs import attrs_of
from search.studyfile import StudyFile
from swipr_core.errors import SwiprError

BEFORE_THE_KEY = "sampled"   # how every study ran before [study] n_cycles existed


def recorded_mode(study: optuna.Study) -> str | None:
    """The study's mode: as recorded on it, else as its trials say (each new one records its
    own), else "sampled" where a trial sampled n_cycles before anything was recorded."""
    recorded = study.user_attrs.get(MODE_ATTR)
    if recorded is not None:
        return recorded
    trials = study.get_trials(deepcopy=False)
    said = [attrs_of(t)[MODE_ATTR] for t in trials if MODE_ATTR in attrs_of(t)]
    if said:
        return said[0]
    return BEFORE_THE_KEY if any("n_cycles" in t.params for t in trials) else None


def n_cycles_mode(study: optuna.Study, study_file: StudyFile) -> str:
    """The way this study's trials get their cycles (nothing written: what workers read)."""
    return recorded_mode(study) or study_file.study.n_cycles or DEFAULT_N_CYCLES_MODE


def settle_n_cycles_mode(study: optuna.Study, study_file: StudyFile) -> list[str]:
    """Refuse a [study] n_cycles the study did not start with; record the mode. Notes to print."""
    recorded, asked = recorded_mode(study), study_file.study.n_cycles
    if recorded is not None and asked and asked != recorded:
        raise SwiprError(f"{study_file.where('study')} n_cycles is \"{asked}\", but study '{study.study_name}' ran "
                         f"with n_cycles \"{recorded}\", and its trials' values would mean something else. Give the "
                         f"study a new [study] name, or set n_cycles = \"{recorded}\"")
    mode = recorded or asked or DEFAULT_N_CYCLES_MODE
    study.set_user_attr(MODE_ATTR, mode)
    if recorded is not None and not asked and recorded != DEFAULT_N_CYCLES_MODE:
        return [f"note: study '{study.study_name}' ran with n_cycles \"{recorded}\" (each trial one sampled "
                f"length); it goes on that way. A new study name gets nested schedules (\"budget\")"]
    return []
