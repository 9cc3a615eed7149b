"""Open a study's storage from a URL, with errors that name the URL (never its password)."""
from __future__ import annotations

from pathlib import Path

from swipr_core.errors import SwiprError


def redact(url: str) -> str:
    """The URL as it may be shown to a user: any password replaced by ***."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def open_storage(url: str, create: bool = True):
    """An Optuna storage for `url`. With create=False a missing SQLite file is an error
    instead of a new empty database (status and best must not create files)."""
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SwiprError(f"storage URL {redact(url)!r} is not a database URL (e.g. sqlite:///study.db, "
                         f"postgresql://user:pass@host/db)") from None
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.is_file():
            raise SwiprError(f"storage {redact(url)}: no such database file (run `swipr study run` first)")
        if create and not path.parent.is_dir():
            raise SwiprError(f"storage {redact(url)}: folder {path.parent} does not exist")
    engine_kwargs = {}
    if parsed.get_backend_name() == "sqlite":
        # Wait for another writer rather than fail at once with "database is locked".
        engine_kwargs["connect_args"] = {"timeout": 60}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as error:  # driver, DNS, auth and schema errors all land here
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SwiprError(f"storage {redact(url)}: can't open it: {redact_text(reason, url)}") from None


def redact_text(text: str, url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        password = None
    return text.replace(password, "***") if password else text
