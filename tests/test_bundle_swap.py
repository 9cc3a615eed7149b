"""Replacing a bundle is one atomic step: interrupted anywhere, --out is the old bundle or the
new one, never missing, never half of one, and nothing is left beside it."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import swipr_core.serve.bundle_swap
from swipr_core.serve import bundle
from tests.studykit import ROOT

MANIFEST = {"arch": "test_resnet", "cache_px": 48, "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
            "classes": ["NO", "YES"], "threshold": 0.42}


def write(out: Path, onnx: bytes) -> str:
    staging = bundle.staging_dir(out)
    (staging / bundle.ONNX).write_bytes(onnx)
    (staging / bundle.WEIGHTS).write_bytes(b"weights")
    return bundle.finish(staging, out, MANIFEST)


def old_style_folder(out: Path, onnx: bytes) -> None:
    """A bundle as an older swipr left it: a real folder under --out's name."""
    write(out, onnx)
    real = out.resolve()
    out.unlink()
    os.replace(real, out)


def start(out: Path, kind: str) -> None:
    if kind == "link":
        write(out, b"old")
    elif kind == "folder":
        old_style_folder(out, b"old")
    else:
        out.mkdir()   # an empty folder made for the bundle


def onnx_in(out: Path) -> bytes:
    return bundle.verify(out).contents[bundle.ONNX]


def nothing_else_beside(out: Path) -> bool:
    expected = {out.name} | ({os.readlink(out)} if out.is_symlink() else set())
    return {p.name for p in out.parent.iterdir()} == expected


class InterruptAtCall:
    """Ctrl-C at the n-th file-system step of a swap: before the step, or just after it
    (a signal that arrives as the rename returns)."""

    def __init__(self, monkeypatch, n: int, after: bool):
        self.n, self.after, self.calls = n, after, 0
        for owner, name in ((os, "replace"), (os, "symlink"), (swipr_core.serve.bundle_swap, "exchange")):
            monkeypatch.setattr(owner, name, self.wrap(getattr(owner, name)))

    def wrap(self, real):
        def step(*args, **kwargs):
            self.calls += 1
            if self.calls == self.n and not self.after:
                raise KeyboardInterrupt
            result = real(*args, **kwargs)
            if self.calls == self.n:
                raise KeyboardInterrupt
            return result
        return step


@pytest.mark.parametrize("kind", ["link", "folder", "empty"])
@pytest.mark.parametrize("can_exchange", [True, False])
@pytest.mark.parametrize("after", [False, True])
def test_interrupted_at_every_step_out_is_old_or_new(tmp_path, monkeypatch, kind, can_exchange, after):
    # kind: what --out is before the swap (this swipr's link, an older swipr's folder, empty).
    # Without renameat2's exchange, an old folder takes two renames with the old put back on
    # any error.
    if not can_exchange:
        monkeypatch.setattr(swipr_core.serve.bundle_swap, "exchange", lambda a, b: False)
    outcomes = []
    for n in range(1, 20):
        out = tmp_path / str(n) / "model"
        out.parent.mkdir()
        start(out, kind)
        with monkeypatch.context() as patch:
            interrupt = InterruptAtCall(patch, n, after)
            try:
                write(out, b"new")
                interrupted = False
            except KeyboardInterrupt:
                interrupted = True
        assert out.is_dir(), n
        now = onnx_in(out) if kind != "empty" or bundle.is_bundle(out) else b"empty"
        assert nothing_else_beside(out), (n, sorted(p.name for p in out.parent.iterdir()))
        outcomes.append(now)
        if not interrupted:
            assert now == b"new" and out.is_symlink()
            break
        assert interrupt.calls >= n
    else:
        pytest.fail("the swap never completed")
    # Before the step that swaps it in, the old; once that step has happened, the new stays.
    before_swap = outcomes[:-2] if after else outcomes[:-1]
    assert before_swap and all(now == (b"empty" if kind == "empty" else b"old") for now in before_swap)
    if after:
        assert outcomes[-2] == b"new"


def test_a_link_the_user_made_is_replaced_and_its_target_left_alone(tmp_path):
    mine = tmp_path / "served"
    old_style_folder(mine, b"theirs")
    out = tmp_path / "model"
    out.symlink_to(mine)
    write(out, b"new")
    assert onnx_in(out) == b"new" and onnx_in(mine) == b"theirs"


