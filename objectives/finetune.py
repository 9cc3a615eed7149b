"""An Optuna trial -> one fine-tuning run, reported epoch by epoch.

Parameter names are the study file's [space] keys, so a trial's params are exactly a
training config (less n_cycles where it is the trial's budget: objectives.space.cycle_budget).
The run reports on its single epoch counter, as objectives.judging says (by default only
at SGDR cycle ends, and the trial's best cycle-end loss so far), and the pruner's verdict
is raised as TrialPruned from inside the run (the core carries it out of fastai and
re-raises it here), so Optuna records PRUNED. A trial's value is its best finished schedule;
one the pruner stops after a finished schedule ends COMPLETE with it (judging.ScheduleCut).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import optuna
import torch

from objectives.judging import STAGE2_FIRST_EPOCH_ATTR, ScheduleCut, best_finished, report_epoch
from objectives.lr_finder import StudyFinder
from objectives.lr_record import FINDER_LR_ATTR, FINDING_ATTR, LR_ATTR
from objectives.pausing import TrialPaused, continuing
from objectives.record import (
    BUDGET_ATTR,
    FINISH_AT_ATTR,
    Plan,
    best_finished_record,
    record_of,
    result_of,
    write_plan,
    write_result,
)
from objectives.space import (
    DEFAULT_N_CYCLES_MODE,
    MODE_ATTR,
    STAGE2,
    FinderLR,
    conditional,
    cycle_budget,
    drawn,
    has_stage2,
    placeholder,
    stage2_name,
    suggest,
)
from objectives.trial_attrs import STUDY_FILE_ATTR, attrs_of, set_attr
from swipr_core.data.dataset import Dataset
from swipr_core.train.checkpoints import load_checkpoint
from swipr_core.train.model import ModelSpec
from swipr_core.train.run import EpochRecord, TrainResult, train, valid_targets
from swipr_core.train.schedule import STAGE_KEYS, StageConfig, TrainConfig



def planned_config(trial: optuna.Trial, space: dict, head_epochs: int, seed: int,
                   finder: StudyFinder | None = None, n_cycles_mode: str = DEFAULT_N_CYCLES_MODE) -> TrainConfig:
    """The trial's run as it starts: stage 1's params drawn; a stage 2 only holds its place
    (objectives.space.placeholder), its params drawn by `draw_stage2` once the run reaches it."""
    values = {name: suggest(trial, name, spec) for name, spec in drawn(space, n_cycles_mode).items()}
    if isinstance(space["lr"], FinderLR):   # values["lr"] is its factor so far
        if finder is None:
            raise ValueError("[space] lr comes from the range test: planned_config needs the study's finder")
        values["lr"] = finder.lr(trial, space["lr"], values)
    first = {key: value for key, value in values.items() if not key.startswith(STAGE2)}
    budget = cycle_budget(space, n_cycles_mode)
    if not has_stage2(space):
        if budget is not None:
            first.update(n_cycles=budget[-1], finish_at=budget)
        return TrainConfig(**first, head_epochs=head_epochs, seed=seed)
    held = {name: placeholder(spec) for name, spec in conditional(space, n_cycles_mode).items()}
    second = {key: values.get(stage2_name(key), held.get(stage2_name(key), first[key])) for key in STAGE_KEYS}
    if budget is not None:   # stage 2's n_cycles is the budget; 0 = stage 1's end is finished too
        second["n_cycles"] = budget[-1]
    elif second["n_cycles"] == 0:   # n_cycles sampled, and this trial skips stage 2
        return TrainConfig(**first, head_epochs=head_epochs, seed=seed)
    return TrainConfig(**first, head_epochs=head_epochs, seed=seed, finish_at=budget or (),
                       stage2=StageConfig(**second))


def draw_stage2(trial: optuna.Trial, space: dict, config: TrainConfig, n_cycles_mode: str) -> StageConfig:
    """Stage 2 of `planned_config`'s run, its params drawn now (a retry's come back as its
    original drew them); keys [space.stage2] leaves out keep stage 1's values."""
    if config.stage2 is None:
        raise ValueError("draw_stage2: the run has no stage 2")
    drawn_now = {name[len(STAGE2):]: suggest(trial, name, spec) for name, spec in conditional(space, n_cycles_mode).items()}
    return replace(config.stage2, **drawn_now)


def config_from_trial(trial: optuna.Trial, space: dict, head_epochs: int, seed: int,
                      finder: StudyFinder | None = None, n_cycles_mode: str = DEFAULT_N_CYCLES_MODE) -> TrainConfig:
    """The trial's whole run with every stage's params drawn now (what a trial that reaches
    stage 2 ends up with): planned_config, then draw_stage2."""
    config = planned_config(trial, space, head_epochs, seed, finder, n_cycles_mode)
    if config.stage2 is None:
        return config
    return replace(config, stage2=draw_stage2(trial, space, config, n_cycles_mode))


