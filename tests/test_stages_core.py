"""Two-stage runs: stage 2 continues from stage 1's weights on the run's one epoch
counter, at its own image size, batch size, freeze, lr and SGDR cycles. The plan's arithmetic,
and runs that train stage 2 at its size, keep a frozen body, resume bit for bit in stage 2, and
nest exactly (a k-cycle stage 2, or none, is a prefix of the longer run)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import swipr_core.train.run as training
from swipr_core.errors import FieldError, SwiprError
from swipr_core.train.model import ModelSpec, body_and_head
from swipr_core.train.schedule import MAX_EPOCHS, StageConfig, TrainConfig, check_epochs
from tests.studykit import prepared_demo

TINY = ModelSpec(arch="test_resnet", pretrained=False)


def stage2(**overrides) -> StageConfig:
    values = dict(lr=1e-2, batch_size=16, image_size=40, freeze="frozen", n_cycles=2, cycle_len=1, cycle_mult=1)
    return StageConfig(**{**values, **overrides})


def config(**overrides) -> TrainConfig:
    values = dict(lr=1e-2, batch_size=32, image_size=24, freeze="unfrozen", n_cycles=2, cycle_len=1, cycle_mult=1,
                  stage2=stage2())
    return TrainConfig(**{**values, **overrides})


def notebook(**overrides) -> TrainConfig:
    """The notebook's pipeline: 224 px unfrozen 3 cycles (1, 2, 4 epochs), then 229 px frozen, the same cycles."""
    values = dict(lr=1e-4, batch_size=16, image_size=224, n_cycles=3, cycle_mult=2,
                  stage2=stage2(lr=1e-3, image_size=229, n_cycles=3, cycle_mult=2))
    return config(**{**values, **overrides})


# --- the plan -----------------------------------------------------------------------------------

def test_stage_2_continues_the_one_epoch_counter_at_its_own_size():
    plan = notebook().schedule()
    assert [(p.stage, p.name, p.first_epoch, p.epochs, p.image_size, p.batch_size, p.lr) for p in plan.phases] == [
        (1, "unfrozen", 0, 7, 224, 16, 1e-4), (2, "frozen", 7, 7, 229, 16, 1e-3)]
    # Each stage counts its own cycles; only the run's last epoch is finished without finish_at.
    assert [(e.epoch, e.stage, e.cycle, e.finished) for e in plan.ends] == [
        (0, 1, 1, False), (2, 1, 2, False), (6, 1, 3, False), (7, 2, 1, False), (9, 2, 2, False), (13, 2, 3, True)]
    # The callers of the one-stage API see both stages.
    cfg = notebook()
    assert cfg.epochs == 14 and cfg.cycle_end_epochs() == (0, 2, 6, 7, 9, 13)
    assert cfg.phases() == [("unfrozen", 7), ("frozen", 7)]
    assert cfg.sgdr_phases() == [("unfrozen", 3, 1, 2), ("frozen", 3, 1, 2)]
    assert cfg.final_image_size == 229 and replace(cfg, stage2=None).final_image_size == 224


def test_a_frozen_then_unfrozen_stage_2_has_its_own_warm_up():
    plan = config(head_epochs=2, stage2=stage2(freeze="frozen_then_unfrozen")).schedule()
    assert [(p.stage, p.name, p.first_epoch, p.epochs, p.warm_up, p.discriminative) for p in plan.phases] == [
        (1, "unfrozen", 0, 2, False, False), (2, "frozen", 2, 2, True, False), (2, "unfrozen", 4, 2, False, True)]
    assert [(e.epoch, e.stage, e.cycle) for e in plan.ends] == [(0, 1, 1), (1, 1, 2), (3, 2, 0), (4, 2, 1), (5, 2, 2)]


def test_finish_at_counts_the_last_stages_cycles_and_0_is_stage_1s_end():
    finished = notebook(finish_at=(0, 2)).schedule().finished()
    assert [(e.epoch, e.stage, e.cycle) for e in finished] == [(6, 1, 3), (9, 2, 2), (13, 2, 3)]
    # Without a stage 2, finish_at counts stage 1's cycles.
    one = replace(notebook(), stage2=None, finish_at=(1, 2)).schedule().finished()
    assert [(e.epoch, e.cycle) for e in one] == [(0, 1), (2, 2), (6, 3)]


@pytest.mark.parametrize("overrides, field, problem", [
    ({"stage2": None, "finish_at": (0,)}, "finish_at", "must be 1 or more, got 0"),   # no stage 1 end to mark
    ({"finish_at": (4,)}, "finish_at", "values must be at most stage2's n_cycles (3), got 4"),
    ({"finish_at": (False,)}, "finish_at", "must be a whole number, got False"),
])
def test_bad_finish_at_values_are_refused_naming_the_key(overrides, field, problem):
    with pytest.raises(FieldError) as error:
        notebook(**overrides)
    assert (error.value.field, error.value.problem) == (field, problem)


