"""Serve optuna-dashboard on a study's storage, with the study's pictures (artifacts).

The storage is opened exactly as `swipr study run` opens it (search.study.storage), so whatever
storage a study runs on, its dashboard reads. The server binds to loopback unless told
otherwise: the dashboard has no login, and it can edit notes and delete studies.

optuna-dashboard keeps every trial's note in the study's system attrs and, for each trial of
the study page, scans all of them for its own keys (its note, and the artifacts old dashboards
recorded there): a page of N noted trials costs N x 2N key tests. `dashboard_app` serves the
same page after one pass that sorts those attrs by trial (linear_study_page).
"""
from __future__ import annotations

import errno
import re
import shlex
import socket
import sys
from collections import defaultdict
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna_dashboard

from objectives.optuna_compat import storage_of, study_id, trial_id
from search.study.open import open_study
from search.studyfile.url_text import redact
from search.views.artifacts import artifact_dir as default_artifact_dir
from search.views.artifacts import open_artifact_store
from search.views.dashboard_compat import replace_study_page, serialize_frozen_trial, study_page
from swipr_core.errors import SwiprError

LOOPBACK = "127.0.0.1"
# The study system attrs optuna-dashboard reads for one trial (a note's `dashboard:<id>:note_...`,
# an old artifact record's `dashboard:artifacts:<id>:...`), with the trial's id.
_TRIAL_KEY = re.compile(r"dashboard:(?:artifacts:)?(\d+):")
# The optuna-dashboard releases whose study page reads no other study system attr for a trial:
# checked in their source (_serializer.serialize_frozen_trial) and by tests/test_dashboard.py.
LINEAR_PAGE_RELEASES = ("0.21",)


def attrs_by_trial(study_system_attrs: dict) -> dict[int, dict]:
    """{trial id: the study system attrs optuna-dashboard reads for that trial}, in one pass."""
    by_trial: dict[int, dict] = defaultdict(dict)
    for key, value in study_system_attrs.items():
        found = _TRIAL_KEY.match(key)
        if found:
            by_trial[int(found.group(1))][key] = value
    return by_trial


def linear_study_page(serialize_study_detail):
    """optuna-dashboard's serialize_study_detail, each trial serialized against its own study
    system attrs (attrs_by_trial) instead of all of them: the same page, linear in trials."""

    def serialize(study, best_trials, trials, *args, **kwargs):
        detail = serialize_study_detail(study, [], [], *args, **kwargs)
        by_trial = attrs_by_trial(study.system_attrs)
        for name, listed in (("trials", trials), ("best_trials", best_trials)):
            detail[name] = [serialize_frozen_trial(study_id(study), trial, by_trial.get(trial_id(trial), {}))
                            for trial in listed]
        return detail

    serialize.swipr_linear = True   # type: ignore[attr-defined]
    return serialize


def dashboard_app(storage, artifact_store):
    """optuna-dashboard's WSGI app, its study page made linear in trials (linear_study_page).

    The page's function is replaced in optuna-dashboard's module, for the whole process, in the
    releases of LINEAR_PAGE_RELEASES only; any other serves the plain page (slower at thousands
    of trials, not wrong) until tests/test_dashboard.py's same-page test passes on it there."""
    original = study_page()
    release = ".".join(optuna_dashboard.__version__.split(".")[:2])
    if original is not None and not getattr(original, "swipr_linear", False) and release in LINEAR_PAGE_RELEASES:
        replace_study_page(linear_study_page(original))
    return optuna_dashboard.wsgi(storage, artifact_store=artifact_store)


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True   # the SPA fetches in parallel; Ctrl-C must not wait for them


class _ThreadedServer6(_ThreadedServer):
    address_family = socket.AF_INET6   # --host ::1, ::, or any IPv6 address


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):   # one line per fetch, every second: not for users
        pass


def study_url(host: str, port: int, study_id: int) -> str:
    host = host.strip("[]")
    shown = {"0.0.0.0": LOOPBACK, "::": "::1"}.get(host, host)
    if ":" in shown:   # an IPv6 address goes in brackets in a URL
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/dashboard/studies/{study_id}"


def make_dashboard_server(study_file, host: str = LOOPBACK, port: int = 8080, artifact_dir=None):
    """(server, study) for the study file; the caller serves it. Port 0 picks a free port."""
    if not 0 <= port <= 65535:
        raise SwiprError(f"--port must be between 0 and 65535, got {port}")
    if not host.strip():
        raise SwiprError("--host is empty; give an address such as 127.0.0.1 (this machine only) or 0.0.0.0 "
                         "(every interface)")
    server_class = _ThreadedServer6 if ":" in host else _ThreadedServer
    study = open_study(study_file, create=False)
    store = open_artifact_store(artifact_dir or default_artifact_dir(study_file), create=False)
    app = dashboard_app(storage_of(study), store)
    try:
        server = make_server(host.strip("[]"), port, app, server_class=server_class, handler_class=_QuietHandler)
    except (socket.gaierror, UnicodeError):
        raise SwiprError(f"--host {host!r}: not an address or host name of this machine") from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise SwiprError(f"port {port} on {host} is already in use; choose another with --port") from None
        raise SwiprError(f"can't listen on {host}:{port}: {error.strerror or error}") from None
    return server, study


def plain_dashboard_hint(study_file, artifact_dir=None) -> str:
    """Optuna's own `optuna-dashboard` shows the pictures only when told where they are."""
    directory = artifact_dir or default_artifact_dir(study_file)
    return (f"(plain optuna-dashboard shows the pictures only with --artifact-dir: "
            f"optuna-dashboard {shlex.quote(redact(study_file.study.storage))} --artifact-dir "
            f"{shlex.quote(str(directory))})")


def serve(study_file, host: str = LOOPBACK, port: int = 8080, artifact_dir=None) -> int:
    server, study = make_dashboard_server(study_file, host, port, artifact_dir)
    port = server.server_address[1]
    print(f"optuna-dashboard for study '{study.study_name}' in {redact(study_file.study.storage)}")
    print(f"open {study_url(host, port, study_id(study))} in a browser (Ctrl-C stops the server)")
    print(plain_dashboard_hint(study_file, artifact_dir))
    if host.strip("[]") not in (LOOPBACK, "localhost", "::1"):
        print(f"note: listening on {host}, so other machines can reach it: the dashboard has no login",
              file=sys.stderr)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped")
    finally:
        server.server_close()
    return 0
