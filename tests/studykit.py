"""Helpers for tests: a demo dataset and a small study file in a temp folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def demo_data(folder: Path, n_images: int = 120) -> Path:
    """Write (once per folder) the demo dataset; return its pics database."""
    from swipr_core.demo_data import write_demo_data

    database = folder / "pics.db"
    if not database.exists():
        write_demo_data(folder, n_images=n_images, image_px=40, seed=0)
    return database


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


def one_line_error(result) -> str:
    """Bad input: exit 2, a single line on stderr that starts with "swipr: error:", no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swipr: error:"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]
