"""[study] learn_from: a new study starts from what earlier studies (of older data) learned.

When the new study starts, right after the notebook trial (search.study.warm_start), it enqueues
the `learn_from_top` best distinct configurations of the earlier studies that fit its own space:
a value outside it is moved to the nearest value the space allows, a configuration with a value
that has no nearest one (a choice the space dropped) is skipped. Each enqueued trial names the
study, trial and old values it came from (LEARNED_ATTR, RANK_ATTR, OLD_VALUES_ATTR).

With TPE and `learn_from_sampler` (the default), every finished trial of the earlier studies is
also stored on the new study (its params, fitted to the space the same way, and its rank in its
own study: its value belongs to other data), for search.study.samplers.LearningSeededByTrial to
show TPE as extra observations that fade as the study's own trials finish. None of them is ever
one of the new study's trials: its trials, best, status, importances and "vs notebook" are its own.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.optuna_compat import set_study_system_attr, study_system_attrs
from objectives.space import Choices, FinderLR, Range, conditional, drawn, in_space, param_name
from objectives.trial_attrs import RETRY_OF_ATTR, attrs_of, user_attrs_for
from search.study.open import open_study
from search.study.samplers import LEARNED_SYSTEM_ATTR
from search.study.schedule_record import n_cycles_mode
from search.studyfile.url_text import redact
from search.study.warm_start import WARM_START_ATTR
from search.studyfile import StudyFile, load_study_file
from swipr_core.errors import SwiprError

# trial attrs of an enqueued earlier configuration: "<study> trial <n>", its rank there (1 = best),
# and {param: the earlier value} for each value moved into this study's space
LEARNED_ATTR, RANK_ATTR, OLD_VALUES_ATTR = "learned_from", "learned_from_rank", "learned_from_values"
# A plain learning rate belongs to its model: from a study of another arch only the rest is shared
# (a finder's lr_factor is relative to the model's own range test, so it is shared too).
ARCH_BOUND = frozenset({"lr", "stage2_lr"})


@dataclass(frozen=True)
class Earlier:
    """An earlier study as a new one learns from it: its finished trials, best first."""
    file: StudyFile
    trials: list[FrozenTrial]
    shared_only: bool        # another [model] arch: its arch-bound params are left out

    @property
    def name(self) -> str:
        return self.file.study.name

    def params(self, trial: FrozenTrial) -> dict:
        return {k: v for k, v in trial.params.items() if not (self.shared_only and k in ARCH_BOUND)}


def read_earlier(study_file: StudyFile) -> tuple[list[Earlier], list[str]]:
    """The studies [study] learn_from names, opened read-only (a running one: what has finished),
    and the lines to print; a study that can't be opened, or has no finished trial, is refused."""
    earlier, lines = [], []
    for path in study_file.study.learn_from:
        where = f"{study_file.where('study')} learn_from: {path.name}"
        other = load_study_file(path)
        try:
            old = open_study(other, create=False, read_only=True)
        except SwiprError as error:
            raise SwiprError(f"{where}: {error}") from None
        finished = sorted((t for t in old.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                           if t.value is not None and math.isfinite(t.value)), key=_value)
        if not finished:
            raise SwiprError(f"{where}: study '{other.study.name}' has no finished trials to learn from")
        shared_only = other.model.arch != study_file.model.arch
        if shared_only:
            lines.append(f"warning: {where}: [model] arch {other.model.arch} is not this study's "
                         f"{study_file.model.arch}: only the params both share are used (not {', '.join(sorted(ARCH_BOUND))})")
        earlier.append(Earlier(other, finished, shared_only))
    return earlier, lines


def _value(trial: FrozenTrial) -> float:
    return trial.value if trial.value is not None else math.inf


