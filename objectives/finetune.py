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

from objectives.judging import BEST_EPOCH_ATTR, BEST_N_CYCLES_ATTR, ScheduleCut, best_finished, report_epoch
from objectives.lr_finder import LR_ATTR, StudyFinder
from objectives.space import DEFAULT_N_CYCLES_MODE, MODE_ATTR, FinderLR, cycle_budget, drawn, suggest
from swipr_core.data import Dataset
from swipr_core.errors import SwiprError
from swipr_core.model import ModelSpec
from swipr_core.training import EpochRecord, TrainConfig, TrainResult, sgdr_epochs, train

# user attrs of a trial whose n_cycles is its budget
BUDGET_ATTR = "n_cycles_budget"       # the cycles it planned
FINISH_AT_ATTR = "finish_at"          # the cycle counts that are finished schedules on the way


def config_from_trial(trial: optuna.Trial, space: dict, head_epochs: int, seed: int,
                      finder: StudyFinder | None = None, n_cycles_mode: str = DEFAULT_N_CYCLES_MODE) -> TrainConfig:
    values = {name: suggest(trial, name, spec) for name, spec in drawn(space, n_cycles_mode).items()}
    if isinstance(space["lr"], FinderLR):   # values["lr"] is its factor so far
        if finder is None:
            raise ValueError("[space] lr comes from the range test: config_from_trial needs the study's finder")
        values["lr"] = finder.lr(trial, space["lr"], values)
    budget = cycle_budget(space, n_cycles_mode)
    if budget is not None:
        values.update(n_cycles=budget[-1], finish_at=budget)
    return TrainConfig(**values, head_epochs=head_epochs, seed=seed)


def replay_config(trial: optuna.trial.FrozenTrial, space_keys, head_epochs: int) -> TrainConfig:
    """The run `swipr fit` replays for a finished trial: its params, its seed, the head epochs
    it ran with, and exactly the cycles of its best finished schedule (`best_n_cycles`)."""
    attrs = trial.user_attrs
    nested = "n_cycles" not in trial.params and BUDGET_ATTR in attrs
    missing = [key for key in space_keys if key not in trial.params and not (key == "n_cycles" and nested)
               and not (key == "lr" and LR_ATTR in attrs)]
    if missing or "seed" not in attrs:
        what = f"params {', '.join(missing)}" if missing else "user attr 'seed'"
        raise SwiprError(f"trial {trial.number}: has no {what}; it wasn't run by `swipr study run`, can't replay it")
    params = {key: trial.params[key] for key in space_keys if key in trial.params}
    if LR_ATTR in attrs:   # the lr came from the [space] lr finder (objectives.lr_finder)
        params["lr"] = attrs[LR_ATTR]
    if nested:
        params.update(n_cycles=int(attrs[BUDGET_ATTR]), finish_at=tuple(attrs.get(FINISH_AT_ATTR, ())))
    planned = attrs.get("planned_epochs")
    if params["freeze"] == "frozen_then_unfrozen" and isinstance(planned, int):
        # The study file's head_epochs may have changed since; the trial's plan says what it ran.
        head_epochs = planned - sgdr_epochs(params["n_cycles"], params["cycle_len"], params["cycle_mult"])
    config = TrainConfig(**params, head_epochs=head_epochs, seed=int(attrs["seed"]))
    if nested:
        config = config.finished_run(int(attrs.get(BEST_N_CYCLES_ATTR, config.n_cycles)))
        ran = attrs.get("epochs", planned)
        if (ran is not None and ran < config.epochs) or attrs.get(BEST_EPOCH_ATTR, config.epochs - 1) != config.epochs - 1:
            raise SwiprError(f"trial {trial.number}: its best {config.n_cycles}-cycle schedule should end after "
                             f"epoch {config.epochs - 1}, but the trial says {attrs.get(BEST_EPOCH_ATTR)} "
                             f"({ran} epochs run); can't replay it")
        return config
    ran = attrs.get("epochs", planned)
    if ran is not None and ran != config.epochs:
        raise SwiprError(f"trial {trial.number}: ran {ran} epochs but its params plan {config.epochs}; can't replay it")
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
        if config.finish_at:
            trial.set_user_attr(BUDGET_ATTR, config.n_cycles)
            trial.set_user_attr(FINISH_AT_ATTR, list(config.finish_at))
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
