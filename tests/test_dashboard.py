"""`swipr dashboard` in a real browser: headless Chromium, driven over the DevTools protocol,
against the dashboard of a finished demo study on loopback."""
from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.studykit import ROOT, swipr, write_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/system-deps.sh installs it as root)")
# Nothing but loopback: no background networking, sync, component updates or QUIC.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
SCREENSHOTS = Path(os.environ.get("SWIPR_SCREENSHOTS", ROOT / "build" / "screenshots"))


class Chromium:
    """One headless Chromium page, driven over the DevTools protocol; page errors are kept."""

    def __init__(self):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="swipr-chromium-")
        self.process = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        devtools = None
        deadline = time.monotonic() + 30
        while devtools is None and time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                break
            found = re.search(r"DevTools listening on ws://([^/]+)/", line)
            devtools = found.group(1) if found else None
        if devtools is None:
            self.close()
            raise RuntimeError("chromium did not start its DevTools server")
        with urllib.request.urlopen(f"http://{devtools}/json/list", timeout=10) as answer:
            page = next(t for t in json.load(answer) if t["type"] == "page")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ids = itertools.count(1)
        self.errors: list[str] = []   # uncaught exceptions, console errors, failed loads
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"{params['entry'].get('url', '')}: {params['entry']['text']}")

    def go(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        """Poll the rendered page until `expression` is truthy (an SPA renders after its fetches)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:   # mid-navigation there may be no document.body yet
                value = None
            if value:
                return value
            time.sleep(0.25)
        text = self.evaluate("document.body ? document.body.innerText.slice(0, 500) : ''")
        raise AssertionError(f"page never showed {expression!r}; it shows: {text!r}")

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser():
    chromium = Chromium()
    yield chromium
    chromium.close()


# Two epochs per trial and pruning from the second trial on, so the study has pruned trials.
SPACE = """
[space]
lr = { low = 1e-3, high = 5e-2, log = true }
batch_size = [16, 32]
image_size = [32]
freeze = ["unfrozen", "frozen_then_unfrozen"]
n_cycles = [2]
cycle_len = [1]
cycle_mult = [1]
"""


def finished_demo_study(tmp_path_factory, n_trials: int = 4) -> tuple[Path, str]:
    """A demo study run to the end with `swipr study run` (piped), and what it printed.

    Run once per test session: the dashboard, report and progress tests all look at it.
    """
    folder = tmp_path_factory.getbasetemp() / "finished-demo-study"
    log = folder / "run.log"
    if not log.exists():
        folder.mkdir(exist_ok=True)
        study = write_study(folder, folder / "data", name="dashdemo", space=SPACE)
        result = swipr("study", "run", study, "--n-trials", str(n_trials))
        assert result.returncode == 0, result.stderr
        log.write_text(result.stdout)
    return folder / "study.toml", log.read_text()


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


def test_dashboard_of_a_study_that_never_ran_is_one_line_error(tmp_path):
    study = write_study(tmp_path, tmp_path / "data")
    result = swipr("dashboard", study, "--port", "0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "run `swipr study run` first" in result.stderr


def test_a_port_in_use_is_one_line_error(dashboard, demo_study):
    port = dashboard.base.rsplit(":", 1)[1]
    result = swipr("dashboard", demo_study, "--port", port, timeout=60)
    assert result.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in result.stderr


@needs_chromium
def test_the_browser_shows_the_study_its_trials_and_a_trial_picture(dashboard, browser):
    browser.go(dashboard.url)
    browser.wait_for("document.body.innerText.includes('dashdemo')")
    browser.wait_for("document.body.innerText.includes('History')")   # the optimisation history plot's card
    browser.screenshot(SCREENSHOTS / "dashboard-study.png")

    # The trial list: every trial by number, and the selected trial's artifacts as images.
    browser.go(dashboard.url + "/trials")
    browser.wait_for("document.body.innerText.includes('Trial 3')")
    text = browser.evaluate("document.body.innerText")
    for number in range(4):
        assert f"Trial {number}" in text
    assert "Artifacts" in text and "curves.png" in text
    loaded = browser.wait_for(
        "Array.from(document.images).filter(i => i.src.includes('/artifacts/') && i.complete && i.naturalWidth > 100)"
        ".map(i => i.src)")
    browser.evaluate("document.querySelector('img[src*=\"/artifacts/\"]').scrollIntoView()")
    browser.screenshot(SCREENSHOTS / "dashboard-trial.png")
    # The picture the page shows is the PNG the server holds for it.
    with urllib.request.urlopen(loaded[0], timeout=10) as answer:
        assert answer.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [e for e in browser.errors if "favicon" not in e], browser.errors
