"""The tests' one kit: a demo dataset, a small study file in a temp folder, the CLI, a finished
demo study, and headless Chromium driven over the DevTools protocol."""
from __future__ import annotations

import base64
import contextlib
import fcntl
import io
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

ROOT = Path(__file__).resolve().parents[1]

SPACE = """
[space]
lr = { low = 1e-3, high = 3e-2, log = true }
batch_size = [16, 32]
image_size = [32]
freeze = ["unfrozen"]
n_cycles = [1]
cycle_len = [1]
cycle_mult = [1]
"""


def space_toml(**values: str) -> str:
    """SPACE with some keys' TOML values replaced: `space_toml(batch_size="[16]")`."""
    lines = [f"{line.split(' = ')[0]} = {values.pop(line.split(' = ')[0])}" if line.split(" = ")[0] in values
             else line for line in SPACE.splitlines()]
    if values:
        raise KeyError(f"not [space] keys: {', '.join(values)}")
    return "\n".join(lines) + "\n"


def demo_data(folder: Path, n_images: int = 120) -> Path:
    """Write (once per folder) the demo dataset; return its pics database."""
    from swipr_core.data.demo import write_demo_data

    database = folder / "pics.db"
    if not database.exists():
        write_demo_data(folder, n_images=n_images, image_px=40, seed=0)
    return database


def prepared_demo(folder: Path):
    """The demo dataset in `folder`, labelled, split and cached at 40 px: what training tests train on."""
    from swipr_core.data.dataset import DataSpec, prepare_data
    from swipr_core.data.demo import DEMO_RULES

    database = demo_data(folder)
    spec = DataSpec(database=database, image_root=folder, labels_file=folder / "labels.csv",
                    cache_dir=folder / "cache", cache_px=40, valid_pct=0.25, split_seed=1, rules=DEMO_RULES)
    return prepare_data(spec)


def kill_then_retry(monkeypatch, study_file, dataset, after_epoch: int, on_retry_epoch=None) -> None:
    """Run one trial of `study_file` whose training is killed (KeyboardInterrupt) after epoch
    `after_epoch`, then a worker again, which retries it from its checkpoint;
    `on_retry_epoch(record)` sees each epoch the retry trains."""
    import objectives.finetune as finetune
    from search.running.worker import run_worker

    real = finetune.train

    def watched(hook):
        return lambda *args, on_epoch, **kwargs: real(*args, on_epoch=lambda r: hook(r, on_epoch), **kwargs)

    def killed(record, on_epoch):
        on_epoch(record)
        if record.epoch == after_epoch:
            raise KeyboardInterrupt

    def retried(record, on_epoch):
        if on_retry_epoch is not None:
            on_retry_epoch(record)
        on_epoch(record)

    monkeypatch.setattr(finetune, "train", watched(killed))
    with pytest.raises(KeyboardInterrupt):
        run_worker(study_file, dataset, n_trials=1, device="cpu")
    monkeypatch.setattr(finetune, "train", watched(retried))
    run_worker(study_file, dataset, n_trials=1, device="cpu")


def study_toml(data_dir: Path, *, name: str = "t", space: str = SPACE, extra: dict[str, str] | None = None,
               pruner: str = "median", sampler: str = "tpe", warm_start: bool = False) -> str:
    """A study file's text over the demo dataset; `extra` adds raw lines to a section."""
    extra = extra or {}
    sections = {
        "study": f'name = "{name}"\nsampler = "{sampler}"\npruner = "{pruner}"\npruner_startup_trials = 1\n'
                 f'pruner_warmup_epochs = 0\nseed = 0\nwarm_start = {str(warm_start).lower()}\nn_trials = 3\n',
        "data": f'database = "{data_dir / "pics.db"}"\ncache_px = 40\nvalid_pct = 0.25\nsplit_seed = 1\n',
        "data.rules": 'yes_dirs = ["insta/ok", "Tinder/yes"]\nno_dirs = ["insta/no", "Tinder/no"]\n'
                      'invalid_labels = [9]\nfail_labels = [1, 2]\nfail_on_male = true\n'
                      'min_people = 1\nmax_people = 1\nmin_age = 18\nmax_age = 35\n',
        "model": 'arch = "test_resnet"\npretrained = false\n',
        "train": 'device = "cpu"\n',
    }
    text = ""
    for section, body in sections.items():
        text += f"[{section}]\n{body}{extra.get(section, '')}\n"
    return text + space


def write_study(folder: Path, data_dir: Path, filename: str = "study.toml", **kwargs) -> Path:
    demo_data(data_dir)
    path = folder / filename
    path.write_text(study_toml(data_dir, **kwargs))
    return path


def swipr(*args, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real `swipr` CLI in a subprocess; return the CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "search.cli", *map(str, args)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def run_cli(*args) -> subprocess.CompletedProcess:
    """The `swipr` command in this process, through `main()`, its output captured: what `swipr`
    does without a fresh Python (and torch import) per call."""
    from search.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit:   # argparse's usage errors
            code = exit.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def one_line_error(result) -> str:
    """Bad input: exit 2, a single line on stderr that starts with "swipr: error:", no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swipr: error:"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


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


# Two epochs per trial and pruning from the second trial on, so the study has pruned trials.
DASHDEMO_SPACE = """
[space]
lr = { low = 1e-3, high = 5e-2, log = true }
batch_size = [16, 32]
image_size = [32]
freeze = ["unfrozen", "frozen_then_unfrozen"]
n_cycles = [2]
cycle_len = [1]
cycle_mult = [1]
"""


def shared_temp(tmp_path_factory) -> Path:
    """A temp folder every pytest-xdist worker of this session sees (each has its own basetemp)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def finished_demo_study(tmp_path_factory, n_trials: int = 4) -> tuple[Path, str]:
    """A demo study run to the end with `swipr study run` (output not a terminal), and what it
    printed.

    Run once per test session, whatever the number of pytest-xdist workers: the dashboard,
    report and progress tests all look at it.
    """
    folder = shared_temp(tmp_path_factory) / "finished-demo-study"
    folder.mkdir(exist_ok=True)
    log = folder / "run.log"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # the first worker runs it; the others wait, then read
        if not log.exists():
            study = write_study(folder, folder / "data", name="dashdemo", space=DASHDEMO_SPACE)
            result = run_cli("study", "run", study, "--n-trials", str(n_trials))
            assert result.returncode == 0, result.stderr
            log.write_text(result.stdout)
    return folder / "study.toml", log.read_text()
