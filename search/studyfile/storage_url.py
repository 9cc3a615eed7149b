"""[study] storage (or $SWIPR_STORAGE) -> the URL every process opens, relative paths resolved."""
from __future__ import annotations

import os
from pathlib import Path

from search.studyfile.fields import resolve
from search.studyfile.url_text import JOURNAL_SCHEME, JOURNAL_SUFFIXES, SQLITE_SCHEME, refuse_ambiguous_password


def _journal_url(base: Path, value: str) -> str | None:
    """journal:///rel, journal:////abs or a bare path ending in .log/.journal, as an absolute
    journal:/// URL (relative to `base`); None for anything else."""
    if value.startswith(JOURNAL_SCHEME):
        return JOURNAL_SCHEME + str(resolve(base, value[len(JOURNAL_SCHEME):]))
    if "://" not in value and value.endswith(JOURNAL_SUFFIXES):
        return JOURNAL_SCHEME + str(resolve(base, value))
    return None


def storage_url(path: Path, configured: str) -> str:
    """The storage URL every process opens; one whose userinfo has no single reading (an
    unencoded '@', '/', '?' or '#' in a password) is refused here, before anything imports a
    driver, resolves a host name or connects."""
    from_env = os.environ.get("SWIPR_STORAGE", "")
    if from_env:
        refuse_ambiguous_password(from_env, "SWIPR_STORAGE")
        # Passed on to worker processes resolved, so a later change of folder can't move it.
        return _journal_url(Path(), from_env) or from_env
    if configured:
        refuse_ambiguous_password(configured, f"{path}: [study] storage")
        if configured.startswith(SQLITE_SCHEME) and not configured.startswith(SQLITE_SCHEME + "/"):
            # A relative SQLite path is relative to the study file, like every other path.
            return SQLITE_SCHEME + str(resolve(path.parent, configured[len(SQLITE_SCHEME):]))
        # A journal file's too; journal:////abs is absolute, as with sqlite.
        return _journal_url(path.parent, configured) or configured
    return f"{SQLITE_SCHEME}{path.parent.resolve() / (path.stem + '.db')}"