def replay_config(trial: optuna.trial.FrozenTrial, head_epochs: int) -> TrainConfig:
    """The run `swipr fit` replays for a finished trial: its plan (objectives.record), ending at
    exactly its best finished schedule. A trial written before the record has its plan rebuilt
    from its params and user attrs (`head_epochs`: the study file's, where it recorded none)."""
    return record_of(trial, head_epochs).replay_config()


def trial_seed(study_seed: int, trial_number: int) -> int:
    return study_seed * 100_003 + trial_number


class FinetuneObjective:
    """Callable objective: fine-tune with the trial's params, return its best finished schedule's loss."""

    def __init__(self, dataset: Dataset, space: dict, model_spec: ModelSpec, *, head_epochs: int = 1,
                 seed: int = 0, device: str = "auto", precision: str = "auto", checkpoint_dir_for=None,
                 on_result=None, hooks=(), seed_number_for=None, compile: str = "auto",
                 prune_at: str = "cycle_end", n_cycles_mode: str = DEFAULT_N_CYCLES_MODE,
                 pause_at_cycle_ends: bool = False):
        self.dataset = dataset
        self.space = space
        self.model_spec = model_spec
        self.head_epochs = head_epochs
        self.seed = seed
        self.device = device
        self.precision = precision
        self.compile = compile
        self.prune_at = prune_at   # objectives.judging.PRUNE_AT
        self.n_cycles_mode = n_cycles_mode   # objectives.space.N_CYCLES_MODES
        # [study] scheduler = "promote": stop at every cycle end short of the plan's (objectives.pausing)
        self.pause_at_cycle_ends = pause_at_cycle_ends
        # trial -> folder for its per-epoch checkpoints (or None): how a retried trial resumes
        self.checkpoint_dir_for = checkpoint_dir_for or (lambda trial: None)
        # trial -> the number its seed comes from: a retry must shuffle as the trial it
        # resumes did, so the retry layer hands back the original trial's number.
        self.seed_number_for = seed_number_for or (lambda trial: trial.number)
        # (trial, TrainResult) -> None: artifacts, notes, anything after a finished run
        self.on_result = on_result
        # Objects with any of on_start(trial, config), on_stage2(trial, config) (as the run reaches
        # stage 2, its params drawn), on_epoch(trial, record), on_result(trial, result),
        # on_stop(trial, history, error), on_range_test(study, finding, record): progress, pictures.
        self.hooks = list(hooks)
        # (trial, StageConfig, epochs so far) -> None, raising to refuse stage 2's shape: the OOM guard's
        self.stage2_guard = None
        self.config: TrainConfig | None = None   # the running trial's, stage 2 included once drawn
        # [space] lr = { finder = ... }: the range tests, kept on the study (objectives.lr_finder)
        self._targets: np.ndarray | None = None   # the validation targets each kept prediction is scored against
        self.finder = StudyFinder(dataset, model_spec, device=device, precision=precision, compile=compile,
                                  seed=seed, head_epochs=head_epochs) if isinstance(space.get("lr"), FinderLR) else None
        if self.finder is not None:   # each range test the search runs, to the hooks that keep them
            self.finder.on_range_test = lambda *args: self._call("on_range_test", *args)

    def _call(self, event: str, *args) -> None:
        for hook in self.hooks:
            method = getattr(hook, event, None)
            if method is not None:
                method(*args)

    def _start(self, trial: optuna.Trial) -> TrainConfig:
        config = planned_config(trial, self.space, self.head_epochs,
                                trial_seed(self.seed, self.seed_number_for(trial)), self.finder, self.n_cycles_mode)
        set_attr(trial, "seed", config.seed)
        set_attr(trial, "planned_epochs", config.epochs)
        set_attr(trial, "prune_at", self.prune_at)
        set_attr(trial, MODE_ATTR, self.n_cycles_mode)
        if config.finish_at:   # the budget is the last stage's n_cycles
            set_attr(trial, BUDGET_ATTR, (config.stage2 or config).n_cycles)
            set_attr(trial, FINISH_AT_ATTR, list(config.finish_at))
        stage2_at = next((phase.first_epoch for phase in config.schedule().phases if phase.stage == 2), None)
        if stage2_at is not None:
            set_attr(trial, STAGE2_FIRST_EPOCH_ATTR, stage2_at)
        set_attr(trial, "data_fingerprint", self.dataset.fingerprint)
        # CPU results depend on the thread count (reduction order): `swipr fit` replays with it.
        set_attr(trial, "cpu_threads", torch.get_num_threads())
        self._call("on_start", trial, config)
        write_plan(trial, self._plan(trial, config, stage2_drawn=config.stage2 is None))
        return config

    def _stage2(self, trial: optuna.Trial, planned: TrainConfig, seen: list[EpochRecord]):
        """What `train` asks for as the run reaches stage 2: its params drawn now (a trial stopped
        at stage 1 never draws them), checked by the OOM guard, and the plan completed."""
        def draw() -> StageConfig:
            stage2 = draw_stage2(trial, self.space, planned, self.n_cycles_mode)
            if self.stage2_guard is not None:
                self.stage2_guard(trial, stage2, seen)
            config = replace(planned, stage2=stage2)
            self.config = config
            set_attr(trial, "planned_epochs", config.epochs)
            write_plan(trial, self._plan(trial, config, stage2_drawn=True))
            self._call("on_stage2", trial, config)
            return stage2
        return draw

    def _plan(self, trial: optuna.Trial, config: TrainConfig, stage2_drawn: bool) -> Plan:
        """The trial's plan record (objectives.record), from its config and what it trains with."""
        attrs = attrs_of(trial)
        finding = attrs.get(FINDING_ATTR)
        if finding is None and LR_ATTR in attrs:   # a finder that names no version
            finding = {"lr": attrs[LR_ATTR], "suggestion": attrs.get(FINDER_LR_ATTR)}
        spec = self.model_spec
        return Plan(config=config, stage2_drawn=stage2_drawn, finding=finding, n_cycles_mode=self.n_cycles_mode,
                    prune_at=self.prune_at,
                    model={"arch": spec.arch, "pretrained": spec.pretrained,
                           "weights": None if spec.weights is None else str(spec.weights)},
                    cache_px=self.dataset.cache.px, data_fingerprint=self.dataset.fingerprint,
                    cpu_threads=torch.get_num_threads(), study_file_sha256=attrs.get(STUDY_FILE_ATTR))

    def _resumed(self, trial: optuna.Trial, folder) -> list[EpochRecord]:
        """The epochs a retry resumes after (its checkpoint's), with the result they hold recorded:
        its best finished schedule may be among them."""
        saved = load_checkpoint(folder)
        history = [EpochRecord(**record) for record in saved["history"]] if saved else []
        best = best_finished_record(history)
        if best is not None:
            self._record_result(trial, history, best)
        return history

    def _record_result(self, trial: optuna.Trial, history: list[EpochRecord], latest: EpochRecord | None) -> None:
        """Where `latest` is the best finished schedule so far, it is the trial's result."""
        if latest is None or not latest.finishes:
            return
        best = best_finished_record(history)
        if best is not None and best.epoch == latest.epoch:
            if self._targets is None:
                self._targets = valid_targets(self.dataset)
            write_result(trial, result_of(latest, self._targets))

    def __call__(self, trial: optuna.Trial) -> float:
        self.config = config = self._start(trial)
        promoted = self.pause_at_cycle_ends and continuing(trial)
        folder = self.checkpoint_dir_for(trial)
        seen: list[EpochRecord] = self._resumed(trial, folder) if folder is not None else []
        # a retry's saved epochs: its original ran (and timed) them; a promoted trial's are its own
        # (but for those its original ran, where it retries one)
        resumed = attrs_of(trial).get("resumed_from_epoch", 0) if promoted else len(seen)

        def report(record: EpochRecord) -> None:
            seen.append(record)
            self._record_result(trial, seen, record)   # before the pruner may stop it: a cut keeps it
            self._call("on_epoch", trial, record)
            set_attr(trial, "epochs", record.epoch + 1)
            planned = (self.config or config).epochs
            report_epoch(trial, record.epoch, record.valid_loss, record.cycle_end, self.prune_at,
                         planned=planned, finishes=record.finishes)
            if self.pause_at_cycle_ends and record.cycle_end and record.epoch + 1 < planned:
                raise TrialPaused(sum(1 for r in seen if r.cycle_end), record.epoch + 1)

        late = self._stage2(trial, config, seen) if config.stage2 is not None else None
        try:
            result: TrainResult = train(self.dataset, config, self.model_spec, device=self.device,
                                        precision=self.precision, on_epoch=report,
                                        checkpoint_dir=folder, compile=self.compile, stage2=late)
        except Exception as error:
            # Still RUNNING here, so hooks may write to the trial; then Optuna records
            # PRUNED or FAIL from the same exception. What the cut run cost is kept too.
            set_attr(trial, "train_seconds", sum(record.seconds for record in seen[resumed:]))
            self._call("on_stop", trial, seen, error)
            if isinstance(error, ScheduleCut):   # it earned the cycles it finished: COMPLETE
                return error.value
            raise
        # the run's own figures; its accuracy and AUC are the result's (objectives.record), not the last epoch's
        for key in ("majority_accuracy", "epochs", "train_seconds", "train_images_per_s"):
            if key in result.metrics:
                set_attr(trial, key, result.metrics[key])
        if self.on_result is not None:
            self.on_result(trial, result)
        self._call("on_result", trial, result)
        best = best_finished([r.valid_loss for r in result.history], [r.finishes for r in result.history])
        return best[2] if best is not None else result.metrics["val_loss"]
