"""[study] learn_from: a new study starts from earlier studies' best configurations and, for TPE,
their finished trials by rank; none of them ever counts as the new study's own."""
from __future__ import annotations

from pathlib import Path

import pytest

from search.studyfile import load_study_file
from swipr_core.errors import SwiprError
from tests.studykit import space_toml, study_toml


def _file(folder: Path, name: str, learn_from: str | None = None, **kwargs) -> Path:
    extra = dict(kwargs.pop("extra", {}))
    if learn_from is not None:
        extra["study"] = f"learn_from = {learn_from}\n" + extra.get("study", "")
    path = folder / f"{name}.toml"
    path.write_text(study_toml(folder / "data", name=name, extra=extra, **kwargs))
    return path


def test_learn_from_is_resolved_beside_the_study_file(tmp_path):
    _file(tmp_path, "old")
    (tmp_path / "sub").mkdir()
    _file(tmp_path / "sub", "older")
    new = load_study_file(_file(tmp_path, "new", '["old.toml", "sub/older.toml"]'))
    assert new.study.learn_from == ((tmp_path / "old.toml").resolve(), (tmp_path / "sub/older.toml").resolve())
    assert new.study.learn_from_top == 3 and new.study.learn_from_sampler
    assert load_study_file(_file(tmp_path, "one", '"old.toml"')).study.learn_from == ((tmp_path / "old.toml").resolve(),)


@pytest.mark.parametrize("learn_from, message", [
    ('"gone.toml"', "[study] learn_from: " ),
    ('"new.toml"', "[study] learn_from: new.toml is this study itself"),
    ("3", "[study] learn_from must be a string, got 3"),
    ('["old.toml", "old.toml"]', "[study] learn_from names a study file twice"),
])
def test_bad_learn_from_names_the_key(tmp_path, learn_from, message):
    _file(tmp_path, "old")
    with pytest.raises(SwiprError, match=None) as error:
        load_study_file(_file(tmp_path, "new", learn_from))
    assert message in str(error.value) and "\n" not in str(error.value)
    if learn_from == '"gone.toml"':
        assert "gone.toml: study file not found" in str(error.value)


def test_a_cycle_of_studies_learning_from_each_other_is_refused(tmp_path):
    _file(tmp_path, "a", '"b.toml"')
    _file(tmp_path, "b", '"c.toml"')
    _file(tmp_path, "c", '"a.toml"')
    with pytest.raises(SwiprError, match=r"a\.toml: \[study\] learn_from: a cycle .*\(a.toml -> b.toml -> c.toml -> a.toml\)"):
        load_study_file(tmp_path / "a.toml")


def test_learn_from_top_below_zero_is_refused(tmp_path):
    with pytest.raises(SwiprError, match=r"\[study\] learn_from_top must be 0 or more, got -1"):
        load_study_file(_file(tmp_path, "new", extra={"study": "learn_from_top = -1\n"}))


SPACE_OLD = space_toml(freeze='["unfrozen", "frozen"]')
# the new space: a narrower lr, batch 32 gone (24 nearest), "frozen" gone (no nearest choice)
SPACE_NEW = SPACE_OLD.replace("low = 1e-3", "low = 2e-3").replace("[16, 32]", "[16, 24]").replace(
    '["unfrozen", "frozen"]', '["unfrozen"]')


def _earlier_study(folder: Path, trials: list[tuple[dict, float]], arch: str = "test_resnet",
                   storage: str = "", notebook: int | None = None) -> Path:
    """An earlier study file whose storage holds these finished trials (params, value)."""
    import optuna

    from objectives.space import distribution
    from search.study.open import open_study

    path = _file(folder, "old", space=SPACE_OLD, extra={"study": f'storage = "{storage}"\n'} if storage else {})
    if arch != "test_resnet":
        path.write_text(path.read_text().replace('arch = "test_resnet"', f'arch = "{arch}"'))
    old = load_study_file(path)
    study = open_study(old, create=True)
    specs = {name: distribution(spec) for name, spec in old.space.items()}
    for i, (params, value) in enumerate(trials):
        full = {"image_size": 32, "n_cycles": 1, "cycle_len": 1, "cycle_mult": 1, **params}
        study.add_trial(optuna.trial.create_trial(params=full, distributions={k: specs[k] for k in full}, value=value,
                                                  user_attrs={"warm_start": "notebook"} if i == notebook else {}))
    return path