def space_params(study: optuna.Study, study_file: StudyFile) -> dict[str, Range | Choices]:
    """The study's params (as Optuna names them) and what each may take."""
    mode = n_cycles_mode(study, study_file)
    specs = {**drawn(study_file.space, mode), **conditional(study_file.space, mode)}
    return {param_name(name, spec): (spec.factor if isinstance(spec, FinderLR) else spec) for name, spec in specs.items()}


def nearest(spec: Range | Choices, value):
    """`value` if the space allows it, else the nearest value it allows, else None."""
    if in_space(spec, value):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(spec, Choices):
        numbers = [c for c in spec.values if isinstance(c, (int, float)) and not isinstance(c, bool)]
        # by ratio where both are positive (a learning rate's 1e-3 is nearer 3e-3 than 3e-2)
        far = (lambda c: abs(math.log(c / value))) if value > 0 and all(c > 0 for c in numbers) else (lambda c: abs(c - value))
        return min(numbers, key=far) if numbers else None
    moved = min(max(value, spec.low), spec.high)
    if spec.step:
        moved = min(spec.low + round((moved - spec.low) / spec.step) * spec.step, spec.high)
    return int(round(moved)) if spec.is_int else float(moved)


def fit(params: dict, specs: dict) -> tuple[dict, dict, list[str]]:
    """(the values for this space, {param: old value} of those moved, params with no nearest value)."""
    fixed, moved, unfit = {}, {}, []
    for name, value in params.items():
        if name not in specs:
            continue   # not searched here (or planned: n_cycles as a budget)
        placed = nearest(specs[name], value)
        if placed is None:
            unfit.append(name)
            continue
        fixed[name] = placed
        if placed != value:
            moved[name] = value
    return fixed, moved, unfit


def learn_from_earlier(study: optuna.Study, study_file: StudyFile, earlier: list[Earlier]) -> list[str]:
    """Enqueue the earlier studies' best configurations and store their trials for the sampler,
    once, as the study starts (only the warm start queued before it); return the lines to print."""
    if not earlier or LEARNED_SYSTEM_ATTR in study_system_attrs(study):
        return []
    if any(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False)):
        return []   # the study has trials beyond its queue: its own trials lead it already
    specs = space_params(study, study_file)
    counts, enqueued = _enqueue_best(study, earlier, specs, study_file.study.learn_from_top,
                                     notebook=study_file.study.warm_start)
    sampler = study_file.study.learn_from_sampler and study_file.study.sampler == "tpe"
    observations = _observations(earlier, specs) if sampler else []
    set_study_system_attr(study, LEARNED_SYSTEM_ATTR, {
        "studies": [{"name": e.name, "file": str(e.file.path), "storage": redact(e.file.study.storage),
                     "finished": len(e.trials), "shared_only": e.shared_only} for e in earlier],
        "enqueued": enqueued, **counts, "observations": observations})
    names = ", ".join(f"'{e.name}' ({len(e.trials)} finished)" for e in earlier)
    lines = [f"learn_from: {names}: enqueued {len(enqueued)} of their best configurations "
             f"({counts['fit']} fit the space, {counts['adapted']} moved to its nearest values, "
             f"{counts['skipped']} skipped: {counts['skipped_unfit']} with a value it has no place for, "
             f"{counts['skipped'] - counts['skipped_unfit']} the same as one before or the notebook's)"]
    if sampler:
        lines.append(f"learn_from: TPE also sees their {len(observations)} finished trials by rank, one fewer "
                     f"for each trial of this study that finishes")
    return lines


