"""`swipr study run/status/best` and `swipr labels` through the CLI's main(), good input and bad."""
import hashlib
import json
import re
import sqlite3
import sys

import pytest
import torch

from tests.studykit import ROOT, demo_data, one_line_error, run_cli, study_toml, write_study

# One pytest-xdist worker runs this module, so its module-scoped study is built once.
pytestmark = pytest.mark.xdist_group("study_cli")


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A study that ran 3 trials and then 2 more: the second run continues the first."""
    folder = tmp_path_factory.mktemp("study")
    study = write_study(folder, folder / "data", pruner="none")
    first = run_cli("study", "run", study, "--n-trials", "3")
    assert first.returncode == 0, first.stderr
    second = run_cli("study", "run", study, "--n-trials", "2")
    assert second.returncode == 0, second.stderr
    return study, first, second


def test_running_again_continues_the_same_study(finished):
    study, first, second = finished
    assert "0 trials so far" in first.stdout and "3 trials so far" in second.stdout
    status = run_cli("study", "status", study, "--json")
    rows = json.loads(status.stdout)["trials"]
    assert [row["number"] for row in rows] == [0, 1, 2, 3, 4]
    assert all(row["state"] == "COMPLETE" for row in rows)


def test_best_prints_number_value_params(finished):
    study, *_ = finished
    best = json.loads(run_cli("study", "best", study, "--json").stdout)
    assert set(best) == {"number", "value", "params", "val_accuracy", "val_roc_auc", "result", "value_is",
                         "vs_notebook", "epochs_run", "epochs_saved", "pruned", "cut", "nesting_saved", "paused",
                         "paused_unspent", "majority_accuracy"}
    assert 0.5 <= best["majority_accuracy"] <= 1
    rows = json.loads(run_cli("study", "status", study, "--json").stdout)["trials"]
    assert best["value"] == min(row["value"] for row in rows)
    assert set(best["params"]) == {"lr", "batch_size", "image_size", "freeze", "n_cycles", "cycle_len", "cycle_mult"}


def test_status_as_text(finished):
    study, *_ = finished
    result = run_cli("study", "status", study)
    assert result.returncode == 0 and "5 trials (5 complete)" in result.stdout
    # every accuracy beside the baseline: the header names it, each row its margin over it
    assert re.search(r"^majority baseline accuracy 0\.\d{3} \(always (NO|YES)\)", result.stdout, re.M)
    assert re.search(r"^\s+0  COMPLETE\s+[0-9.]+\s+[01]\.\d{3}\s+[+-][01]\.\d{3}\s", result.stdout, re.M)


def test_best_as_text_is_text_only(finished):
    study, *_ = finished
    out = run_cli("study", "best", study).stdout
    assert "{" not in out                          # no JSON object in text mode
    assert re.search(r"^best trial: \d+$", out, re.M)
    assert re.search(r"^val_accuracy: [01]\.\d{3} \(majority baseline [01]\.\d{3}", out, re.M)


def test_changed_data_is_refused_and_the_study_kept(finished):
    study, *_ = finished
    labels = study.parent / "study.labels.csv"
    database = study.parent / "study.db"
    before_db = sha(database)
    original = labels.read_text()
    lines = original.splitlines()
    path, label, valid = lines[1].split(",")
    lines[1] = ",".join([path, "NO" if label == "YES" else "YES", valid])
    labels.write_text("\n".join(lines) + "\n")
    try:
        error = one_line_error(run_cli("study", "run", study, "--n-trials", "1"))
        assert "data fingerprint" in error and "study.labels.csv" in error
        assert sha(database) == before_db
    finally:
        labels.write_text(original)


def test_warm_start_enqueues_the_notebook_configs(tmp_path):
    space = study_toml(tmp_path).split("[space]")[1].replace("n_cycles = [1]", "n_cycles = [1, 3]") \
        .replace("cycle_mult = [1]", "cycle_mult = [1, 2]").replace("lr = { low = 1e-3", "lr = { low = 1e-4")
    study = write_study(tmp_path, tmp_path / "data", warm_start=True, pruner="none", space="[space]" + space)
    result = run_cli("study", "run", study, "--n-trials", "1")
    assert result.returncode == 0, result.stderr
    trial = json.loads(run_cli("study", "status", study, "--json").stdout)["trials"][0]
    # The notebook's first run (lr 1e-4, 3 SGDR cycles, mult 2) where the space allows it; n_cycles
    # is the trial's budget (nested schedules), 3 cycles planned, not a param.
    assert trial["params"]["lr"] == pytest.approx(1e-4)
    assert "n_cycles" not in trial["params"] and trial["params"]["cycle_mult"] == 2
    assert trial["epochs"] == 7   # 1 + 2 + 4: the whole 3-cycle budget, unpruned


def test_labels_command_prints_counts(tmp_path):
    study = write_study(tmp_path, tmp_path / "data")
    result = run_cli("labels", study, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["YES"] > 0 and summary["counts"]["NO"] > summary["counts"]["YES"]
    assert summary["excluded"]["missing_file"] > 0 and summary["excluded"]["undecodable"] > 0
    assert (tmp_path / "study.labels.csv").read_text().startswith("path,label,is_valid\n")


def bad_study(tmp_path, **kwargs):
    demo_data(tmp_path / "data")
    path = tmp_path / "study.toml"
    path.write_text(study_toml(tmp_path / "data", **kwargs))
    return path


def edit(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))
    return path


def test_bad_input_missing_database(tmp_path):
    study = edit(bad_study(tmp_path), str(tmp_path / "data" / "pics.db"), str(tmp_path / "none.db"))
    assert "none.db" in one_line_error(run_cli("study", "run", study, "--n-trials", "1"))


def test_bad_input_wrong_table(tmp_path):
    database = tmp_path / "other.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE photos (path TEXT)")
    study = edit(bad_study(tmp_path), str(tmp_path / "data" / "pics.db"), str(database))
    error = one_line_error(run_cli("labels", study))
    assert "other.db" in error and "pics" in error


def test_bad_input_missing_column(tmp_path):
    database = tmp_path / "other.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE pics (path TEXT, label INTEGER)")
    study = edit(bad_study(tmp_path), str(tmp_path / "data" / "pics.db"), str(database))
    error = one_line_error(run_cli("labels", study))
    assert "other.db" in error and "invalid" in error


def test_bad_input_no_yes_rows_left(tmp_path):
    study = edit(bad_study(tmp_path), 'yes_dirs = ["insta/ok", "Tinder/yes"]', 'yes_dirs = ["nowhere"]')
    assert "no YES rows" in one_line_error(run_cli("study", "run", study, "--n-trials", "1"))
    # A case slip: the study file's key and entry are named, with the folder meant.
    edit(study, 'yes_dirs = ["nowhere"]', 'yes_dirs = ["insta/OK"]')
    error = one_line_error(run_cli("labels", study))
    assert error.startswith(f"swipr: error: {study.resolve()}: [data] rules.yes_dirs 'insta/OK' "
                            "(nearest folders there: insta/ok"), error


def test_bad_input_unknown_and_mistyped_keys_and_broken_toml(tmp_path):
    study = edit(bad_study(tmp_path), "[model]\n", "[model]\ndepth = 50\n")
    assert "unknown key 'depth' in [model]" in one_line_error(run_cli("study", "run", study))
    study = edit(bad_study(tmp_path), "n_trials = 3", 'n_trials = "3"')
    assert "[study] n_trials must be an integer" in one_line_error(run_cli("study", "run", study))
    study.write_text("[study\n")
    assert "not valid TOML" in one_line_error(run_cli("study", "status", study))


def test_bad_input_unknown_arch(tmp_path):
    study = edit(bad_study(tmp_path), 'arch = "test_resnet"', 'arch = "resnext51_32x4d"')
    error = one_line_error(run_cli("study", "run", study, "--n-trials", "1"))
    assert f"{study}: [model] arch 'resnext51_32x4d' is not a timm model (similar: resnext50_32x4d, " in error
    # Ranked by edit distance on the name without case or separators: resnet50 first, not cspresnet50.
    edit(study, 'arch = "resnext51_32x4d"', 'arch = "resnet_50"')
    error = one_line_error(run_cli("study", "run", study, "--n-trials", "1"))
    assert f"{study}: [model] arch 'resnet_50' is not a timm model (similar: resnet50, " in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where no CUDA GPU is visible")
def test_bad_input_missing_gpu_fails_before_any_trial(tmp_path):
    study = edit(bad_study(tmp_path), 'device = "cpu"', 'device = "cuda"')
    error = one_line_error(run_cli("study", "run", study, "--n-trials", "1"))
    assert f"{study}: [train] device is 'cuda' but no CUDA GPU is visible" in error
    error = one_line_error(run_cli("study", "run", bad_study(tmp_path), "--n-trials", "1", "--device", "cuda:0"))
    assert error == "swipr: error: --device: device is 'cuda:0' but no CUDA GPU is visible; use \"auto\" or \"cpu\""


def test_bad_input_a_device_name_torch_cant_parse(tmp_path):
    error = one_line_error(run_cli("study", "run", bad_study(tmp_path), "--n-trials", "1", "--device", "cuda:x"))
    assert error == "swipr: error: --device: device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"


def test_bad_input_bad_storage_url(tmp_path):
    study = edit(bad_study(tmp_path), 'name = "t"\n', 'name = "t"\nstorage = "mysql+nodriver://u:secret@h/db"\n')
    error = one_line_error(run_cli("study", "run", study, "--n-trials", "1"))
    assert "storage" in error and "secret" not in error
    study = edit(bad_study(tmp_path), 'name = "t"\n', 'name = "t"\nstorage = "not a url"\n')
    assert "not a database URL" in one_line_error(run_cli("study", "status", study))


def test_bad_input_unreadable_image(tmp_path):
    study = bad_study(tmp_path)
    assert run_cli("labels", study).returncode == 0
    first_kept = (tmp_path / "study.labels.csv").read_text().splitlines()[1].split(",")[0]
    (tmp_path / "data" / first_kept).write_bytes(b"\xff\xd8 not a jpeg any more")
    error = one_line_error(run_cli("study", "run", study, "--n-trials", "1"))
    assert first_kept in error and "decode" in error


def test_status_of_a_study_that_never_ran(tmp_path):
    study = bad_study(tmp_path)
    assert "run `swipr study run` first" in one_line_error(run_cli("study", "status", study))
    assert not (tmp_path / "study.db").exists()


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys, contextlib, io\nfrom search.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit): main(['--help'])\n"
            "print('torch' in sys.modules, 'optuna' in sys.modules)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_status_piped_into_head_ends_quietly(finished):
    import subprocess

    study, *_ = finished
    pipeline = subprocess.run(f"{sys.executable} -m search.cli study status {study} | head -1", shell=True,
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert pipeline.stdout.startswith("study 't': 5 trials")
    assert "BrokenPipe" not in pipeline.stderr and "Traceback" not in pipeline.stderr


def test_a_run_counts_the_queued_trials_it_worked_through(finished):
    import optuna

    study, *_ = finished
    stored = optuna.load_study(study_name="t", storage=f"sqlite:///{study.parent / 'study.db'}")
    stored.enqueue_trial({"lr": 0.01, "batch_size": 16})   # queued before the run starts
    result = run_cli("study", "run", study, "--n-trials", "1")
    assert result.returncode == 0, result.stderr
    assert "in this run (1 trial)" in result.stdout and "0.0000 in this run" not in result.stdout


def test_reading_a_study_imports_no_torch():
    # status, best and the study file: Optuna and SQLAlchemy only, so they answer in a blink.
    code = ("import sys\nimport search.commands.study, search.studyfile, search.study.open\n"
            "print(sorted(m for m in ('torch', 'fastai', 'timm') if m in sys.modules))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
