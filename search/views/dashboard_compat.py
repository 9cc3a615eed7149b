"""Every use of optuna-dashboard's private API, in one place (objectives/optuna_compat.py does
the same for Optuna's).

optuna-dashboard has no public call for these: the keys its Note panel reads a trial's note
from, and the module function that serves a study's page. tests/test_optuna_compat.py runs each
against the installed optuna-dashboard, and pyproject.toml pins it to the tested release range.
"""
from __future__ import annotations

from typing import Callable

import optuna
import optuna_dashboard._app as _app
import optuna_dashboard._note as _note
import optuna_dashboard._serializer as _serializer

__all__ = ["dashboard_note_attrs", "note_chunk_key", "note_version_key", "plain_study_page", "read_note", "replace_study_page",
           "serialize_frozen_trial", "study_page"]


def dashboard_note_attrs(trial_id: int, note: str, version: int) -> dict[str, object]:
    """The study system attrs that hold a trial's note where optuna-dashboard's Note panel reads
    it: its version and its text in chunks of SYSTEM_ATTR_MAX_LENGTH (the dashboard's own keys
    and splitting, as its save_note writes them)."""
    return {**_note.split_body(note, trial_id), _note.note_ver_key(trial_id): version}


def note_chunk_key(trial_id: int, index: int) -> str:
    """The study system attr holding chunk `index` of a trial's note."""
    return f"{_note.note_str_key_prefix(trial_id)}{index}"


def note_version_key(trial_id: int) -> str:
    """The study system attr holding a trial's note version (the dashboard's editor checks it)."""
    return _note.note_ver_key(trial_id)


def study_page() -> Callable | None:
    """The function the dashboard's app serves a study's page with (serialize_study_detail),
    None where a release has none by that name."""
    if not hasattr(_serializer, "serialize_frozen_trial"):   # what a replacement page needs
        return None
    return getattr(_app, "serialize_study_detail", None)


def replace_study_page(serialize: Callable) -> None:
    """Serve every study page of this process with `serialize` (study_page's signature)."""
    _app.serialize_study_detail = serialize


def serialize_frozen_trial(study_id: int, trial: optuna.trial.FrozenTrial, study_system_attrs: dict) -> dict:
    """One trial as the study page lists it, read against `study_system_attrs` only."""
    return _serializer.serialize_frozen_trial(study_id, trial, study_system_attrs)


def plain_study_page() -> Callable:
    """optuna-dashboard's own study page function, as its app imports it (to undo a replacement)."""
    return _serializer.serialize_study_detail


def read_note(study_system_attrs: dict, trial_id: int) -> dict:
    """A trial's note as the Note panel reads it from the study system attrs: {"version", "body"}."""
    return _note.get_note_from_system_attrs(study_system_attrs, trial_id)
