"""The study file: defaults, paths, and every way it can be wrong naming the key."""
from pathlib import Path

import pytest

from objectives.space import Choices, Range
from search.studyfile import load_study_file
from swipr_core.errors import SwiprError
from tests.studykit import study_toml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_defaults_and_paths_relative_to_the_study_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SWIPR_STORAGE", raising=False)
    path = write(tmp_path, '[data]\ndatabase = "d/pics.db"\n[space]\nlr = 1e-3\nbatch_size = 8\nimage_size = 32\n'
                           'freeze = "frozen"\nn_cycles = 1\ncycle_len = 1\ncycle_mult = 2\n')
    parsed = load_study_file(path)
    # Every default from the schema, every path resolved beside the study file.
    assert parsed.study.name == "s"
    assert parsed.study.storage == f"sqlite:///{tmp_path.resolve() / 's.db'}"
    assert parsed.study.sampler == "tpe" and parsed.study.pruner == "successive_halving"
    assert parsed.study.prune_at == "cycle_end" and parsed.study.pruner_warmup_epochs == 2
    assert parsed.data.database == tmp_path.resolve() / "d" / "pics.db"
    assert parsed.data.image_root == tmp_path.resolve() / "d"
    assert parsed.data.labels_file == tmp_path.resolve() / "s.labels.csv"
    assert parsed.data.valid_pct == 0.2
    assert parsed.model.arch == "resnext50_32x4d" and parsed.model.pretrained
    assert parsed.space["lr"] == Choices((1e-3,))


def test_space_ranges_and_choices(tmp_path):
    parsed = load_study_file(write(tmp_path, study_toml(tmp_path)))
    assert parsed.space["lr"] == Range(1e-3, 3e-2, log=True, is_int=False)
    assert parsed.space["batch_size"] == Choices((16, 32))


def test_storage_from_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("SWIPR_STORAGE", "postgresql://u:p@db/swipr")
    assert load_study_file(write(tmp_path, study_toml(tmp_path))).study.storage == "postgresql://u:p@db/swipr"


def test_relative_sqlite_storage_is_beside_the_study_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SWIPR_STORAGE", raising=False)
    text = study_toml(tmp_path, extra={"study": 'storage = "sqlite:///runs/x.db"\n'})
    assert load_study_file(write(tmp_path, text)).study.storage == f"sqlite:///{tmp_path.resolve() / 'runs/x.db'}"