def _new_study(folder: Path, top: int = 3, sampler: str = "tpe", warm_start: bool = False):
    from search.study.open import open_study

    new = load_study_file(_file(folder, "new", '"old.toml"', space=SPACE_NEW, sampler=sampler, warm_start=warm_start,
                                extra={"study": f"learn_from_top = {top}\n"}))
    return new, open_study(new, create=True)


def test_best_earlier_configs_are_enqueued_fitted_adapted_or_skipped(tmp_path, capsys):
    from objectives.trial_attrs import attrs_of
    from search.study.learn_from import LEARNED_ATTR, OLD_VALUES_ATTR, RANK_ATTR, learn_from_earlier, read_earlier

    _earlier_study(tmp_path, [
        ({"lr": 5e-3, "batch_size": 16, "freeze": "unfrozen"}, 0.30),   # rank 1: fits
        ({"lr": 5e-3, "batch_size": 16, "freeze": "frozen"}, 0.31),     # rank 2: frozen has no place: skipped
        ({"lr": 1e-3, "batch_size": 32, "freeze": "unfrozen"}, 0.32),   # rank 3: lr -> 2e-3, batch 32 -> 24
        ({"lr": 5e-3, "batch_size": 16, "freeze": "unfrozen"}, 0.33),   # rank 4: the same as rank 1: skipped
        ({"lr": 8e-3, "batch_size": 16, "freeze": "unfrozen"}, 0.34),   # rank 5: fits
        ({"lr": 9e-3, "batch_size": 16, "freeze": "unfrozen"}, 0.35),   # rank 6: beyond the top 3
    ])
    new, study = _new_study(tmp_path)
    earlier, notes = read_earlier(new)
    assert notes == []
    lines = learn_from_earlier(study, new, earlier)
    assert "enqueued 3 of their best configurations (2 fit the space, 1 moved to its nearest values, " \
           "2 skipped: 1 with a value it has no place for, 1 the same as one before or the notebook's)" in lines[0]
    queued = study.get_trials(deepcopy=False)
    assert [t.system_attrs["fixed_params"] for t in queued] == [
        {"lr": 5e-3, "batch_size": 16, "freeze": "unfrozen", "image_size": 32, "n_cycles": 1, "cycle_len": 1,
         "cycle_mult": 1},
        {"lr": 2e-3, "batch_size": 24, "freeze": "unfrozen", "image_size": 32, "n_cycles": 1, "cycle_len": 1,
         "cycle_mult": 1},
        {"lr": 8e-3, "batch_size": 16, "freeze": "unfrozen", "image_size": 32, "n_cycles": 1, "cycle_len": 1,
         "cycle_mult": 1}]
    assert [attrs_of(t)[LEARNED_ATTR] for t in queued] == ["old trial 0", "old trial 2", "old trial 4"]
    assert [attrs_of(t)[RANK_ATTR] for t in queued] == [1, 3, 5]
    assert attrs_of(queued[1])[OLD_VALUES_ATTR] == {"lr": 1e-3, "batch_size": 32}
    # no value of the earlier study is one of the new study's: nothing finished, nothing best
    assert all(t.state.name == "WAITING" and t.value is None for t in queued)
    # once only: a second start queues nothing more
    assert learn_from_earlier(study, new, earlier) == [] and len(study.get_trials()) == 3


def test_a_study_with_no_finished_trials_or_another_arch(tmp_path):
    from search.study.learn_from import read_earlier

    _earlier_study(tmp_path, [])
    new, _ = _new_study(tmp_path)
    with pytest.raises(SwiprError, match=r"new\.toml: \[study\] learn_from: old\.toml: study 'old' has no finished "
                                         r"trials to learn from"):
        read_earlier(new)
    other = tmp_path / "other"
    other.mkdir()
    _earlier_study(other, [({"lr": 5e-3, "batch_size": 16, "freeze": "unfrozen"}, 0.3)], arch="resnet18")
    new, study = _new_study(other)
    earlier, notes = read_earlier(new)
    assert len(notes) == 1 and "[model] arch resnet18 is not this study's test_resnet" in notes[0]
    assert earlier[0].params(earlier[0].trials[0]).keys() == {"batch_size", "freeze", "image_size", "n_cycles",
                                                              "cycle_len", "cycle_mult"}


