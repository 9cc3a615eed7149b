"""Range-test findings on a study: versioned and never replaced, the version a trial trained
with recorded and kept by the search, checked when read, counted, and kept out of the user
attrs `optuna studies` prints. In-memory studies; only the core tests train (a tiny network)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from objectives.lr_finder import FindingUnusable, StudyFinder, versions_used
from objectives.lr_record import (
    FINDER_LR_ATTR,
    FINDING_ATTR,
    ATTR_PREFIX,
    SYSTEM_PREFIX,
    add_finding,
    check_record,
    current_version,
    finding_attr,
    finding_key,
    new_record,
    range_test_cost,
    recorded_findings,
)
from objectives.optuna_compat import set_study_system_attr
from objectives.space import Choices, FinderLR
from objectives.trial_attrs import RETRY_OF_ATTR, attrs_of
from search.commands.lr_find import store_finding
from search.studyfile.space import LOWEST_SUGGESTION
from search.views.gains import gains_rows, search_gains
from search.views.range_tests import range_test_rows
from search.views.report import render_report
from swipr_core.train.lr_finding import START_LR, LRFinding

FINGERPRINT = "f00d"
VALLEY = FinderLR("valley", Choices((2.0,)))


@pytest.fixture(autouse=True)
def quiet():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def finding(valley: float = 0.004, freeze: str = "unfrozen", seconds: float = 5.0, epochs: float = 3.9,
            head_epochs: int = 0) -> LRFinding:
    return LRFinding(freeze, 16, 32, lrs=tuple(np.logspace(-7, 1, 30)), losses=tuple(np.linspace(1, 2, 30)),
                     suggestions={"valley": valley}, seconds=seconds, epochs_equivalent=epochs, head_epochs=head_epochs)


def record(valley: float = 0.004, by: str = "lr-find", trial: int | None = None, **kwargs) -> dict:
    return new_record(finding(valley, **kwargs), 30, FINGERPRINT, None, by, trial)


def finder() -> StudyFinder:
    """A finder whose study has its tests already: running one here would be a bug."""
    return StudyFinder(SimpleNamespace(fingerprint=FINGERPRINT), None)   # type: ignore[arg-type]


def trained_with(study: optuna.Study, version: int, key: str = "unfrozen:bs16:px32") -> None:
    study.add_trial(create_trial(value=0.3, user_attrs={FINDING_ATTR: {"key": key, "version": version}}))


def values(factor: float = 2.0) -> dict:
    return {"freeze": "unfrozen", "batch_size": 16, "image_size": 32, "lr": factor}


def test_lr_find_adds_a_version_and_the_search_keeps_the_one_trials_used():
    # v1 trained trial 0: a new test is kept beside it, and trials go on getting v1's lr.
    study = optuna.create_study()
    add_finding(study, record(0.004, by="search", trial=0))
    trained_with(study, 1)
    version, line = store_finding(study, record(0.009), use=False)
    assert version == 2 and current_version(study, "unfrozen:bs16:px32") == 1
    assert "the search keeps using v1 for unfrozen:bs16:px32 (trial 0 trained with it)" in line and "--use" in line
    trial = study.ask()
    assert finder().lr(trial, VALLEY, values()) == pytest.approx(0.008)
    assert attrs_of(trial)[FINDING_ATTR] == {"key": "unfrozen:bs16:px32", "version": 1, "finder": "valley",
                                              "suggestion": 0.004, "factor": 2.0, "lr": 0.008}
    # --use: the new test is the one from now on; v1 and v2 stay as they were
    version, line = store_finding(study, record(0.001), use=True)
    assert version == 3 and "the search uses v3 for unfrozen:bs16:px32 from now on" in line
    assert finder().lr(study.ask(), VALLEY, values()) == pytest.approx(0.002)
    assert [r["suggestions"]["valley"] for r in recorded_findings(study)[0]] == [0.004, 0.009, 0.001]


def test_before_any_trial_used_it_a_new_test_replaces_nothing_but_becomes_current():
    study = optuna.create_study()
    assert store_finding(study, record(0.004), use=False)[0] == 1
    version, line = store_finding(study, record(0.006), use=False)
    assert version == 2 and line == "the search uses v2 for unfrozen:bs16:px32"
    assert current_version(study, "unfrozen:bs16:px32") == 2 and len(recorded_findings(study)[0]) == 2


def test_a_retry_trains_with_its_originals_finding():
    # The user switched to v2 while trial 0 was interrupted: its retry resumes at v1's lr.
    study = optuna.create_study()
    add_finding(study, record(0.004))
    original = study.ask()
    finder().lr(original, VALLEY, values())
    study.tell(original, state=TrialState.FAIL)
    store_finding(study, record(0.009), use=True)
    retry = study.ask()
    retry.set_user_attr(RETRY_OF_ATTR, original.number)
    assert finder().lr(retry, VALLEY, values()) == pytest.approx(0.008)
    assert finder().lr(study.ask(), VALLEY, values()) == pytest.approx(0.018)   # a new trial: v2


def test_an_older_studys_record_reads_as_version_1_and_keeps_serving_its_trials():
    # Written before versions: one user attr per combination; trials with finder_lr, no lr_finding.
    study = optuna.create_study()
    old = {key: value for key, value in record(0.005).items() if key not in ("key", "cost", "head_epochs")}
    study.set_user_attr(finding_attr("unfrozen", 16, 32), old)
    study.add_trial(create_trial(value=0.3, params={"freeze": "unfrozen", "batch_size": 16, "image_size": 32},
                                 distributions={"freeze": optuna.distributions.CategoricalDistribution(["unfrozen"]),
                                                "batch_size": optuna.distributions.CategoricalDistribution([16]),
                                                "image_size": optuna.distributions.CategoricalDistribution([32])},
                                 user_attrs={FINDER_LR_ATTR: 0.005}))
    [read], skipped = recorded_findings(study)
    assert skipped == [] and (read["key"], read["version"], read["legacy"], read["current"]) == \
        ("unfrozen:bs16:px32", 1, True, True)
    assert versions_used(study, "unfrozen:bs16:px32") == {1: [0]}
    assert range_test_rows(study) == [("range tests", "1 (an older study's: their cost was not recorded)")]
    assert finder().lr(study.ask(), VALLEY, values()) == pytest.approx(0.01)
    assert store_finding(study, record(0.009), use=False)[0] == 2   # after the old one, which stays
    assert current_version(study, "unfrozen:bs16:px32") == 1 and finding_attr("unfrozen", 16, 32) in study.user_attrs


@pytest.mark.parametrize("valley, factor, expected", [
    (0.19, 6.0, "valley 0.19 x lr_factor 6 is lr 1.14, and an lr must be between 0 and 1"),
    (0.5, 2.0, "is lr 1, and an lr must be between 0 and 1"),
])
def test_a_finder_lr_of_1_or_more_fails_that_trial_with_its_reason(valley, factor, expected):
    study = optuna.create_study()
    add_finding(study, record(valley))
    trial = study.ask()
    with pytest.raises(FindingUnusable, match=expected):
        finder().lr(trial, VALLEY, values(factor))
    assert expected in attrs_of(trial)["fail_reason"] and FINDING_ATTR not in attrs_of(trial)
    assert not isinstance(FindingUnusable("x"), optuna.exceptions.OptunaError)


@pytest.mark.parametrize("valley, why", [
    (-0.01, "suggestion valley is -0.01, not a learning rate"),
    (float("nan"), "suggestion valley is nan"),
    (1e30, "suggestion valley is 1e+30"),
    ("abc", "suggestion valley is 'abc'"),
])
def test_a_malformed_record_fails_the_trial_and_is_skipped_in_the_report(valley, why):
    study = optuna.create_study()
    set_study_system_attr(study, f"{SYSTEM_PREFIX}unfrozen:bs16:px32:v1", {**record(), "suggestions": {"valley": valley}})
    add_finding(study, record(0.003, freeze="frozen"))   # a good one beside it, still drawn
    assert why in check_record({**record(), "suggestions": {"valley": valley}})
    trial = study.ask()
    with pytest.raises(FindingUnusable, match="range test unfrozen:bs16:px32 v1 is malformed"):
        finder().lr(trial, VALLEY, values())
    assert "malformed" in attrs_of(trial)["fail_reason"]
    section = render_report(study).split('<section id="lr-find">')[1].split("</section>")[0]
    assert section.count("<img") == 1 and "LR finder: frozen, batch size 16, 32 px, v1" in section
    assert "Skipped: range test unfrozen:bs16:px32 v1 is malformed (" in section


def test_an_older_studys_malformed_user_attr_is_skipped_too():
    study = optuna.create_study()
    study.set_user_attr(f"{ATTR_PREFIX}unfrozen:bs16:px32", {"freeze": "unfrozen", "lrs": "abc"})
    study.set_user_attr(f"{ATTR_PREFIX}frozen:bs8:px40", "not a record")
    found, skipped = recorded_findings(study)
    assert found == [] and len(skipped) == 2
    assert "No range test yet" in render_report(study) and "Skipped: range test frozen:bs8:px40 v1" in render_report(study)


def test_range_tests_are_counted_in_the_summary():
    study = optuna.create_study()
    assert range_test_rows(study) == []
    add_finding(study, record(0.004, by="search", trial=0, seconds=12.0, epochs=4.0))
    add_finding(study, record(0.003, by="search", trial=3, freeze="frozen", seconds=18.4, epochs=6.25))
    add_finding(study, record(0.002, by="lr-find", seconds=10.0, epochs=4.0))
    cost = range_test_cost(study)
    assert (cost["count"], cost["by_lr_find"]) == (3, 1)
    assert (cost["seconds"], cost["epochs_equivalent"]) == pytest.approx((40.4, 14.25))
    assert range_test_rows(study) == [("range tests", "3, 40 s ≈ 14.2 epochs (1 by swipr lr-find)")]
    assert gains_rows(study, search_gains(study))[-1] == range_test_rows(study)[0]


def test_the_studys_user_attrs_stay_small():
    # The curves are system attrs: `optuna studies` prints only the user attrs.
    study = optuna.create_study()
    for freeze in ("frozen", "unfrozen"):
        add_finding(study, record(freeze=freeze))
    assert study.user_attrs == {} and len(recorded_findings(study)[0]) == 2


def test_frozen_then_unfrozen_keys_name_their_head_epochs():
    assert finding_key("frozen_then_unfrozen", 32, 32, 2) == "frozen_then_unfrozen:head2:bs32:px32"
    assert finding_key("unfrozen", 32, 32, 2) == "unfrozen:bs32:px32"
    two = StudyFinder(SimpleNamespace(fingerprint=FINGERPRINT), None, head_epochs=2)   # type: ignore[arg-type]
    assert two.key({**values(), "freeze": "frozen_then_unfrozen"}) == "frozen_then_unfrozen:head2:bs16:px32"
    assert record(freeze="frozen_then_unfrozen", head_epochs=2)["key"] == "frozen_then_unfrozen:head2:bs16:px32"


def test_the_study_files_lowest_suggestion_is_the_range_tests_start():
    assert LOWEST_SUGGESTION == START_LR and math.isclose(1 / LOWEST_SUGGESTION, 1e7)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir):
    from search.study.data_record import prepare_study_data
    from search.studyfile import load_study_file
    from tests.studykit import write_study

    study_file = load_study_file(write_study(tmp_path_factory.mktemp("tiny"), data_dir))
    return prepare_study_data(study_file), study_file.model


def tiny_test(tiny, freeze: str = "unfrozen", threads: int | None = 1, head_epochs: int = 1, seed: int = 0):
    from swipr_core.train.lr_find import find_lr
    from swipr_core.train.schedule import TrainConfig

    config = TrainConfig(lr=1e-3, batch_size=16, image_size=32, freeze=freeze, n_cycles=1, cycle_len=1,
                         cycle_mult=1, head_epochs=head_epochs, seed=seed)
    return find_lr(tiny[0], config, tiny[1], device="cpu", num_it=20, threads=threads)


def test_the_same_threads_seed_and_batches_give_the_same_record(tiny):
    # lr-find and a trial's own test run with the same thread count, so they agree.
    import torch

    before = torch.get_num_threads()
    first, again = tiny_test(tiny), tiny_test(tiny)
    assert torch.get_num_threads() == before   # the test's threads are its own
    assert first.cpu_threads == again.cpu_threads == 1
    assert (first.lrs, first.losses, first.suggestions) == (again.lrs, again.losses, again.suggestions)
    n_train = len(tiny[0].split) - sum(tiny[0].split.is_valid)
    assert first.epochs_equivalent == pytest.approx(20 * 16 / n_train) and first.seconds > 0


def test_each_batch_of_the_test_is_reported_as_it_ends(tiny):
    # what lr-find's progress bar counts: every batch the curve records, with its lr and loss
    from swipr_core.train.lr_find import find_lr
    from swipr_core.train.schedule import TrainConfig

    config = TrainConfig(lr=1e-3, batch_size=16, image_size=32, freeze="unfrozen", n_cycles=1, cycle_len=1,
                         cycle_mult=1, head_epochs=1, seed=0)
    seen: list[tuple[float, float]] = []
    finding = find_lr(tiny[0], config, tiny[1], device="cpu", num_it=20, threads=1,
                      on_batch=lambda lr, loss: seen.append((lr, loss)))
    assert seen and [lr for lr, _ in seen] == list(finding.lrs) and [loss for _, loss in seen] == list(finding.losses)
    assert finding.losses == tiny_test(tiny).losses   # watching changes nothing


def test_frozen_then_unfrozen_is_tested_after_its_head_epochs(tiny, monkeypatch):
    # its trials train the head first, so the test starts from a trained head, not a random one.
    from swipr_core.train import lr_find

    warmed = tiny_test(tiny, "frozen_then_unfrozen")
    assert (warmed.head_epochs, warmed.head_lr) == (1, lr_find.HEAD_LR)
    n_train = len(tiny[0].split) - sum(tiny[0].split.is_valid)
    assert warmed.epochs_equivalent == pytest.approx(20 * 16 / n_train + 1)
    monkeypatch.setattr(lr_find, "_warm_up_head", lambda learn, config, head_lr: 0)
    cold = tiny_test(tiny, "frozen_then_unfrozen")
    assert cold.head_epochs == 0 and cold.losses != warmed.losses   # the warm-up changed where the test starts
    assert tiny_test(tiny, "unfrozen").head_epochs == 0   # only frozen_then_unfrozen warms up


def test_the_searchs_range_tests_are_drawn_as_study_artifacts(tmp_path):
    # The dashboard shows study artifacts: a test a trial ran gets its picture, as lr-find's does.
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta

    from objectives.optuna_compat import storage_of
    from objectives.trial import TrainSettings, guarded_finetune
    from search.views.range_tests import RangeTestPictures

    study = optuna.create_study()
    hook = RangeTestPictures(FileSystemArtifactStore(str(tmp_path)))
    stored = add_finding(study, record(0.004, by="search", trial=0))
    hook.on_range_test(study, finding(0.004), recorded_findings(study)[0][stored - 1])
    assert [m.filename for m in get_all_artifact_meta(study, storage=storage_of(study))] == \
        ["lr_find_unfrozen_bs16_px32_v1.png"]
    space = {"lr": VALLEY, "batch_size": Choices((16,)), "image_size": Choices((32,)),
             "freeze": Choices(("unfrozen",)), "n_cycles": Choices((1,)), "cycle_len": Choices((1,)),
             "cycle_mult": Choices((1,))}
    checkpoints = SimpleNamespace(dir_for=lambda trial: None, seed_number_for=lambda trial: trial.number)
    guard = guarded_finetune(SimpleNamespace(fingerprint=FINGERPRINT), space, None,  # type: ignore[arg-type]
                             TrainSettings(head_epochs=3), checkpoints, hooks=[hook])   # type: ignore[arg-type]
    seen = []
    hook.on_range_test = lambda *args: seen.append(args)   # the objective hands each test to its hooks
    guard.objective.finder.on_range_test(study, finding(0.004), {"key": "k"})
    assert seen == [(study, finding(0.004), {"key": "k"})]
    assert guard.objective.finder.head_epochs == 3   # its frozen_then_unfrozen tests warm up as its trials do
