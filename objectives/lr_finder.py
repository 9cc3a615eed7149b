"""The [space] lr finder: `lr = { finder = "valley", factor = ... }` trains a trial at the range
test's suggestion for its freeze, batch size and image size, times its `lr_factor`.

The range test (swipr_core.lr_find, as `swipr lr-find` runs it) is run once per combination, by
the first trial that needs it, and kept on the study (objectives.lr_record); every later trial,
and `swipr lr-find` beforehand, fills the same record. A record of other data (another
fingerprint) is run again. The lr a trial trained with is its user attr `lr`, so `swipr fit`
replays it exactly even if the record is replaced later.
"""
from __future__ import annotations

import optuna

from objectives.lr_record import finding_attr, record_finding
from objectives.space import FinderLR
from swipr_core.data import Dataset
from swipr_core.errors import SwiprError
from swipr_core.lr_find import find_lr
from swipr_core.model import ModelSpec
from swipr_core.training import TrainConfig

LR_ATTR = "lr"               # trial user attr: the lr it trained with, the finder's times its factor
FINDER_LR_ATTR = "finder_lr"   # trial user attr: the finder's suggestion that was
NUM_IT = 100                 # batches per range test, as `swipr lr-find` runs it by default
PLACEHOLDER_LR = 1e-3        # a TrainConfig needs one; the range test sets its own


class StudyFinder:
    """The range tests of one study's trials: looked up on the study, run when missing."""

    def __init__(self, dataset: Dataset, model_spec: ModelSpec, *, device: str = "auto", precision: str = "auto",
                 compile: str = "auto", seed: int = 0, num_it: int = NUM_IT):
        self.dataset, self.model_spec = dataset, model_spec
        self.device, self.precision, self.compile = device, precision, compile
        self.seed, self.num_it = seed, num_it

    def lr(self, trial: optuna.Trial, spec: FinderLR, values: dict) -> float:
        """The trial's lr: `values` holds its freeze, batch size and image size, and its factor as lr."""
        record = self.finding(trial.study, values["freeze"], values["batch_size"], values["image_size"])
        base = record["suggestions"].get(spec.finder)
        if base is None:
            why = record.get("unreadable", {}).get(spec.finder, "not read")
            raise SwiprError(f"the range test for {values['freeze']}, batch size {values['batch_size']}, "
                             f"{values['image_size']} px gives no '{spec.finder}' suggestion ({why}); choose "
                             f"another [space] lr finder")
        lr = base * values["lr"]
        trial.set_user_attr(FINDER_LR_ATTR, base)
        trial.set_user_attr(LR_ATTR, lr)
        return lr

    def finding(self, study: optuna.Study, freeze: str, batch_size: int, image_size: int) -> dict:
        """The study's record for the combination, after running the range test if it has none."""
        attr = finding_attr(freeze, batch_size, image_size)
        record = study.user_attrs.get(attr)
        if isinstance(record, dict) and record.get("data_fingerprint") == self.dataset.fingerprint:
            return record
        config = TrainConfig(lr=PLACEHOLDER_LR, batch_size=batch_size, image_size=image_size, freeze=freeze,
                             n_cycles=1, cycle_len=1, cycle_mult=1, seed=self.seed)
        finding = find_lr(self.dataset, config, self.model_spec, device=self.device, precision=self.precision,
                          compile=self.compile, num_it=self.num_it)
        record_finding(study, finding, self.num_it, self.dataset.fingerprint, None)
        return study.user_attrs[attr]
