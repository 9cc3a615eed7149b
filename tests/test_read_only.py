"""Read-only destinations are refused before any work, in one line: `swipr labels -o` and
`swipr demo-data DIR` (`swipr fit --out` and a read-only storage: tests/test_fit.py)."""
from __future__ import annotations

from tests.readonly import read_only_folder
from tests.studykit import one_line_error, run_cli, write_study


def test_labels_into_a_read_only_folder_is_one_line(tmp_path, data_dir):
    study = write_study(tmp_path, data_dir)
    with read_only_folder(tmp_path / "ro") as ro:
        error = one_line_error(run_cli("labels", study, "-o", ro / "labels.csv"))
        assert error.startswith(f"swipr: error: -o {ro / 'labels.csv'}: can't write in {ro} (")
        # The study file's own labels_file in a read-only folder names the key.
        study.write_text(study.read_text().replace("[data]\n", f'[data]\nlabels_file = "{ro}/sub/l.csv"\n'))
        error = one_line_error(run_cli("labels", study))
        assert f"[data] labels_file {ro}/sub/l.csv: can't write in {ro} (" in error
        assert list(ro.iterdir()) == []


def test_demo_data_into_a_read_only_folder_is_one_line(tmp_path):
    with read_only_folder(tmp_path / "ro") as ro:
        for target in (ro, ro / "demo" / "deeper"):
            error = one_line_error(run_cli("demo-data", target, "--images", "60"))
            assert error.startswith(f"swipr: error: DIR {target}: can't write in {ro} (")
        assert list(ro.iterdir()) == []
