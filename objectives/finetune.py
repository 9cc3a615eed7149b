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

import optuna
import torch

from objectives.judging import (BEST_EPOCH_ATTR, BEST_N_CYCLES_ATTR, BEST_STAGE_ATTR, STAGE2_FIRST_EPOCH_ATTR,
                               ScheduleCut, best_finished, report_epoch)
from objectives.lr_finder import LR_ATTR, StudyFinder
from objectives.space import (DEFAULT_N_CYCLES_MODE, MODE_ATTR, SPACE_KEYS, STAGE2, FinderLR, cycle_budget, draw_all,
                               has_stage2, stage2_name)
from swipr_core.data import Dataset
from swipr_core.errors import FieldError, SwiprError
from swipr_core.model import ModelSpec
from swipr_core.schedule import StageConfig
from swipr_core.training import EpochRecord, TrainConfig, TrainResult, sgdr_epochs, train

# user attrs of a trial whose n_cycles is its budget
BUDGET_ATTR = "n_cycles_budget"       # the cycles it planned
FINISH_AT_ATTR = "finish_at"          # the cycle counts that are finished schedules on the way


def config_from_trial(trial: optuna.Trial, space: dict, head_epochs: int, seed: int,
                      finder: StudyFinder | None = None, n_cycles_mode: str = DEFAULT_N_CYCLES_MODE) -> TrainConfig:
    values = draw_all(trial, space, n_cycles_mode)
    if isinstance(space["lr"], FinderLR):   # values["lr"] is its factor so far
        if finder is None:
            raise ValueError("[space] lr comes from the range test: config_from_trial needs the study's finder")
        values["lr"] = finder.lr(trial, space["lr"], values)
    first = {key: value for key, value in values.items() if not key.startswith(STAGE2)}
    budget = cycle_budget(space, n_cycles_mode)
    if not has_stage2(space):
        if budget is not None:
            first.update(n_cycles=budget[-1], finish_at=budget)
        return TrainConfig(**first, head_epochs=head_epochs, seed=seed)
    second = {key: values.get(stage2_name(key), first[key]) for key in SPACE_KEYS}
    if budget is not None:   # stage 2's n_cycles is the budget; 0 = stage 1's end is finished too
        second["n_cycles"] = budget[-1]
    elif second["n_cycles"] == 0:   # n_cycles sampled, and this trial skips stage 2
        return TrainConfig(**first, head_epochs=head_epochs, seed=seed)
    return TrainConfig(**first, head_epochs=head_epochs, seed=seed, finish_at=budget or (),
                       stage2=StageConfig(**second))


def _replay_params(trial: optuna.trial.FrozenTrial, space_keys) -> tuple[dict, dict | None, bool]:
    """(stage 1's params, stage 2's or None, nested) as the trial ran them; SwiprError where it
    lacks what a replay needs."""
    attrs = trial.user_attrs
    nested = BUDGET_ATTR in attrs and (STAGE2_FIRST_EPOCH_ATTR in attrs or "n_cycles" not in trial.params)
    two_stage = STAGE2_FIRST_EPOCH_ATTR in attrs
    missing = [key for key in space_keys if key not in trial.params
               and not (key == "n_cycles" and nested and not two_stage) and not (key == "lr" and LR_ATTR in attrs)]
    if missing or "seed" not in attrs:
        what = f"params {', '.join(missing)}" if missing else "user attr 'seed'"
        raise SwiprError(f"trial {trial.number}: has no {what}; it wasn't run by `swipr study run`, can't replay it")
    first = {key: trial.params[key] for key in space_keys if key in trial.params}
    if LR_ATTR in attrs:   # the lr came from the [space] lr finder (objectives.lr_finder)
        first["lr"] = attrs[LR_ATTR]
    second = None
    if two_stage:   # keys stage 2 left out kept stage 1's values
        second = {key: trial.params.get(stage2_name(key), first[key]) for key in space_keys}
    if nested:
        cycles = {"n_cycles": int(attrs[BUDGET_ATTR]), "finish_at": tuple(attrs.get(FINISH_AT_ATTR, ()))}
        if second is None:
            first.update(cycles)
        else:
            second["n_cycles"] = cycles["n_cycles"]
            first["finish_at"] = cycles["finish_at"]
    return first, second, nested


