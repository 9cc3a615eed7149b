"""A storage URL read as text, before anything connects: which kind of file it names (a
journal, a SQLite database), the driver it goes through, its parts cut by position, its
passwords, and the URL or free text as they may be shown with the passwords hidden. A URL
with no single reading of its userinfo is refused here."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, unquote_plus

from sqlalchemy.engine import make_url

from swipr_core.errors import SwiprError

JOURNAL_SCHEME = "journal:///"           # journal:///rel/study.log or journal:////abs/study.log
JOURNAL_SUFFIXES = (".log", ".journal")  # a bare path with these endings is a journal file too
SQLITE_SCHEME = "sqlite:///"             # sqlite:///rel/study.db or sqlite:////abs/study.db


def journal_path(url: str) -> Path | None:
    if url.startswith(JOURNAL_SCHEME):
        return Path(url[len(JOURNAL_SCHEME):])
    return None


def sqlite_path(url: str) -> Path | None:
    if url.startswith(SQLITE_SCHEME):
        return Path(url[len(SQLITE_SCHEME):])
    return None


def normalize_url(url: str) -> str:
    """Accept the URL a database admin hands out. postgres:// and postgresql:// without a
    driver go through psycopg2 (the `postgres` extra): SQLAlchemy 2.1 would pick psycopg 3,
    which isn't installed. An explicit driver (postgresql+psycopg://...) is left alone."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme):]
    return url


# scheme://[userinfo@]rest. RFC 3986 ends the authority at the first "/", "?" or "#", and a
# userinfo holds no "@"; SQLAlchemy instead ends the password at the first "@" and knows no
# fragment. A URL on which the two readings could differ has no one split: it is refused
# (refuse_ambiguous_password) before anything connects, and redacted as if everything up to
# its last "@" were the password.
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][\w+.-]*://)(?P<after>.*)$", re.S)
_ENDS_AUTHORITY = "/?#"
_DSN_PASSWORD = re.compile(r"password\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))", re.I)
_HIDDEN = "<storage URL hidden: it can't be read as scheme://user:password@host/db>"


@dataclass(frozen=True)
class UrlParts:
    """A URL cut by position: scheme, user and password (None where absent), the rest (host,
    port, database, query); `ambiguous` when its userinfo has no single reading."""

    scheme: str
    user: str | None
    password: str | None
    rest: str
    ambiguous: bool = False


def split_url(url: str) -> UrlParts | None:
    """`url` cut into its parts by position, or None when it isn't scheme://...."""
    match = _SCHEME.match(url)
    if match is None:
        return None
    after = match["after"]
    at = after.find("@")
    if at < 0:
        return UrlParts(match["scheme"], None, None, after)
    userinfo = after[:at]
    if after.count("@") > 1 or any(char in userinfo for char in _ENDS_AUTHORITY):
        last = after.rfind("@")
        return UrlParts(match["scheme"], None, after[:last], after[last + 1:], ambiguous=True)
    user, colon, password = userinfo.partition(":")
    return UrlParts(match["scheme"], user, password if colon else None, after[at + 1:])


def _query_passwords(rest: str) -> list[tuple[int, int]]:
    """(start, end) in `rest` of each value of a query key naming a password (password=,
    sslpassword=, in any case or percent-encoding): the forms SQLAlchemy and libpq take."""
    query_at = rest.find("?")
    if query_at < 0:
        return []
    spans, position = [], query_at + 1
    for part in rest[query_at + 1:].split("&"):
        key, equals, _ = part.partition("=")
        if equals and "password" in unquote_plus(key).strip().lower():
            spans.append((position + len(key) + 1, position + len(part)))
        position += len(part) + 1
    return spans


def _redact_query(rest: str) -> str:
    for start, end in reversed(_query_passwords(rest)):
        rest = rest[:start] + "***" + rest[end:]
    return rest


def redact(url: str) -> str:
    """The URL as it may be shown to a user: every password (in the userinfo or the query)
    replaced by ***, cut by position, whatever its characters. A URL whose userinfo has no
    single reading shows nothing before its last "@"; one that isn't scheme://... but holds
    credentials (an "@", a libpq key=value string) is hidden whole."""
    if journal_path(url) is not None:   # a file path, no password
        return url
    parts = split_url(url)
    if parts is None:
        return _HIDDEN if "@" in url or "=" in url else url
    if parts.ambiguous:
        return f"{parts.scheme}***@{_redact_query(parts.rest)}"
    if parts.user is None:
        return parts.scheme + _redact_query(parts.rest)
    return f"{parts.scheme}{parts.user}{':***' if parts.password is not None else ''}@{_redact_query(parts.rest)}"


def passwords_of(url: str) -> list[str]:
    """Every password of `url` (userinfo and query), as written and percent-decoded, longest
    first (a longer form is replaced before its parts): what redact_text hides in free text."""
    parts = split_url(url)
    if parts is None:   # a libpq key=value string: password=value or password='quoted value'
        return sorted({m[1] or m[2] for m in _DSN_PASSWORD.finditer(url)} - {""}, key=len, reverse=True)
    found = {parts.password or ""} | {parts.rest[start:end] for start, end in _query_passwords(parts.rest)}
    found |= {unquote(p) for p in found} | {unquote_plus(p) for p in found}
    return sorted((p for p in found if p), key=len, reverse=True)


def refuse_ambiguous_password(url: str, where: str = "storage") -> None:
    """A URL whose userinfo holds an unencoded "@", "/", "?" or "#", or with a second "@"
    anywhere, reads differently to SQLAlchemy, libpq and RFC 3986: the connection could go to
    a host named by part of the password. Refused before anything resolves or connects."""
    parts = split_url(url)
    if parts is not None and not parts.ambiguous and parts.password is not None:
        try:   # SQLAlchemy's own reading must agree with ours, percent-decoded
            ambiguous = (make_url(url).password or "") != unquote(parts.password)
        except Exception:  # noqa: BLE001 - open_storage says what is wrong with such a URL
            ambiguous = False
        parts = dataclasses.replace(parts, ambiguous=ambiguous)
    if parts is not None and parts.ambiguous:
        raise SwiprError(f"{where} {redact(url)}: the URL holds a second '@', or a '/', '?' or '#' before its "
                         f"'@', so it can't be split into user, password and host safely; percent-encode them "
                         f"in the user name, password and query ('@' as %40, '/' as %2F, '?' as %3F, '#' as %23)")


def redact_text(text: str, url: str) -> str:
    """`text` (free text: a driver's message, whatever a worker prints) with `url` itself, as
    written or with its driver added, redacted by position, then any password of `url` left
    elsewhere in it replaced by ***."""
    if not passwords_of(url):
        return text
    forms = sorted({url, normalize_url(url)}, key=len, reverse=True)
    pieces = re.split("(" + "|".join(map(re.escape, forms)) + ")", text)
    for index, piece in enumerate(pieces):
        if index % 2:   # a whole URL: its user, host and database stay readable
            pieces[index] = redact(piece)
            continue
        for password in passwords_of(url):
            piece = piece.replace(password, "***")
        pieces[index] = piece
    return "".join(pieces)