@pytest.mark.parametrize("overrides, field", [
    ({"lr": 0.0}, "stage2_lr"), ({"batch_size": 1}, "stage2_batch_size"), ({"image_size": 0}, "stage2_image_size"),
    ({"freeze": "thawed"}, "stage2_freeze"), ({"n_cycles": 0}, "stage2_n_cycles"),
    ({"cycle_len": 1.5}, "stage2_cycle_len"), ({"cycle_mult": True}, "stage2_cycle_mult"),
])
def test_a_bad_stage_2_value_names_its_param(overrides, field):
    with pytest.raises(FieldError) as error:
        stage2(**overrides)
    assert error.value.field == field and "\n" not in str(error.value)


def test_max_epochs_bounds_both_stages_together():
    assert check_epochs(3, 1, 2, before=7) == 7   # a stage's own epochs
    config(n_cycles=600, stage2=stage2(n_cycles=MAX_EPOCHS - 600))   # exactly the cap: accepted
    with pytest.raises(SwiprError, match=f"stage 2's n_cycles=401, cycle_len=1, cycle_mult=1 ask for 401 epochs "
                                         f"after stage 1's 600; a run may have at most {MAX_EPOCHS}"):
        config(n_cycles=600, stage2=stage2(n_cycles=401))
    with pytest.raises(SwiprError, match="stage 2's head_epochs=1, n_cycles=1, .* after stage 1's 1000"):
        config(n_cycles=MAX_EPOCHS, stage2=stage2(n_cycles=1, freeze="frozen_then_unfrozen"))


def test_finished_run_at_each_kind_of_finished_end():
    budget = notebook(finish_at=(0, 1, 2))
    # In stage 2: stage 2 of k cycles; stage 1's end: stage 2 skipped; the run's end: the run itself.
    assert budget.finished_run_at(9) == notebook(stage2=stage2(lr=1e-3, image_size=229, n_cycles=2, cycle_mult=2))
    assert budget.finished_run_at(6) == replace(notebook(), stage2=None)
    assert budget.finished_run_at(13) == notebook()
    # One stage: n_cycles = k, as finished_run(k) (which stays, counting the last stage's cycles).
    one = replace(notebook(), stage2=None, finish_at=(1,))
    assert one.finished_run_at(0) == replace(one, n_cycles=1, finish_at=()) == one.finished_run(1)
    assert budget.finished_run(0) == budget.finished_run_at(6) and budget.finished_run(2) == budget.finished_run_at(9)
    for epoch in (2, 8, 14, -1):   # a cycle end not finished, not a cycle end, past the run
        with pytest.raises(FieldError) as error:
            budget.finished_run_at(epoch)
        assert error.value.field == "epoch" and "those end at epochs [6, 7, 9, 13]" in error.value.problem


# --- runs ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return prepared_demo(tmp_path_factory.mktemp("data"))   # cached at 40 px


class Watched:
    """A run whose model reports the shape of every batch it sees, and its weights at an epoch."""

    def __init__(self, snapshot_at: int | None = None):
        self.seen: list[tuple[int, bool, tuple]] = []   # (epoch being trained, training?, input shape)
        self.epoch, self.snapshot_at = 0, snapshot_at
        self.model: torch.nn.Module | None = None
        self.snapshot: dict[str, torch.Tensor] = {}

    def create_model(self, real):
        def create(spec):
            self.model = real(spec)
            self.model.register_forward_pre_hook(
                lambda module, args: self.seen.append((self.epoch, module.training, tuple(args[0].shape))))
            return self.model
        return create

    def on_epoch(self, record):
        self.epoch = record.epoch + 1
        if record.epoch == self.snapshot_at:
            self.snapshot = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def train(self, dataset, cfg, **kwargs):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(training, "create_model", self.create_model(training.create_model))
            return training.train(dataset, cfg, TINY, device="cpu", on_epoch=self.on_epoch, **kwargs)


@pytest.fixture(scope="module")
def two_stage(dataset):
    """Stage 1 at 24 px, batches of 32, unfrozen, 2 epochs; then stage 2 at 40 px, batches of 16, frozen, 2 epochs."""
    watched = Watched(snapshot_at=1)
    return watched, watched.train(dataset, config(finish_at=(0, 1)))


def outcome(history) -> list[tuple]:
    """Every number an epoch reports, but which finished schedule ends there (a run's own end)."""
    return [(r.epoch, r.stage, r.phase, r.lrs, r.train_loss, r.valid_loss, r.accuracy, r.cycle_end, r.images)
            for r in history]


