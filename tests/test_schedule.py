"""SGDR schedules: every accepted (n_cycles, cycle_len, cycle_mult, freeze, head_epochs) trains,
restarts the learning rate at each cycle start, ends each cycle near 0, and flags cycle ends."""
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from swipr_core.data.dataset import DataSpec, prepare_data
from swipr_core.data.demo import DEMO_RULES, MIN_IMAGES, write_demo_data
from swipr_core.train.model import ModelSpec
from swipr_core.train.run import sgdr_schedule, train
from swipr_core.train.schedule import FREEZE_STRATEGIES, MAX_EPOCHS, TrainConfig, cycle_lengths, sgdr_epochs

TINY = ModelSpec(arch="test_resnet", pretrained=False)
LR = 1e-2
MAX_DRAWN_EPOCHS = 10   # keeps the training property test to seconds


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    # About 30 labelled 16 px pictures: one batch of 64 holds the whole training split.
    folder = tmp_path_factory.mktemp("tiny")
    database = write_demo_data(folder, n_images=MIN_IMAGES, image_px=16, seed=3)
    spec = DataSpec(database=database, image_root=folder, labels_file=folder / "labels.csv",
                    cache_dir=folder / "cache", cache_px=16, valid_pct=0.25, split_seed=0, rules=DEMO_RULES)
    return prepare_data(spec)


@st.composite
def schedules(draw, max_epochs: int):
    """(n_cycles, cycle_len, cycle_mult, freeze, head_epochs) of at most max_epochs epochs."""
    cycle_mult = draw(st.integers(1, 3))
    cycle_len = draw(st.integers(1, 3))
    most = max(n for n in range(1, max_epochs + 1) if sgdr_epochs(n, cycle_len, cycle_mult) <= max_epochs) \
        if cycle_len <= max_epochs else 0
    n_cycles = draw(st.integers(1, max(1, most)))
    freeze = draw(st.sampled_from(FREEZE_STRATEGIES))
    head_epochs = draw(st.integers(1, 2))
    return n_cycles, cycle_len, cycle_mult, freeze, head_epochs


def expected_lrs(config: TrainConfig) -> list[float]:
    """The cosine value at the start of each epoch: lr at a cycle's first epoch, falling to 0."""
    lrs = []
    for _, *cycles in config.sgdr_phases():
        for length in cycle_lengths(*cycles):
            lrs += [LR * (1 + math.cos(math.pi * k / length)) / 2 for k in range(length)]
    return lrs


@settings(max_examples=12, deadline=None)
@given(schedules(MAX_DRAWN_EPOCHS))
@example((6, 1, 1, "unfrozen", 1))   # [1/6] * 6 does not sum to 1.0 in floats
@example((7, 1, 1, "frozen_then_unfrozen", 2))
@example((3, 1, 2, "frozen", 1))     # fastai's float32 cycle starts gave cycle 3's first batch lr 0
def test_every_schedule_trains_and_restarts_on_time(tiny_dataset, schedule):
    n_cycles, cycle_len, cycle_mult, freeze, head_epochs = schedule
    config = TrainConfig(lr=LR, batch_size=64, image_size=16, freeze=freeze, n_cycles=n_cycles,
                         cycle_len=cycle_len, cycle_mult=cycle_mult, head_epochs=head_epochs)
    history = train(tiny_dataset, config, TINY, device="cpu").history
    assert [r.epoch for r in history] == list(range(config.epochs))
    assert all(len(r.lrs) == 1 and math.isfinite(r.valid_loss) for r in history)
    # One batch an epoch: each epoch's lr is the cosine at its start, restarting at every cycle.
    assert [r.lrs[0] for r in history] == pytest.approx(expected_lrs(config), rel=1e-6, abs=1e-12)
    ends = config.cycle_end_epochs()
    starts = [0] + [end + 1 for end in ends[:-1]]
    assert all(history[s].lrs[0] == pytest.approx(LR) for s in starts)
    assert all(history[e].lrs[0] == min(r.lrs[0] for r in history[s : e + 1]) for s, e in zip(starts, ends, strict=True))
    assert [r.epoch for r in history if r.cycle_end] == list(ends)


@settings(max_examples=300, deadline=None)
@given(schedules(MAX_EPOCHS))
@example((1000, 1, 1, "unfrozen", 1))
@example((9, 1, 2, "unfrozen", 1))
def test_schedule_restarts_at_each_cycle_start_and_ends_near_0(schedule):
    # Pure: the schedule function over every accepted schedule size, up to MAX_EPOCHS.
    n_cycles, cycle_len, cycle_mult, _, _ = schedule
    total = sgdr_epochs(n_cycles, cycle_len, cycle_mult)
    lr = sgdr_schedule(n_cycles, cycle_len, cycle_mult, LR)
    start = 0
    for length in cycle_lengths(n_cycles, cycle_len, cycle_mult):
        end = start + length
        assert lr(start / total) == pytest.approx(LR)       # fastai's pct at an epoch start
        assert lr((end - 1e-4) / total) < 1e-6 * LR          # the cycle's last moment
        start = end


def test_cycle_end_epochs_on_one_counter_across_phases():
    base = dict(lr=LR, batch_size=8, image_size=16, n_cycles=3, cycle_len=1, cycle_mult=2)
    assert TrainConfig(freeze="unfrozen", **base).cycle_end_epochs() == (0, 2, 6)
    # 2 frozen epochs (one cosine cycle), then cycles of 1, 2, 4 epochs
    assert TrainConfig(freeze="frozen_then_unfrozen", head_epochs=2, **base).cycle_end_epochs() == (1, 2, 4, 8)
    assert TrainConfig(freeze="frozen", **{**base, "cycle_mult": 1, "cycle_len": 2}).cycle_end_epochs() == (1, 3, 5)


def test_a_resumed_run_keeps_its_cycle_end_flags(tiny_dataset, tmp_path):
    class Crash(Exception):
        pass

    def crash_at_3(record):
        if record.epoch == 3:
            raise Crash()

    config = TrainConfig(lr=LR, batch_size=64, image_size=16, freeze="frozen_then_unfrozen", head_epochs=2,
                         n_cycles=2, cycle_len=1, cycle_mult=2)
    with pytest.raises(Crash):
        train(tiny_dataset, config, TINY, device="cpu", on_epoch=crash_at_3, checkpoint_dir=tmp_path)
    seen = []
    result = train(tiny_dataset, config, TINY, device="cpu", on_epoch=seen.append, checkpoint_dir=tmp_path)
    # ends at 1 (warm-up), 2 and 4; the rerun trains epoch 4 only, the checkpoint brings 0-3
    assert [(r.epoch, r.cycle_end) for r in seen] == [(4, True)]
    assert [r.cycle_end for r in result.history] == [False, True, True, False, True]