def test_verify_reads_one_version_through_the_link(tmp_path):
    out = tmp_path / "model"
    write(out, b"first")
    verified = bundle.verify(out)
    assert verified.path == out.resolve() != out   # the version folder, followed once
    write(out, b"second")
    assert onnx_in(out) == b"second" and not verified.path.exists()   # the old version went


def test_an_old_style_folder_becomes_the_link(tmp_path):
    out = tmp_path / "model"
    old_style_folder(out, b"old")
    assert out.is_dir() and not out.is_symlink()
    write(out, b"new")
    assert out.is_symlink() and onnx_in(out) == b"new" and nothing_else_beside(out)


SLOW_RENAME_S = 3
SWAP_SCRIPT = """
import os, sys
from pathlib import Path
from swipr_core.serve import bundle
out = Path(sys.argv[1])
staging = bundle.staging_dir(out)
(staging / bundle.ONNX).write_bytes(b"new")
(staging / bundle.WEIGHTS).write_bytes(b"weights")
print("swapping", os.getpid(), flush=True)
bundle.finish(staging, out, {manifest!r})
"""


def strace_unusable() -> str | None:
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install strace)"
    probe = subprocess.run(["strace", "-o", "/dev/null", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"strace can't trace here: {probe.stderr.strip()[:200]}"


@pytest.mark.slow
@pytest.mark.skipif(strace_unusable() is not None, reason=str(strace_unusable()))
@pytest.mark.parametrize("kind, rename", [("folder", 0), ("link", 0), ("link", 1)])
def test_ctrl_c_during_a_slowed_rename_leaves_a_bundle(tmp_path, kind, rename):
    # Every rename held 3 s in the kernel's return path (strace); Ctrl-C lands in the first
    # or second one, as a user's would in an unlucky moment.
    out = tmp_path / "model"
    start(out, kind)
    command = ["strace", "-o", "/dev/null", "-e", "trace=rename,renameat,renameat2",
               "-e", f"inject=rename,renameat,renameat2:delay_exit={SLOW_RENAME_S * 1_000_000}",
               sys.executable, "-c", SWAP_SCRIPT.format(manifest=MANIFEST), str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line.startswith("swapping"), line + process.stderr.read()
    time.sleep(SLOW_RENAME_S / 2 + rename * SLOW_RENAME_S)
    os.kill(int(line.split()[1]), signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and "KeyboardInterrupt" in stderr, stderr   # it was interrupted
    assert onnx_in(out) == (b"old" if rename == 0 else b"new")
    assert nothing_else_beside(out)


def test_the_target_is_the_link_not_the_version_it_points_at(tmp_path, monkeypatch):
    out = tmp_path / "model"
    write(out, b"first")
    monkeypatch.chdir(tmp_path)
    assert bundle.target_path("model") == out   # `swipr fit --out model` swaps the link itself
    write(bundle.target_path("model"), b"second")
    assert onnx_in(out) == b"second" and nothing_else_beside(out)


def test_ctrl_c_waits_for_the_two_renames_of_the_fallback(tmp_path):
    # Without renameat2, an old folder is replaced in two renames; a Ctrl-C between them is
    # acted on only once both are done.
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with swipr_core.serve.bundle_swap.signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            steps.append("second rename")
    assert steps == ["second rename"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the handler is back


def test_an_old_interrupted_swap_s_leftovers_go_and_nothing_else(tmp_path):
    out = tmp_path / "model"
    write(out, b"old")
    stale = [tmp_path / ".model.1.bundle", tmp_path / ".model.2.tmp"]
    for folder in stale:
        folder.mkdir()
    (tmp_path / ".model.3.link").symlink_to(".model.1.bundle")
    kept = [tmp_path / ".model.4.aside", tmp_path / ".model.5.tmp.txt", tmp_path / ".model.6.old"]
    kept[0].mkdir()
    kept[1].write_text("a file of the user's")
    kept[2].mkdir()
    long_ago = time.time() - 2 * swipr_core.serve.bundle_swap.LEFTOVER_AGE_S
    for path in [*stale, tmp_path / ".model.3.link", *kept]:
        os.utime(path, (long_ago, long_ago), follow_symlinks=False)
    write(out, b"new")
    assert onnx_in(out) == b"new"
    assert {p.name for p in tmp_path.iterdir()} == {"model", os.readlink(out), *(p.name for p in kept)}