def test_the_run_refuses_a_bad_reference_writing_nothing(tmp_path):
    from tests.studykit import demo_data, run_cli

    demo_data(tmp_path / "data")
    _earlier_study(tmp_path, [])
    new = _file(tmp_path, "new", '"old.toml"', space=SPACE_NEW)
    result = run_cli("study", "run", new, "--n-trials", "1")
    assert result.returncode == 2 and "learn_from: old.toml: study 'old' has no finished trials" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new.db").exists() and not (tmp_path / "new.labels.csv").exists()


def _tpe_study(observations: list[dict], own: list[float] = ()):
    import optuna

    from objectives.optuna_compat import set_study_system_attr
    from search.study.samplers import LEARNED_SYSTEM_ATTR, make_sampler

    study = optuna.create_study(sampler=make_sampler("tpe", 7))
    if observations:
        set_study_system_attr(study, LEARNED_SYSTEM_ATTR, {"observations": observations})
    lr = optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)
    for i, value in enumerate(own):
        study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3 + i * 1e-3}, distributions={"lr": lr}, value=value))
    return study, lr


def test_tpe_draws_near_the_earlier_studies_best_before_its_own_trials(tmp_path):
    # ten earlier trials: the best two near lr 0.02, the rest near 0.0015
    observations = [{"study": "old", "trial": i, "params": {"lr": 0.02 if i < 2 else 0.0015 + i * 1e-5},
                     "q": i / 9} for i in range(10)]
    draws = []
    for _ in range(5):
        study, lr = _tpe_study(observations)
        trial = study.ask({"lr": lr})
        draws.append(trial.params["lr"])
        study.tell(trial, 0.5)
    assert all(0.01 <= lr <= 0.03 for lr in draws), draws
    # the earlier trials are never the study's: it holds its own one trial each time
    assert len(study.get_trials()) == 1


def test_earlier_trials_fade_as_the_studys_own_finish():
    from functools import partial

    import optuna

    from search.study.samplers import SeededByTrial

    observations = [{"study": "old", "trial": i, "params": {"lr": 0.02}, "q": i / 2} for i in range(3)]
    learning, lr = _tpe_study(observations, own=[0.5, 0.4, 0.6, 0.3, 0.45, 0.55])   # 6 own >= 3 earlier: all gone
    # make_sampler("tpe")'s TPE, without the earlier trials
    plain = optuna.create_study(sampler=SeededByTrial(partial(optuna.samplers.TPESampler, constant_liar=True,
                                                              n_startup_trials=5), 7))
    for trial in learning.get_trials():
        plain.add_trial(trial)
    assert learning.ask({"lr": lr}).params == plain.ask({"lr": lr}).params


def test_a_run_learns_from_an_earlier_run_and_counts_only_its_own(tmp_path):
    from search.study.open import open_study
    from tests.studykit import demo_data, run_cli

    demo_data(tmp_path / "data")
    old = _file(tmp_path, "old", space=SPACE_OLD)
    assert run_cli("study", "run", old, "--n-trials", "3").returncode == 0
    new = _file(tmp_path, "new", '"old.toml"', space=SPACE_NEW)
    result = run_cli("study", "run", new, "--n-trials", "4")
    assert result.returncode == 0, result.stderr
    assert "learn_from: 'old' (3 finished): enqueued" in result.stdout
    study = open_study(load_study_file(new), create=False, read_only=True)
    earlier = open_study(load_study_file(old), create=False, read_only=True)
    assert [t.number for t in study.get_trials()] == [0, 1, 2, 3]   # its own four, no earlier one
    assert {t.value for t in study.get_trials()}.isdisjoint({t.value for t in earlier.get_trials()})
    best = run_cli("study", "best", new)
    assert best.returncode == 0 and "learned from" in best.stdout and "'old' (3 finished)" in best.stdout


def test_an_earlier_study_in_postgresql_teaches_one_in_sqlite(tmp_path, pg_url):
    from search.study.learn_from import learn_from_earlier, read_earlier

    _earlier_study(tmp_path, [({"lr": 5e-3, "batch_size": 16, "freeze": "unfrozen"}, 0.3),
                              ({"lr": 9e-3, "batch_size": 32, "freeze": "unfrozen"}, 0.4)], storage=pg_url)
    new, study = _new_study(tmp_path, top=1)
    assert new.study.storage.startswith("sqlite:///")
    earlier, _ = read_earlier(new)
    lines = learn_from_earlier(study, new, earlier)
    assert "'old' (2 finished): enqueued 1 of their best" in lines[0] and "2 finished trials by rank" in lines[1]
    assert [t.system_attrs["fixed_params"]["lr"] for t in study.get_trials()] == [5e-3]


