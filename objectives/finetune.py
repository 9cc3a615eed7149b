"""An Optuna trial -> one fine-tuning run, reported epoch by epoch.

Parameter names are the study file's [space] keys, so a trial's params are exactly a
training config. The run reports on its single epoch counter, as objectives.judging says (by default only
at SGDR cycle ends, and the trial's best cycle-end loss so far), and the pruner's verdict
is raised as TrialPruned from inside the run (the core carries it out of fastai and
re-raises it here), so Optuna records PRUNED.
"""
from __future__ import annotations

import optuna
import torch

from objectives.judging import report_epoch
from objectives.lr_finder import StudyFinder
from objectives.space import FinderLR, suggest
from swipr_core.data import Dataset
from swipr_core.model import ModelSpec
from swipr_core.training import EpochRecord, TrainConfig, TrainResult, train

def config_from_trial(trial: optuna.Trial, space: dict, head_epochs: int, seed: int,
                      finder: StudyFinder | None = None) -> TrainConfig:
    values = {name: suggest(trial, name, spec) for name, spec in space.items()}
    if isinstance(space["lr"], FinderLR):   # values["lr"] is its factor so far
        if finder is None:
            raise ValueError("[space] lr comes from the range test: config_from_trial needs the study's finder")
        values["lr"] = finder.lr(trial, space["lr"], values)
    return TrainConfig(**values, head_epochs=head_epochs, seed=seed)


def trial_seed(study_seed: int, trial_number: int) -> int:
    return study_seed * 100_003 + trial_number


class FinetuneObjective:
    """Callable objective: fine-tune with the trial's params, return final validation loss."""

    def __init__(self, dataset: Dataset, space: dict, model_spec: ModelSpec, *, head_epochs: int = 1,
                 seed: int = 0, device: str = "auto", precision: str = "auto", checkpoint_dir_for=None,
                 on_result=None, hooks=(), seed_number_for=None, compile: str = "auto",
                 prune_at: str = "cycle_end"):
        self.dataset = dataset
        self.space = space
        self.model_spec = model_spec
        self.head_epochs = head_epochs
        self.seed = seed
        self.device = device
        self.precision = precision
        self.compile = compile
        self.prune_at = prune_at   # objectives.judging.PRUNE_AT
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

    def __call__(self, trial: optuna.Trial) -> float:
        config = config_from_trial(trial, self.space, self.head_epochs, trial_seed(self.seed, self.seed_number_for(trial)),
                                   self.finder)
        trial.set_user_attr("seed", config.seed)
        trial.set_user_attr("planned_epochs", config.epochs)
        trial.set_user_attr("prune_at", self.prune_at)
        trial.set_user_attr("data_fingerprint", self.dataset.fingerprint)
        # CPU results depend on the thread count (reduction order): `swipr fit` replays with it.
        trial.set_user_attr("cpu_threads", torch.get_num_threads())
        self._call("on_start", trial, config)
        seen: list[EpochRecord] = []   # what a pruned or failed run reached, for on_stop

        def report(record: EpochRecord) -> None:
            seen.append(record)
            self._call("on_epoch", trial, record)
            trial.set_user_attr("epochs", record.epoch + 1)
            report_epoch(trial, record.epoch, record.valid_loss, record.cycle_end, self.prune_at,
                         planned=config.epochs)

        try:
            result: TrainResult = train(self.dataset, config, self.model_spec, device=self.device,
                                        precision=self.precision, on_epoch=report,
                                        checkpoint_dir=self.checkpoint_dir_for(trial), compile=self.compile)
        except Exception as error:
            # Still RUNNING here, so hooks may write to the trial; then Optuna records
            # PRUNED or FAIL from the same exception. What the cut run cost is kept too.
            trial.set_user_attr("train_seconds", sum(record.seconds for record in seen))
            self._call("on_stop", trial, seen, error)
            raise
        for key, value in result.metrics.items():
            if key != "val_loss":
                trial.set_user_attr(key, value)
        if self.on_result is not None:
            self.on_result(trial, result)
        self._call("on_result", trial, result)
        return result.metrics["val_loss"]
