"""The command line's conventions, as a new user meets them: `--version`, bare `swipr`, help
texts, exit codes, a typo refused before torch loads, words in the singular where there is one."""
from __future__ import annotations

import subprocess
import sys

from search.cli import version
from tests.studykit import ROOT, one_line_error, run_cli, study_toml


def test_version_and_bare_swipr():
    shown = run_cli("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"swipr {version()}"
    # No command is a usage error: the help, on stderr, exit 2 (argparse's convention).
    bare = run_cli()
    assert bare.returncode == 2 and bare.stdout == ""
    assert bare.stderr.startswith("usage: swipr") and "COMMAND --help" in bare.stderr


def test_study_run_help_says_what_it_does_and_what_its_file_is():
    result = run_cli("study", "run", "--help")
    assert result.returncode == 0
    usage, _, rest = result.stdout.partition("positional arguments:")
    assert "Run trials" in usage   # a description under the usage line
    assert " ".join(rest.split()).startswith("STUDY.toml the study file")


def test_a_typo_in_the_study_file_is_refused_before_torch_is_imported(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(study_toml(tmp_path / "data").replace("seed = 0", "sed = 0"))
    code = ("import sys\nfrom search.cli import main\n"
            f"code = main(['study', 'run', {str(study)!r}])\n"
            "print(code, sorted(m for m in ('torch', 'fastai', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "2 []", out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "unknown key 'sed' in [study]" in out.stderr


def test_a_missing_artifact_dir_is_bad_input(tmp_path, data_dir):
    from tests.studykit import write_study

    study = write_study(tmp_path, data_dir)
    missing = tmp_path / "nowhere"
    for command in (("study", "report", study, "--out", tmp_path / "out"), ("dashboard", study, "--port", "0")):
        error = one_line_error(run_cli(*command, "--artifact-dir", missing))
        assert error == f"swipr: error: --artifact-dir {missing}: no such folder"
    assert not (tmp_path / "out").exists()


def test_what_the_readme_writes_in_the_checkout_is_ignored_by_git():
    # README: `fit --out model/` (a link and its version folder), `--out model-tta/ --tta`,
    # model-top-losses.png, `study report --out report/`, studies/demo.db's WAL files.
    outputs = ["model", "model-tta", ".model.0123456789ab.bundle/model.onnx", "model-top-losses.png",
               "report/report.html", "studies/demo.db-wal", "studies/demo.db-shm"]
    checked = subprocess.run(["git", "check-ignore", "--no-index", *outputs], cwd=ROOT, capture_output=True,
                             text=True, timeout=30)
    assert checked.stdout.split() == outputs, checked.stdout + checked.stderr


def test_one_failed_trial_is_one_trial_not_one_trials(tmp_path):
    # [study] max_failures_in_a_row = 1: the run stops after one failure, in the singular.
    import optuna

    from search.running.failures import FailureStreak

    def fails(trial):
        trial.set_user_attr("fail_reason", "ZeroDivisionError: always")
        raise ZeroDivisionError("always")

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    streak = FailureStreak(1)
    optuna.create_study().optimize(fails, n_trials=3, catch=(ZeroDivisionError,), callbacks=[streak])
    assert streak.tripped
    assert streak.message(tmp_path / "t.errors.log").startswith(
        "1 trial failed (the last: ZeroDivisionError: always); stopping the run.")


def test_ctrl_c_is_exit_130_as_the_docs_say(tmp_path, monkeypatch):
    import search.commands.demo_data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search.commands.demo_data, "write_demo_data", interrupted)
    result = run_cli("demo-data", tmp_path / "demo")
    assert result.returncode == 130 and result.stderr == "swipr: interrupted\n"
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "130 on Ctrl-C" in readme and "a run that stops ends with exit 1" not in readme
    promises = (ROOT / "docs" / "promises.md").read_text(encoding="utf-8")
    assert "| 130 | Ctrl-C" in promises and "| 2 | bad input" in promises