def _head_epochs(first: dict, second: dict | None, planned, head_epochs: int) -> int:
    """The head epochs the trial ran with: the study file's head_epochs may have changed since,
    the trial's plan says what it ran (each frozen_then_unfrozen stage has one warm-up)."""
    stages = [first] + ([second] if second is not None else [])
    warm_ups = sum(stage["freeze"] == "frozen_then_unfrozen" for stage in stages)
    if not warm_ups or not isinstance(planned, int):
        return head_epochs
    sgdr = sum(sgdr_epochs(stage["n_cycles"], stage["cycle_len"], stage["cycle_mult"]) for stage in stages)
    return (planned - sgdr) // warm_ups


def replay_config(trial: optuna.trial.FrozenTrial, space_keys, head_epochs: int) -> TrainConfig:
    """The run `swipr fit` replays for a finished trial: its params (both stages'), its seed, the
    head epochs it ran with, and exactly its best finished schedule (`best_cycle_end_epoch`:
    with two stages, possibly stage 1's end, the run with stage 2 skipped)."""
    attrs = trial.user_attrs
    first, second, nested = _replay_params(trial, space_keys)
    planned = attrs.get("planned_epochs")
    head_epochs = _head_epochs(first, second, planned, head_epochs)
    try:
        config = TrainConfig(**first, head_epochs=head_epochs, seed=int(attrs["seed"]),
                             stage2=StageConfig(**second) if second is not None else None)
    except (FieldError, TypeError, ValueError) as error:
        raise SwiprError(f"trial {trial.number}: its params make no run ({error}); can't replay it") from None
    ran = attrs.get("epochs", planned)
    if not nested:
        if ran is not None and ran != config.epochs:
            raise SwiprError(f"trial {trial.number}: ran {ran} epochs but its params plan {config.epochs}; "
                             f"can't replay it")
        return config
    best_epoch = attrs.get(BEST_EPOCH_ATTR, config.epochs - 1)
    try:
        if second is None:
            config = config.finished_run(int(attrs.get(BEST_N_CYCLES_ATTR, config.n_cycles)))
        else:
            config = config.finished_run_at(int(best_epoch))
    except FieldError as error:
        raise SwiprError(f"trial {trial.number}: its best schedule is not one its params plan ({error}); "
                         f"can't replay it") from None
    stage = 2 if config.stage2 is not None else 1
    if (ran is not None and ran < config.epochs) or best_epoch != config.epochs - 1 \
            or attrs.get(BEST_STAGE_ATTR, stage) != stage:
        raise SwiprError(f"trial {trial.number}: its best {attrs.get(BEST_N_CYCLES_ATTR)}-cycle schedule should end "
                         f"after epoch {config.epochs - 1} (stage {stage}), but the trial says {best_epoch} (stage "
                         f"{attrs.get(BEST_STAGE_ATTR, stage)}, {ran} epochs run); can't replay it")
    return config


def trial_seed(study_seed: int, trial_number: int) -> int:
    return study_seed * 100_003 + trial_number


