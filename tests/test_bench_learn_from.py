"""bench/learn_from.py names what made its figures, and --reuse reads back a kept run only if
this run would make it the same way. Nothing is trained: each case stops at the check."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "learn_from.py"


def reuse(work: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(BENCH), "--work", str(work), "--reuse", "--seeds", "1", *extra],
                          capture_output=True, text=True, env=env, timeout=120)


def test_the_first_line_names_commit_versions_and_threads(tmp_path):
    result = reuse(tmp_path)
    first = result.stdout.splitlines()[0]
    assert first.startswith("made by: commit ") and "torch " in first and "optuna " in first and first.endswith("threads 1")


def test_reuse_of_a_folder_without_a_kept_run_is_refused_in_one_line(tmp_path):
    result = reuse(tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"bench/learn_from.py: error: --reuse: {tmp_path} holds no provenance.json (no whole earlier run was kept "
        f"there); run without --reuse to make the data and studies"]


def test_a_kept_run_made_with_other_settings_is_refused_as_stale(tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench import provenance

    settings = {"trials": 12, "before": 500, "after": 900, "relabel": 0.05}
    kept = provenance.provenance("bench/learn_from.py", code={}, space="s", data=provenance.digest(settings),
                                 split="s", threads=1, settings=settings)
    (tmp_path / "provenance.json").write_text(json.dumps(kept))
    result = reuse(tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "stale, not what this run would make" in line and "settings (before 500 -> 600)" in line, line
