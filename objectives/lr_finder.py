"""The [space] lr finder: `lr = { finder = "valley", factor = ... }` trains a trial at the range
test's suggestion for its freeze, batch size and image size, times its `lr_factor`.

The range test (swipr_core.train.lr_find, as `swipr lr-find` runs it) is run once per combination, by
the first trial that needs it, and kept on the study as a version of that combination
(objectives.lr_record); every later trial reads the combination's current version, which only
`swipr lr-find --use` changes once trials have used it. A version made on other data (another
fingerprint) is run again, as a new version. Each trial records the finding it trained with
(FINDING_ATTR: combination, version, suggestion, factor, lr) and the lr itself (LR_ATTR), so
`swipr fit` replays it exactly whatever the study's findings say later; a retry trains with its
original's finding.

A finding that can't give a trial an lr (an lr of 1 or more, a malformed record, no such
suggestion on the curve) fails that trial, with the reason as its fail_reason; the run goes on.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import optuna

from objectives.lr_record import FINDER_LR_ATTR, FINDING_ATTR, LR_ATTR, add_finding, current_version, finding_key, new_record, stored_finding
from objectives.space import FinderLR
from objectives.trial_attrs import RETRY_OF_ATTR, attrs_of, set_attr
from swipr_core.data.dataset import Dataset
from swipr_core.train.lr_find import NUM_IT, find_lr
from swipr_core.train.lr_finding import LRFinding
from swipr_core.train.model import ModelSpec
from swipr_core.train.schedule import TrainConfig

PLACEHOLDER_LR = 1e-3        # a TrainConfig needs one; the range test sets its own


class FindingUnusable(RuntimeError):
    """The study's finding can't give this trial an lr: the trial fails, the run goes on (a
    SwiprError would be bad input and stop the whole run)."""


class StudyFinder:
    """The range tests of one study's trials: looked up on the study, run when missing.
    `on_range_test(study, finding, record)`, where set, is called after each test it runs."""

    def __init__(self, dataset: Dataset, model_spec: ModelSpec, *, device: str = "auto", precision: str = "auto",
                 compile: str = "auto", seed: int = 0, num_it: int = NUM_IT, head_epochs: int = 1):
        self.dataset, self.model_spec = dataset, model_spec
        self.device, self.precision, self.compile = device, precision, compile
        self.seed, self.num_it, self.head_epochs = seed, num_it, head_epochs
        self.on_range_test: Callable[[optuna.Study, LRFinding, dict], None] | None = None

    def lr(self, trial: optuna.Trial, spec: FinderLR, values: dict) -> float:
        """The trial's lr: `values` holds its freeze, batch size and image size, and its factor as
        lr. Records FINDING_ATTR, FINDER_LR_ATTR and LR_ATTR on the trial; FindingUnusable (with
        the trial's fail_reason set) where the finding gives no lr below 1."""
        factor = values["lr"]
        try:
            record = self._retried_finding(trial, values) or self.finding(
                trial.study, values["freeze"], values["batch_size"], values["image_size"], trial=trial.number,
                finder=spec.finder)
            base = record["suggestions"].get(spec.finder)
            where = f"range test {record['key']} v{record['version']}"
            if base is None:
                why = record.get("unreadable", {}).get(spec.finder, "not read")
                raise FindingUnusable(f"{where} gives no '{spec.finder}' suggestion ({why}); choose another "
                                      f"[space] lr finder")
            lr = base * factor
            if not (math.isfinite(lr) and 0 < lr < 1):
                raise FindingUnusable(f"{where}: {spec.finder} {base:.3g} x lr_factor {factor:.3g} is lr {lr:.3g}, "
                                      f"and an lr must be between 0 and 1; lower [space] lr factor's high")
        except FindingUnusable as error:
            set_attr(trial, "fail_reason", f"{type(error).__name__}: {error}")
            raise
        set_attr(trial, FINDER_LR_ATTR, base)
        set_attr(trial, LR_ATTR, lr)
        set_attr(trial, FINDING_ATTR, {"key": record["key"], "version": record["version"], "finder": spec.finder,
                                           "suggestion": base, "factor": factor, "lr": lr})
        return lr

    def key(self, values: dict) -> str:
        return finding_key(values["freeze"], values["batch_size"], values["image_size"], self.head_epochs)

    def _retried_finding(self, trial: optuna.Trial, values: dict) -> dict | None:
        """A retry's original's finding, where it had one of this combination: the retry resumes
        its run, so it must train at the same lr whatever the study's current version is now."""
        retried = attrs_of(trial).get(RETRY_OF_ATTR)
        if retried is None:
            return None
        original = next((t for t in trial.study.get_trials(deepcopy=False) if t.number == retried), None)
        used = attrs_of(original).get(FINDING_ATTR) if original is not None else None
        if not isinstance(used, dict) or used.get("key") != self.key(values) or not isinstance(used.get("version"), int):
            return None
        record, why = stored_finding(trial.study, used["key"], used["version"])
        if record is None:
            raise FindingUnusable(f"trial {retried}'s finding: {why}")
        return record

    def finding(self, study: optuna.Study, freeze: str, batch_size: int, image_size: int,
                trial: int | None = None, finder: str = "valley") -> dict:
        """The combination's current version on the study, after running the range test (by
        trial number `trial`) if it has none, or only one made on other data; a test it runs
        prints one line, with the `finder` suggestion."""
        key = finding_key(freeze, batch_size, image_size, self.head_epochs)
        version = current_version(study, key)
        if version is not None:
            record, why = stored_finding(study, key, version)
            if record is None:
                raise FindingUnusable(f"{why}; `swipr lr-find STUDY.toml --use` for this combination stores a "
                                      f"new one and makes the search use it")
            if record.get("data_fingerprint") == self.dataset.fingerprint:
                return record
        config = TrainConfig(lr=PLACEHOLDER_LR, batch_size=batch_size, image_size=image_size, freeze=freeze,
                             n_cycles=1, cycle_len=1, cycle_mult=1, seed=self.seed, head_epochs=self.head_epochs)
        found = find_lr(self.dataset, config, self.model_spec, device=self.device, precision=self.precision,
                        compile=self.compile, num_it=self.num_it)
        version = add_finding(study, new_record(found, self.num_it, self.dataset.fingerprint, None, "search", trial))
        record, why = stored_finding(study, key, version)
        if record is None:   # it was just written: only a storage that changes what it keeps gets here
            raise FindingUnusable(why)
        print(range_test_line(record, finder), flush=True)
        if self.on_range_test is not None:
            self.on_range_test(study, found, record)
        return record


def range_test_line(record: dict, finder: str = "valley") -> str:
    """One line for a range test the search ran: combination, suggestion, seconds, epochs-equivalent."""
    cost, suggestions = record.get("cost") or {}, record.get("suggestions") or {}
    read = f"{finder} {suggestions[finder]:.1e}" if finder in suggestions else f"no {finder} suggestion"
    by = f"trial {cost['trial']}: " if cost.get("trial") is not None else ""
    return (f"{by}range test {record['key']} v{record['version']}: {read}, {cost.get('seconds', 0):.1f} s "
            f"≈ {cost.get('epochs_equivalent', 0):.1f} epochs ({record['num_it']} batches)")


def versions_used(study: optuna.Study, key: str) -> dict[int, list[int]]:
    """{version: numbers of the trials that trained with it} for combination `key`. A trial of an
    older study (a finder_lr, no FINDING_ATTR) used the only version its combination had: 1."""
    used: dict[int, list[int]] = {}
    for trial in study.get_trials(deepcopy=False):
        finding = attrs_of(trial).get(FINDING_ATTR)
        if isinstance(finding, dict):
            if finding.get("key") == key and isinstance(finding.get("version"), int):
                used.setdefault(finding["version"], []).append(trial.number)
        elif FINDER_LR_ATTR in attrs_of(trial):
            params = trial.params
            if key == f"{params.get('freeze')}:bs{params.get('batch_size')}:px{params.get('image_size')}":
                used.setdefault(1, []).append(trial.number)
    return used