@pytest.mark.parametrize("extra, message", [
    ({"study": "colour = 1\n"}, "unknown key 'colour' in [study]"),
    ({"data.rules": "max_kids = 1\n"}, "unknown key 'max_kids' in [data.rules]"),
    ({"study": 'n_trials = "ten"\n'}, "[study] n_trials must be an integer"),
    ({"study": "warm_start = 1\n"}, "[study] warm_start must be true or false"),
    ({"study": "n_trials = 0\n"}, "[study] n_trials must be 1 or more, got 0"),
    ({"data": "valid_pct = true\n"}, "[data] valid_pct must be a number"),
    ({"data": "valid_pct = 1.5\n"}, "[data] valid_pct must be between 0 and 1"),
    ({"study": 'pruner = "sometimes"\n'}, "[study] pruner must be one of"),
    ({"study": 'sampler = "grid"\n'}, "[study] sampler must be one of"),
    ({"data.rules": 'fail_labels = ["no face"]\n'}, "[data.rules] fail_labels item must be an integer"),
    ({"data.rules": "min_age = 40\n"}, "[data.rules] min_age must not exceed max_age"),
    ({"train": 'device = "tpu"\n'}, "[train] device must be auto, cpu, cuda or cuda:N"),
    ({"train": 'device = "cuda:x"\n'}, "[train] device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
    ({"space": "batch_size = [1, 16]\n"}, "[space] batch_size must be 2 or more: BatchNorm can't train on a batch of one"),
    ({"space": "batch_size = {low = 1, high = 64, log = true}\n"}, "[space] batch_size must be 2 or more"),
])
def test_wrong_keys_and_types_name_the_key(tmp_path, extra, message):
    text = study_toml(tmp_path)
    for section, line in extra.items():
        key = line.split("=")[0].strip()
        # Replace the key if the kit already writes it, so TOML has no duplicate key.
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        text = "\n".join(lines).replace(f"[{section}]\n", f"[{section}]\n{line}", 1)
    with pytest.raises(SwiprError) as error:
        load_study_file(write(tmp_path, text))
    assert message in str(error.value)
    assert "s.toml" in str(error.value)


@pytest.mark.parametrize("space, message", [
    ("[space]\nlr = 1e-3\n", "[space] is missing batch_size"),
    ('[space]\nlr = { low = 0.1, high = 0.01 }\n', "[space] lr low (0.1) is above high (0.01)"),
    ('[space]\nlr = { low = 0.1 }\n', "[space] lr range needs 'high'"),
    ('[space]\nlr = { low = 0.01, high = 0.1, lg = true }\n', "unknown key 'lg' in [space] lr"),
    ('[space]\nfreeze = ["thawed"]\n', "[space] freeze must be one of"),
    ('[space]\ndropout = [0.1]\n', "unknown key 'dropout' in [space]"),
    ('[space]\nbatch_size = []\n', "[space] batch_size has no choices"),
    ('[space]\nimage_size = { low = 160, high = 229, step = 32 }\n',
     "[space] image_size high (229) is not low (160) plus a whole number of steps (32); the last value on that grid is 224"),
    ('[space]\nlr = { low = 0.001, high = 0.01, step = 0.004 }\n', "the last value on that grid is 0.009"),
])
def test_bad_space(tmp_path, space, message):
    with pytest.raises(SwiprError) as error:
        load_study_file(write(tmp_path, study_toml(tmp_path, space=space)))
    assert message in str(error.value)


def test_image_size_above_cache_size(tmp_path):
    text = study_toml(tmp_path, space=study_toml(tmp_path).split("[space]")[1].replace("[32]", "[64]"))
    with pytest.raises(SwiprError, match=r"image_size goes up to 64, above \[data\] cache_px \(40\)"):
        load_study_file(write(tmp_path, text.replace("lr =", "[space]\nlr =", 1)))


def test_broken_toml_and_missing_file(tmp_path):
    with pytest.raises(SwiprError, match="not valid TOML"):
        load_study_file(write(tmp_path, "[study\nname = 1"))
    with pytest.raises(SwiprError, match="study file not found"):
        load_study_file(tmp_path / "nope.toml")


def test_unknown_section(tmp_path):
    with pytest.raises(SwiprError, match=r"unknown section \[optimizer\]"):
        load_study_file(write(tmp_path, study_toml(tmp_path) + "\n[optimizer]\nname = 'adam'\n"))


def test_the_shipped_study_files_parse():
    root = Path(__file__).resolve().parents[1] / "studies"
    for path in sorted(root.glob("*.toml")):
        assert load_study_file(path).space, path


@pytest.mark.parametrize("space_line, message", [
    ("batch_size = { low = 8, high = 64, step = -8 }", "[space] batch_size step must be a whole number, 1 or more"),
    ("batch_size = { low = 8, high = 64, step = 2.5 }", "[space] batch_size step must be a whole number"),
    ("lr = { low = 0.001, high = 0.1, step = nan }", "[space] lr step must be a positive number"),
    ("n_cycles = 100\ncycle_mult = 2", "n_cycles=100, cycle_len=1, cycle_mult=2 ask for 1.27e+30 epochs"),
    ("cycle_len = 9223372036854775807", "cycle_len=9223372036854775807, cycle_mult=1 ask for"),
    ("n_cycles = 40\ncycle_len = 30", "ask for 1200 epochs; a run may have at most 1000"),
])
def test_values_that_would_crash_later_are_refused_now(tmp_path, space_line, message):
    lines = {line.split(" = ")[0]: line for line in space_line.splitlines()}
    space = "\n".join(lines.get(key, f"{key} = {value}") for key, value in (
        ("lr", "1e-3"), ("batch_size", "8"), ("image_size", "32"), ("freeze", '"unfrozen"'),
        ("n_cycles", "1"), ("cycle_len", "1"), ("cycle_mult", "1")))
    with pytest.raises(SwiprError) as error:
        load_study_file(write(tmp_path, study_toml(tmp_path, space="[space]\n" + space + "\n")))
    assert message in str(error.value) and "s.toml" in str(error.value)


@pytest.mark.parametrize("section, line, message", [
    ("study", "seed = -1", "[study] seed must be between 0 and 4294967295"),
    ("study", "seed = 4294967296", "[study] seed must be between 0 and 4294967295"),
    ("data", "cache_px = 1099511627776", "[data] cache_px must be between 8 and 4096"),
    ("data", "split_seed = -5", "[data] split_seed must be between 0 and 4294967295"),
    ("study", "heartbeat_interval = 99999999999999999", "[study] heartbeat_interval must be between 1 and 86400"),
    ("train", "head_epochs = 5000", "a run may have at most 1000"),
])
def test_out_of_range_settings_name_the_key(tmp_path, section, line, message):
    key = line.split(" = ")[0]
    text = "\n".join(ln for ln in study_toml(tmp_path).splitlines() if not ln.startswith(f"{key} ="))
    text = text.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1)
    if section == "train":
        text = text.replace('freeze = ["unfrozen"]', 'freeze = ["frozen_then_unfrozen"]')
    with pytest.raises(SwiprError) as error:
        load_study_file(write(tmp_path, text))
    assert message in str(error.value)