def test_stage_2_trains_at_its_own_size_on_the_one_counter(two_stage, dataset):
    watched, result = two_stage
    history = result.history
    assert [(r.epoch, r.stage, r.phase, r.cycle_end, r.finishes) for r in history] == [
        (0, 1, "unfrozen", True, 0), (1, 1, "unfrozen", True, 2), (2, 2, "frozen", True, 1), (3, 2, "frozen", True, 2)]
    n_train = len(dataset.split.indices(False))
    assert [r.images for r in history] == [n_train] * 4
    # What the model saw while training: stage 1's loaders, then stage 2's.
    trained = {(epoch, shape) for epoch, training_, shape in watched.seen if training_}
    assert {(epoch, shape[2:]) for epoch, shape in trained} == {(0, (24, 24)), (1, (24, 24)), (2, (40, 40)),
                                                               (3, (40, 40))}
    assert {epoch: max(s[0] for e, s in trained if e == epoch) for epoch in range(4)} == {0: 32, 1: 32, 2: 16, 3: 16}
    # No pass after the run: its valid_probs are those stage 2's last validation kept, at its size.
    assert not [shape for epoch, training_, shape in watched.seen if epoch == 4]
    assert {shape[2:] for epoch, training_, shape in watched.seen if epoch == 3 and not training_} == {(40, 40)}
    assert list(result.valid_probs) == history[-1].valid_probs
    assert len(result.valid_probs) == len(dataset.split.indices(True))


def test_a_frozen_stage_2_leaves_the_body_unchanged(two_stage):
    watched, result = two_stage
    model = result.model
    batchnorm = {id(p) for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
                 for p in m.parameters()}
    names = {id(p): name for name, p in model.named_parameters()}
    body, head = body_and_head(model)
    after = model.state_dict()
    stage_1_end = watched.snapshot
    kept = [names[id(p)] for p in body if id(p) not in batchnorm]
    assert kept and all(torch.equal(after[name], stage_1_end[name]) for name in kept)
    # ... while the head trained in stage 2 (fastai trains BatchNorm layers of a frozen body too).
    assert any(not torch.equal(after[names[id(p)]], stage_1_end[names[id(p)]]) for p in head)


@pytest.fixture(scope="module")
def one_stage(dataset):
    """Stage 1 of `two_stage` alone: one fit of 2 epochs."""
    return training.train(dataset, config(stage2=None), TINY, device="cpu")


@pytest.mark.parametrize("stages, killed_after", [
    (2, 1),   # at stage 1's end: stage 2 starts on new loaders
    (2, 2),   # in the middle of stage 2's fit: its optimizer state and smoothed loss go on
    (1, 0),   # in the middle of a one-stage run's fit, likewise
])
def test_a_killed_run_resumes_bit_for_bit(two_stage, one_stage, dataset, tmp_path, stages, killed_after):
    class Killed(Exception):
        pass

    def kill(record):
        if record.epoch == killed_after:
            raise Killed()

    cfg = config(finish_at=(0, 1)) if stages == 2 else config(stage2=None)
    whole = two_stage[1] if stages == 2 else one_stage
    with pytest.raises(Killed):
        training.train(dataset, cfg, TINY, device="cpu", on_epoch=kill, checkpoint_dir=tmp_path)
    seen = []
    resumed = training.train(dataset, cfg, TINY, device="cpu", on_epoch=seen.append, checkpoint_dir=tmp_path)
    assert [r.epoch for r in seen] == list(range(killed_after + 1, cfg.epochs))
    assert outcome(resumed.history) == outcome(whole.history)
    assert [r.finishes for r in resumed.history] == [r.finishes for r in whole.history]
    assert (resumed.valid_probs == whole.valid_probs).all()
    # Started again on the finished run's checkpoint: nothing to train, the same predictions
    # (on the last stage's loaders).
    again = training.train(dataset, cfg, TINY, device="cpu", on_epoch=seen.append, checkpoint_dir=tmp_path)
    assert len(seen) == cfg.epochs - killed_after - 1 and (again.valid_probs == whole.valid_probs).all()


def test_the_k_cycle_prefix_of_stage_2_is_the_run_with_k_cycles(two_stage, dataset):
    _, long = two_stage
    short = training.train(dataset, config(finish_at=(0, 1)).finished_run_at(2), TINY, device="cpu")
    assert short.history[-1].finishes == 1 and len(short.history) == 3
    assert outcome(short.history) == outcome(long.history[:3])


def test_stage_2_skipped_is_the_one_stage_run(two_stage, one_stage):
    _, long = two_stage
    assert config(finish_at=(0, 1)).finished_run_at(1) == config(stage2=None)   # what one_stage ran
    one = one_stage
    assert outcome(one.history) == outcome(long.history[:2])
    assert long.history[1].finishes == 2 and long.history[1].stage == 1   # marked finished in the long run too
    assert one.history[-1].finishes == 2 and one.history[-1].stage == 1
