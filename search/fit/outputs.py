"""Every place `swipr fit` writes, checked before the replay: finding a read-only folder after
an hour of training on a GPU is an hour lost."""
from __future__ import annotations

from pathlib import Path

from search.studyfile.url_text import journal_path, sqlite_path
from search.studyfile import StudyFile
from swipr_core.data.writable import check_file_writable, check_folder_writable
from swipr_core.serve import bundle


def check_outputs(study_file: StudyFile, out: Path, force: bool = False) -> None:
    """The bundle's folder (bundle, link and swap live there; files of the user's own in an
    old bundle are refused unless `force`) and the study's storage, where the fit links the
    trial to its bundle. A file-backed storage is checked before anything
    opens it: closing any other descriptor of a SQLite file drops that process's locks on it."""
    bundle.check_target(out, force)
    database = sqlite_path(study_file.study.storage) or journal_path(study_file.study.storage)
    if database is None:   # a database server: its own permissions, seen when the study opens
        return
    what = "the study's storage, where the fit links the trial to its bundle"
    if database.is_file():
        check_file_writable(database, what)
    check_folder_writable(database.parent, what)   # SQLite's journal and WAL files, a journal's lock