def _enqueue_best(study: optuna.Study, earlier: list[Earlier], specs: dict, top: int,
                  notebook: bool) -> tuple[dict, list[dict]]:
    """Enqueue up to `top` distinct configurations, best rank first across the studies; with
    `notebook` (this study's warm start) an earlier notebook trial is the same as its own."""
    ranked = sorted(((rank, i, trial) for i, e in enumerate(earlier) for rank, trial in enumerate(e.trials)),
                    key=lambda item: (item[0], item[1]))
    counts = {"fit": 0, "adapted": 0, "skipped": 0, "skipped_unfit": 0}
    enqueued: list[dict] = []
    seen: list[dict] = [t.system_attrs.get("fixed_params", {}) for t in study.get_trials(deepcopy=False)]
    for rank, i, trial in ranked:
        if len(enqueued) >= top:
            break
        source = earlier[i]
        fixed, moved, unfit = fit(source.params(trial), specs)
        if unfit or not fixed or fixed in seen or (notebook and WARM_START_ATTR in attrs_of(trial)):
            counts["skipped"] += 1
            counts["skipped_unfit"] += bool(unfit or not fixed)
            continue
        seen.append(fixed)
        counts["adapted" if moved else "fit"] += 1
        shown, hidden = user_attrs_for({LEARNED_ATTR: f"{source.name} trial {trial.number}", RANK_ATTR: rank + 1,
                                        OLD_VALUES_ATTR: moved})
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs=shown,
                                                  system_attrs={"fixed_params": fixed, **hidden}))
        enqueued.append({"study": source.name, "trial": trial.number, "rank": rank + 1,
                         "number": study.get_trials(deepcopy=False)[-1].number})
    return counts, enqueued


def _observations(earlier: list[Earlier], specs: dict) -> list[dict]:
    """Each earlier finished trial's params fitted to the space (a value with no place dropped)
    and its rank quantile in its own study (0 = its best, 1 = its worst), in the order the
    sampler drops them: a fixed shuffle, so the ones left still span the ranks."""
    found = []
    for e in earlier:
        for rank, trial in enumerate(e.trials):
            fixed, _, _ = fit(e.params(trial), specs)
            if fixed:
                found.append({"study": e.name, "trial": trial.number, "params": fixed,
                              "q": rank / (len(e.trials) - 1) if len(e.trials) > 1 else 0.0})
    return sorted(found, key=lambda o: hashlib.sha256(f"{o['study']}:{o['trial']}".encode()).hexdigest())


def learned_from_rows(study: optuna.Study) -> list[tuple[str, str]]:
    """The report's and `swipr study best`'s "learned from" row: which studies, how many of their
    trials were used, and how the configurations enqueued from them did in this study."""
    record = study_system_attrs(study).get(LEARNED_SYSTEM_ATTR)
    if not record:
        return []
    studies = ", ".join(f"'{s['name']}' ({s['finished']} finished{', shared params only' if s['shared_only'] else ''})"
                        for s in record["studies"])
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    done = [_how_it_did(_last(trials, e["number"]), e) for e in record["enqueued"]]
    text = f"{studies}: {len(record['enqueued'])} best configurations enqueued"
    text += f" ({'; '.join(done)})" if done else ""
    if record.get("observations"):
        text += f"; TPE saw {len(record['observations'])} earlier trials by rank (never counted as results)"
    return [("learned from", text)]


def _last(trials: dict[int, FrozenTrial], number: int) -> FrozenTrial | None:
    """The trial `number`, or the retry that ran it last: a retried trial's result is its retry's
    (objectives.resume gives a retry the attr RETRY_OF_ATTR)."""
    retry = {attrs_of(t).get(RETRY_OF_ATTR): t for t in trials.values() if attrs_of(t).get(RETRY_OF_ATTR) is not None}
    trial = trials.get(number)
    while trial is not None and trial.number in retry and retry[trial.number].number > trial.number:
        trial = retry[trial.number]
    return trial


def _how_it_did(trial: FrozenTrial | None, entry: dict) -> str:
    where = f"trial {entry['number']} from {entry['study']} trial {entry['trial']} (rank {entry['rank']})"
    if trial is None:
        return f"{where}: gone"
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        moved = attrs_of(trial).get(OLD_VALUES_ATTR)
        return f"{where}: val_loss {trial.value:.4f}" + (f", moved {', '.join(sorted(moved))}" if moved else "")
    return f"{where}: {trial.state.name.lower()}"