def test_an_earlier_notebook_trial_is_not_queued_again_beside_the_studys_own(tmp_path):
    from objectives.trial_attrs import attrs_of
    from search.study.learn_from import LEARNED_ATTR, learn_from_earlier, read_earlier

    _earlier_study(tmp_path, [({"lr": 5e-3, "batch_size": 16, "freeze": "unfrozen"}, 0.3),
                              ({"lr": 9e-3, "batch_size": 16, "freeze": "unfrozen"}, 0.4)], notebook=0)
    new, study = _new_study(tmp_path, top=2, warm_start=True)
    earlier, _ = read_earlier(new)
    lines = learn_from_earlier(study, new, earlier)
    assert "enqueued 1 of their best" in lines[0] and "1 the same as one before or the notebook's" in lines[0]
    assert [attrs_of(t).get(LEARNED_ATTR) for t in study.get_trials()] == ["old trial 1"]


@pytest.mark.slow
def test_a_dask_run_and_a_workers_run_learn_alike(tmp_path):
    from objectives.trial_attrs import attrs_of
    from search.study.learn_from import LEARNED_ATTR
    from search.study.open import open_study
    from tests.daskkit import Cluster
    from tests.studykit import demo_data, run_cli

    demo_data(tmp_path / "data")
    _earlier_study(tmp_path, [({"lr": 5e-3, "batch_size": 16, "freeze": "unfrozen"}, 0.3),
                              ({"lr": 9e-3, "batch_size": 32, "freeze": "unfrozen"}, 0.4)])
    sources = {}
    with Cluster(workers=1) as cluster:
        for engine, flags in (("dask", ["--dask", cluster.address]), ("workers", ["--workers", "2"])):
            folder = tmp_path / engine
            folder.mkdir()
            (folder / "old.toml").symlink_to(tmp_path / "old.toml")
            new = _file(folder, "new", '"old.toml"', space=SPACE_NEW, extra={"study": "learn_from_top = 2\n"})
            new.write_text(new.read_text().replace(str(folder / "data"), str(tmp_path / "data")))
            result = run_cli("study", "run", new, "--n-trials", "3", *flags)
            assert result.returncode == 0, result.stdout + result.stderr
            study = open_study(load_study_file(new), create=False, read_only=True)
            assert len(study.get_trials()) == 3 and all(t.state.name == "COMPLETE" for t in study.get_trials())
            sources[engine] = [attrs_of(t).get(LEARNED_ATTR) for t in study.get_trials()]
    assert sources["dask"] == sources["workers"] == ["old trial 0", "old trial 1", None]


def test_the_learned_from_row_tells_how_each_enqueued_config_did_a_retry_for_its_trial():
    import optuna

    from objectives.optuna_compat import set_study_system_attr
    from objectives.trial_attrs import user_attrs_for
    from search.study.learn_from import learned_from_rows
    from search.study.samplers import LEARNED_SYSTEM_ATTR

    study = optuna.create_study()
    lr = optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)
    study.add_trial(optuna.trial.create_trial(params={"lr": 5e-3}, distributions={"lr": lr}, value=0.31))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={"lr": 8e-3},
                                              distributions={"lr": lr}))
    shown, hidden = user_attrs_for({"retry_of": 1})
    study.add_trial(optuna.trial.create_trial(params={"lr": 8e-3}, distributions={"lr": lr}, value=0.29,
                                              user_attrs=shown, system_attrs=hidden))
    set_study_system_attr(study, LEARNED_SYSTEM_ATTR, {
        "studies": [{"name": "old", "file": "old.toml", "storage": "x", "finished": 7, "shared_only": False}],
        "enqueued": [{"study": "old", "trial": 4, "rank": 1, "number": 0}, {"study": "old", "trial": 2, "rank": 2,
                                                                           "number": 1}],
        "observations": [{"study": "old", "trial": 4, "params": {"lr": 5e-3}, "q": 0.0}]})
    [(label, text)] = learned_from_rows(study)
    assert label == "learned from"
    assert text == ("'old' (7 finished): 2 best configurations enqueued (trial 0 from old trial 4 (rank 1): val_loss "
                    "0.3100; trial 1 from old trial 2 (rank 2): val_loss 0.2900); TPE saw 1 earlier trials by rank "
                    "(never counted as results)")
    assert learned_from_rows(optuna.create_study()) == []