class FinetuneObjective:
    """Callable objective: fine-tune with the trial's params, return its best finished schedule's loss."""

    def __init__(self, dataset: Dataset, space: dict, model_spec: ModelSpec, *, head_epochs: int = 1,
                 seed: int = 0, device: str = "auto", precision: str = "auto", checkpoint_dir_for=None,
                 on_result=None, hooks=(), seed_number_for=None, compile: str = "auto",
                 prune_at: str = "cycle_end", n_cycles_mode: str = DEFAULT_N_CYCLES_MODE):
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
        # trial -> folder for its per-epoch checkpoints (or None): how a retried trial resumes
        self.checkpoint_dir_for = checkpoint_dir_for or (lambda trial: None)
        # trial -> the number its seed comes from: a retry must shuffle as the trial it
        # resumes did, so the retry layer hands back the original trial's number.
        self.seed_number_for = seed_number_for or (lambda trial: trial.number)
        # (trial, TrainResult) -> None: artifacts, notes, anything after a finished run
        self.on_result = on_result
        # Objects with any of on_start(trial, config), on_epoch(trial, record),
        # on_result(trial, result), on_stop(trial, history, error): progress bars, pictures.
        self.hooks = list(hooks)
        # [space] lr = { finder = ... }: the range tests, kept on the study (objectives.lr_finder)
        self.finder = StudyFinder(dataset, model_spec, device=device, precision=precision, compile=compile,
                                  seed=seed) if isinstance(space.get("lr"), FinderLR) else None

    def _call(self, event: str, *args) -> None:
        for hook in self.hooks:
            method = getattr(hook, event, None)
            if method is not None:
                method(*args)

    def _start(self, trial: optuna.Trial) -> TrainConfig:
        config = config_from_trial(trial, self.space, self.head_epochs,
                                   trial_seed(self.seed, self.seed_number_for(trial)), self.finder, self.n_cycles_mode)
        trial.set_user_attr("seed", config.seed)
        trial.set_user_attr("planned_epochs", config.epochs)
        trial.set_user_attr("prune_at", self.prune_at)
        trial.set_user_attr(MODE_ATTR, self.n_cycles_mode)
        if config.finish_at:   # the budget is the last stage's n_cycles
            trial.set_user_attr(BUDGET_ATTR, (config.stage2 or config).n_cycles)
            trial.set_user_attr(FINISH_AT_ATTR, list(config.finish_at))
        stage2_at = next((phase.first_epoch for phase in config.schedule().phases if phase.stage == 2), None)
        if stage2_at is not None:
            trial.set_user_attr(STAGE2_FIRST_EPOCH_ATTR, stage2_at)
        trial.set_user_attr("data_fingerprint", self.dataset.fingerprint)
        # CPU results depend on the thread count (reduction order): `swipr fit` replays with it.
        trial.set_user_attr("cpu_threads", torch.get_num_threads())
        self._call("on_start", trial, config)
        return config

    def __call__(self, trial: optuna.Trial) -> float:
        config = self._start(trial)
        seen: list[EpochRecord] = []   # what a pruned or failed run reached, for on_stop

        def report(record: EpochRecord) -> None:
            seen.append(record)
            self._call("on_epoch", trial, record)
            trial.set_user_attr("epochs", record.epoch + 1)
            report_epoch(trial, record.epoch, record.valid_loss, record.cycle_end, self.prune_at,
                         planned=config.epochs, finishes=record.finishes)

        try:
            result: TrainResult = train(self.dataset, config, self.model_spec, device=self.device,
                                        precision=self.precision, on_epoch=report,
                                        checkpoint_dir=self.checkpoint_dir_for(trial), compile=self.compile)
        except Exception as error:
            # Still RUNNING here, so hooks may write to the trial; then Optuna records
            # PRUNED or FAIL from the same exception. What the cut run cost is kept too.
            trial.set_user_attr("train_seconds", sum(record.seconds for record in seen))
            self._call("on_stop", trial, seen, error)
            if isinstance(error, ScheduleCut):   # it earned the cycles it finished: COMPLETE
                self._best_accuracy(trial, seen)
                return error.value
            raise
        for key, value in result.metrics.items():
            if key != "val_loss":
                trial.set_user_attr(key, value)
        self._best_accuracy(trial, result.history)
        if self.on_result is not None:
            self.on_result(trial, result)
        self._call("on_result", trial, result)
        best = best_finished([r.valid_loss for r in result.history], [r.finishes for r in result.history])
        return best[2] if best is not None else result.metrics["val_loss"]

    def _best_accuracy(self, trial: optuna.Trial, history: list[EpochRecord]) -> None:
        """val_accuracy: the best finished schedule's, which the trial's value is the loss of."""
        epoch = trial.user_attrs.get(BEST_EPOCH_ATTR)
        record = next((r for r in history if r.epoch == epoch), None)
        if record is not None:
            trial.set_user_attr("val_accuracy", record.accuracy)
