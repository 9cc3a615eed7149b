"""`swipr dashboard` in a real browser: headless Chromium, driven over the DevTools protocol,
against the dashboard of a finished demo study on loopback."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.studykit import ROOT, SCREENSHOTS, Chromium, finished_demo_study, needs_chromium, run_cli, write_study


@pytest.fixture
def browser():
    chromium = Chromium()
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory) -> Path:
    return finished_demo_study(tmp_path_factory)[0]


class Dashboard:
    """`swipr dashboard STUDY --port 0` in a subprocess; `url` is the study's page it printed."""

    def __init__(self, study: Path, *args: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", str(study), "--port", "0",
                                         *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.lines = [self.process.stdout.readline(), self.process.stdout.readline()]
        found = re.search(r"open (http://\S+) in a browser", self.lines[1])
        if found is None:
            self.stop()
            raise AssertionError(f"no URL in {self.lines!r}: {self.process.stderr.read()}")
        self.url = found.group(1)
        self.base = self.url.split("/dashboard/")[0]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def dashboard(demo_study):
    server = Dashboard(demo_study)
    yield server
    server.stop()


def test_dashboard_binds_to_loopback_and_says_where_to_look(dashboard):
    assert dashboard.url.startswith("http://127.0.0.1:") and re.search(r"/dashboard/studies/\d+$", dashboard.url)
    assert "dashdemo" in dashboard.lines[0]
    with urllib.request.urlopen(f"{dashboard.base}/api/studies", timeout=10) as answer:
        names = [s["study_name"] for s in json.load(answer)["study_summaries"]]
    assert names == ["dashdemo"]
    # the objective has a name every Optuna tool shows, and plain optuna-dashboard users learn about pictures
    with urllib.request.urlopen(f"{dashboard.base}/api/studies/{dashboard.url.rsplit('/', 1)[1]}", timeout=10) as answer:
        assert json.load(answer)["objective_names"] == ["val_loss"]
    hint = dashboard.process.stdout.readline()
    assert "plain optuna-dashboard shows the pictures only with --artifact-dir" in hint
    assert re.search(r"optuna-dashboard sqlite:///\S+ --artifact-dir \S+dashdemo\.artifacts\)$|"
                     r"optuna-dashboard \S+ --artifact-dir \S+\.artifacts\)$", hint.strip()), hint


def _page(dashboard) -> dict:
    """The study page's data, as the dashboard's page fetches it."""
    with urllib.request.urlopen(f"{dashboard.base}/api/studies/{dashboard.url.rsplit('/', 1)[1]}?after=0",
                                timeout=10) as answer:
        return json.load(answer)


def test_every_trial_carries_its_note_for_the_note_panel(dashboard):
    trials = _page(dashboard)["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    for trial in trials:
        body = trial["note"]["body"]
        # the markdown note; the attribute list beside it holds only what people read there
        assert body.startswith(f"## Trial {trial['number']}: ") and "|---|---|" in body, body
        assert trial["note"]["version"] >= 1
        assert {a["key"] for a in trial["user_attrs"]} <= {"val_accuracy", "warm_start", "fail_reason", "retry_of"}


def _wsgi_page(app, study_id: int) -> bytes:
    answered: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"/api/studies/{study_id}", "QUERY_STRING": "after=0",
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "0", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http",
               "SERVER_PROTOCOL": "HTTP/1.1"}
    body = b"".join(app(environ, lambda status, headers, *rest: answered.append(status)))
    assert answered[0].startswith("200"), answered
    return body


def test_swipr_serves_plain_optuna_dashboards_study_page(tmp_path):
    """The study page `swipr dashboard` serves (its trials each read against their own study
    system attrs, linear in trials) is byte for byte the one plain optuna-dashboard serves."""
    import optuna
    import optuna_dashboard
    from optuna_dashboard import save_note

    from objectives.optuna_compat import study_id, trial_id
    from search.views import dashboard_compat
    from search.views.artifacts import open_artifact_store, store_trial_note
    from search.views.dashboard import dashboard_app

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'notes.db'}")
    study = optuna.create_study(storage=storage)
    for number in range(12):   # trial ids 1 and 10-12: one's keys must not be taken for the others'
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        if number != 5:   # one trial without a note
            store_trial_note(trial, None, f"## Trial {number}\n" + "n" * (5000 if number == 3 else 20), "line")
        study.tell(trial, float(number))
    save_note(study, "the study's own note")
    old = trial_id(study.trials[2])   # an artifact as optuna-dashboard before 0.14 recorded it: a study attr
    storage.set_study_system_attr(study_id(study), f"dashboard:artifacts:{old}:old-id", json.dumps(
        {"artifact_id": "old-id", "filename": "old.png", "mimetype": "image/png", "encoding": None}))
    store = open_artifact_store(tmp_path / "artifacts")

    before = dashboard_compat.study_page()
    dashboard_compat.replace_study_page(dashboard_compat.plain_study_page())
    try:
        plain = _wsgi_page(optuna_dashboard.wsgi(storage, artifact_store=store), study_id(study))
        served = _wsgi_page(dashboard_app(storage, store), study_id(study))
        assert getattr(dashboard_compat.study_page(), "swipr_linear", False)   # this release: linear
    finally:
        dashboard_compat.replace_study_page(before)
    assert served == plain
    trials = json.loads(served)["trials"]
    assert trials[3]["note"]["body"] == "## Trial 3\n" + "n" * 5000 and trials[5]["note"]["body"] == ""
    assert [a["filename"] for a in trials[2]["artifacts"]] == ["old.png"]


