"""One training run: a single epoch counter across phases, stopping early, resuming."""
import math
import re

import pytest

from swipr_core.errors import SwiprError
from swipr_core.train.checkpoints import load_checkpoint
from swipr_core.train.model import ModelSpec
from swipr_core.train.run import train
from swipr_core.train.schedule import MAX_EPOCHS, TrainConfig, check_epochs, sgdr_epochs
from tests.studykit import prepared_demo

TINY = ModelSpec(arch="test_resnet", pretrained=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return prepared_demo(tmp_path_factory.mktemp("data"))


def config(**overrides) -> TrainConfig:
    values = dict(lr=1e-2, batch_size=32, image_size=32, freeze="unfrozen", n_cycles=1, cycle_len=1,
                  cycle_mult=1, head_epochs=1, seed=0)
    return TrainConfig(**{**values, **overrides})


def test_sgdr_epoch_counts():
    assert sgdr_epochs(3, 1, 2) == 7    # the notebook's fit(lr, 3, cycle_len=1, cycle_mult=2)
    assert sgdr_epochs(2, 2, 1) == 4
    assert config(freeze="frozen_then_unfrozen", head_epochs=2, n_cycles=2, cycle_mult=2).epochs == 5


def test_one_epoch_counter_runs_on_across_both_phases(dataset):
    seen = []
    cfg = config(freeze="frozen_then_unfrozen", head_epochs=2, n_cycles=2, cycle_mult=2)
    result = train(dataset, cfg, TINY, device="cpu", on_epoch=seen.append)
    # 2 frozen epochs, then SGDR 1 + 2 unfrozen epochs: 0..4 on one counter, no restart at 0.
    assert [r.epoch for r in seen] == [0, 1, 2, 3, 4]
    assert [r.phase for r in seen] == ["frozen", "frozen", "unfrozen", "unfrozen", "unfrozen"]
    assert all(math.isfinite(r.valid_loss) for r in seen)
    assert result.metrics["epochs"] == 5
    assert result.metrics["val_loss"] == seen[-1].valid_loss
    # SGDR restarts: the learning rate climbs back up at the start of the second cycle.
    assert seen[3].lrs[0] > seen[2].lrs[-1]


def test_metrics_and_the_learner_actually_learns(dataset):
    result = train(dataset, config(n_cycles=2, cycle_len=2), TINY, device="cpu")
    metrics = result.metrics
    assert set(metrics) >= {"val_loss", "val_accuracy", "val_roc_auc", "majority_accuracy", "epochs",
                            "train_seconds", "train_images_per_s"}
    n_valid = len(dataset.split.indices(True))
    assert len(result.valid_probs) == n_valid
    share_no = 1 - result.valid_targets.mean()
    assert metrics["majority_accuracy"] == pytest.approx(max(share_no, 1 - share_no))
    assert metrics["val_roc_auc"] > 0.65    # above chance (0.5): the demo's YES cue is faint on purpose
    assert metrics["train_images_per_s"] > 0


def test_an_exception_from_on_epoch_stops_the_run_and_reaches_the_caller(dataset):
    class Stop(Exception):
        pass

    seen = []

    def stop_after_second(record):
        seen.append(record.epoch)
        if record.epoch == 1:
            raise Stop()

    with pytest.raises(Stop):
        train(dataset, config(n_cycles=4), TINY, device="cpu", on_epoch=stop_after_second)
    assert seen == [0, 1]


def test_a_stopped_run_resumes_from_its_checkpoint(dataset, tmp_path):
    class Crash(Exception):
        pass

    def crash_at_2(record):
        if record.epoch == 2:
            raise Crash()

    cfg = config(freeze="frozen_then_unfrozen", head_epochs=1, n_cycles=2, cycle_mult=2)
    with pytest.raises(Crash):
        train(dataset, cfg, TINY, device="cpu", on_epoch=crash_at_2, checkpoint_dir=tmp_path)
    assert len(load_checkpoint(tmp_path)["history"]) == 3
    seen = []
    result = train(dataset, cfg, TINY, device="cpu", on_epoch=seen.append, checkpoint_dir=tmp_path)
    # Only the epoch after the checkpoint runs again; the history carries the earlier ones.
    assert [r.epoch for r in seen] == [3]
    assert [r.epoch for r in result.history] == [0, 1, 2, 3]


@pytest.mark.parametrize("overrides, message", [
    ({"lr": 0.0}, "lr must be a number between 0 and 1 (both excluded), got 0.0"),
    ({"lr": 1.5}, "lr must be a number between 0 and 1 (both excluded), got 1.5"),
    ({"lr": float("nan")}, "lr must be a number between 0 and 1"),
    ({"batch_size": 0}, "batch_size must be 1 or more, got 0"),
    ({"image_size": -32}, "image_size must be 1 or more, got -32"),
    ({"n_cycles": 0}, "n_cycles must be 1 or more, got 0"),
    ({"cycle_len": 0}, "cycle_len must be 1 or more, got 0"),
    ({"cycle_mult": 0}, "cycle_mult must be 1 or more, got 0"),
    ({"head_epochs": 0}, "head_epochs must be 1 or more, got 0"),
    ({"n_cycles": 1.5}, "n_cycles must be a whole number, got 1.5"),
    ({"cycle_len": True}, "cycle_len must be a whole number, got True"),
    ({"freeze": "thawed"}, "freeze must be one of frozen, unfrozen, frozen_then_unfrozen, got 'thawed'"),
])
def test_a_bad_config_is_one_line_naming_the_value(overrides, message):
    with pytest.raises(SwiprError) as error:
        config(**overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("schedule, asked", [
    ((100, 1, 2), "1.27e+30"),              # cycle_mult ** n_cycles: finite, but not in this universe
    ((1, 2**63 - 1, 1), "9.22e+18"),        # an endless single cycle
    ((10**4, 1, 3), "about 1e4770"),      # too big to count exactly: its order of magnitude
    ((1001, 1, 1), "1001"),
])
def test_more_epochs_than_max_epochs_says_how_many(schedule, asked):
    n_cycles, cycle_len, cycle_mult = schedule
    with pytest.raises(SwiprError, match=f"ask for {re.escape(asked)} epochs; a run may have at most {MAX_EPOCHS}"):
        config(n_cycles=n_cycles, cycle_len=cycle_len, cycle_mult=cycle_mult)


def test_check_epochs_counts_the_warm_up_and_bounds_at_max_epochs():
    assert check_epochs(3, 1, 2) == 7
    assert check_epochs(3, 1, 2, "frozen_then_unfrozen", 2) == 9
    assert check_epochs(3, 1, 2, "unfrozen", 50) == 7          # no warm-up unless frozen_then_unfrozen
    assert check_epochs(MAX_EPOCHS, 1, 1) == MAX_EPOCHS
    with pytest.raises(SwiprError, match="head_epochs=1, n_cycles=1000, cycle_len=1, cycle_mult=1 ask for 1001"):
        check_epochs(MAX_EPOCHS, 1, 1, "frozen_then_unfrozen", 1)


def test_finished_schedules_keep_the_validation_predictions_of_that_epochs_model(dataset):
    # Nested: the 1-cycle run ends after epoch 0, the 2-cycle run after epoch 2. Those epochs keep
    # P(YES) from fastai's own validation pass; the others keep none. The last one is what the
    # run returns, and it is exactly the prediction of the model that ends there.
    seen = []
    result = train(dataset, config(n_cycles=2, cycle_mult=2, finish_at=(1,)), TINY, device="cpu",
                   on_epoch=seen.append)
    assert [r.valid_probs is not None for r in seen] == [True, False, True]
    assert len(seen[0].valid_probs) == len(dataset.split.indices(True))
    assert seen[0].valid_probs != seen[2].valid_probs
    assert list(result.valid_probs) == seen[2].valid_probs
    shorter = train(dataset, config(n_cycles=1, cycle_mult=2), TINY, device="cpu")
    assert list(shorter.valid_probs) == seen[0].valid_probs   # the 1-cycle run's own model, bit for bit