def test_dashboard_of_a_study_that_never_ran_is_one_line_error(tmp_path):
    study = write_study(tmp_path, tmp_path / "data")
    result = run_cli("dashboard", study, "--port", "0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "run `swipr study run` first" in result.stderr


def test_a_port_in_use_is_one_line_error(dashboard, demo_study):
    port = dashboard.base.rsplit(":", 1)[1]
    result = run_cli("dashboard", demo_study, "--port", port)
    assert result.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in result.stderr


@needs_chromium
def test_the_browser_shows_the_study_its_trials_and_a_trial_picture(dashboard, browser):
    browser.go(dashboard.url)
    browser.wait_for("document.body.innerText.includes('dashdemo')")
    browser.wait_for("document.body.innerText.includes('History')")   # the optimisation history plot's card
    browser.wait_for("document.body.innerText.includes('val_loss')")  # the objective by its name...
    assert "Objective 0" not in browser.evaluate("document.body.innerText")   # ...never Optuna's default
    browser.screenshot(SCREENSHOTS / "dashboard-study.png")

    # The trial list: every trial by number, and the selected trial's artifacts as images.
    browser.go(dashboard.url + "/trials")
    browser.wait_for("document.body.innerText.includes('Trial 3')")
    text = browser.evaluate("document.body.innerText")
    for number in range(4):
        assert f"Trial {number}" in text
    assert "Artifacts" in text and "curves.png" in text
    # the selected trial's Note panel: its note, rendered (the heading's text without the "## ")
    heading = _page(dashboard)["trials"][0]["note"]["body"].splitlines()[0].lstrip("# ")
    browser.wait_for(f"document.body.innerText.includes({json.dumps(heading)})")
    browser.screenshot(SCREENSHOTS / "dashboard-note.png")
    loaded = browser.wait_for(
        "Array.from(document.images).filter(i => i.src.includes('/artifacts/') && i.complete && i.naturalWidth > 100)"
        ".map(i => i.src)")
    browser.evaluate("document.querySelector('img[src*=\"/artifacts/\"]').scrollIntoView()")
    browser.screenshot(SCREENSHOTS / "dashboard-trial.png")
    # The picture the page shows is the PNG the server holds for it.
    with urllib.request.urlopen(loaded[0], timeout=10) as answer:
        assert answer.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [e for e in browser.errors if "favicon" not in e], browser.errors


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_host_is_checked_and_ipv6_addresses_are_served(demo_study):
    from search.studyfile import load_study_file
    from search.views.dashboard import make_dashboard_server, study_url
    from swipr_core.errors import SwiprError

    study_file = load_study_file(demo_study)
    for bad in ("", "  "):
        with pytest.raises(SwiprError, match="--host is empty"):
            make_dashboard_server(study_file, host=bad, port=0)
    assert study_url("::", 8080, 1) == "http://[::1]:8080/dashboard/studies/1"
    assert study_url("0.0.0.0", 8080, 1) == "http://127.0.0.1:8080/dashboard/studies/1"
    if not _ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback to bind ::1 on")
    for host in ("::1", "[::1]"):
        server, _ = make_dashboard_server(study_file, host=host, port=0)
        try:
            assert server.server_address[0] == "::1"
        finally:
            server.server_close()
