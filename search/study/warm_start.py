"""The notebook's pipeline, as it ran, as a new study's first trial (the warm start).

The notebook trained stage 1, then continued from its weights in stage 2 (a larger size, the
body frozen); its validation loss of 0.365 is stage 2's end. So the warm start is ONE trial,
named NOTEBOOK: stage 1 with the notebook's run 1, stage 2 ([space.stage2], params
`stage2_<key>`) with its run 2. Each value is enqueued only where the space offers it; the
others are the sampler's (or, for a key [space.stage2] leaves out, stage 1's). A space without
[space.stage2] runs stage 1 only, and the warm start says so.

Studies warm-started before stages have two trials, "notebook run 1" and "notebook run 2" (the
latter run alone from the starting weights, which the notebook never did); search.views.gains
still reads them.
"""
from __future__ import annotations

import optuna

from objectives.space import (
    STAGE2,
    budget_key,
    conditional,
    cycle_budget,
    drawn,
    has_stage2,
    in_space,
    stage2_name,
    stage_space,
)
from objectives.trial_attrs import user_attrs_for
from search.study.schedule_record import n_cycles_mode
from search.studyfile import StudyFile

# user attr of the warm-start trial: its name (NOTEBOOK; older studies: OLD_RUNS); the
# end-of-run summary, `swipr study best` and the report compare the best trial with it.
WARM_START_ATTR = "warm_start"
# ... which of the notebook's params it kept, which the space made the sampler choose (stage 2's
# named stage2_<key>), and how many of the notebook's stages it runs
KEPT_ATTR, CHANGED_ATTR, STAGES_RUN_ATTR = "warm_start_kept", "warm_start_changed", "warm_start_stages"
NOTEBOOK = "notebook"
OLD_RUNS = ("notebook run 1", "notebook run 2")   # the two trials of a warm start before stages

# Stage 1: learn.fit(1e-4, 3, cycle_len=1, cycle_mult=2) unfrozen at 224 px; stage 2, from its
# weights: learn.set_data(get_data(229, bs)); learn.freeze(); learn.fit(1e-3, 3, cycle_len=1, cycle_mult=2).
NOTEBOOK_STAGE1 = {"lr": 1e-4, "batch_size": 24, "image_size": 224, "freeze": "unfrozen",
                   "n_cycles": 3, "cycle_len": 1, "cycle_mult": 2}
NOTEBOOK_STAGE2 = {"lr": 1e-3, "batch_size": 24, "image_size": 229, "freeze": "frozen",
                   "n_cycles": 3, "cycle_len": 1, "cycle_mult": 2}


def stage2_space(study_file: StudyFile) -> dict | None:
    """The study's [space.stage2] under its plain keys (None: the space has one stage)."""
    return stage_space(study_file.space, 2) if has_stage2(study_file.space) else None


def notebook_fit(config: dict, space: dict) -> tuple[dict, dict]:
    """(the notebook's values this space can run, the notebook's values it can't)."""
    kept = {name: value for name, value in config.items() if name in space and in_space(space[name], value)}
    return kept, {name: value for name, value in config.items() if name not in kept}


def stage2_fit(space2: dict, kept1: dict) -> tuple[dict, dict]:
    """notebook_fit for stage 2, named stage2_<key>: a key [space.stage2] leaves out runs stage 1's
    value, which is the notebook's where stage 1 kept that very value."""
    kept: dict = {}
    changed: dict = {}
    for key, value in NOTEBOOK_STAGE2.items():
        fits = in_space(space2[key], value) if key in space2 else kept1.get(key) == value
        (kept if fits else changed)[stage2_name(key)] = value
    return kept, changed


def _values_text(values: dict) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def warm_start_text(kept: dict, changed: dict, space2: dict | None, budget: tuple[str, int] | None = None) -> str:
    """What the notebook trial kept of the notebook's two stages, in one line; `budget` the
    n_cycles param that is the trial's budget, and the cycles it plans."""
    text = f"{NOTEBOOK} keeps the notebook's {_values_text(kept)}"
    planned = budget[0] if budget is not None and budget[0] in changed else None
    picked = [name for name in changed if name != planned and (not name.startswith(STAGE2) or space2 is None
                                                               or name.removeprefix(STAGE2) in space2)]
    inherited = [name.removeprefix(STAGE2) for name in changed if name != planned and name not in picked]
    if picked:
        text += f"; the space changed {', '.join(picked)} (the sampler picks them)"
    if budget is not None and planned:
        text += f"; {planned} is the trial's budget: it plans {budget[1]} cycles"
    if inherited:
        text += (f"; stage 2 runs stage 1's {', '.join(inherited)} ([space.stage2] leaves "
                 f"{'it' if len(inherited) == 1 else 'them'} out)")
    if space2 is None:
        text += (f"; stage 1 only: the space has no [space.stage2], so the notebook's stage 2 from stage 1's "
                 f"weights ({_values_text(NOTEBOOK_STAGE2)}) does not run")
    return text


def _enqueued(values: dict, study: optuna.Study, study_file: StudyFile) -> dict:
    """Of the notebook's kept values, those a trial draws as params: with n_cycles as the budget,
    the last stage's cycle count is planned, not drawn (objectives.space.cycle_budget)."""
    mode = n_cycles_mode(study, study_file)
    params = {**drawn(study_file.space, mode), **conditional(study_file.space, mode)}
    return {name: value for name, value in values.items() if name in params}


def enqueue_warm_start(study: optuna.Study, study_file: StudyFile) -> list[str]:
    """Enqueue the notebook's pipeline as a new study's first trial; return the line that says
    what it kept of the notebook.

    Params outside this study's space are left for the sampler to choose, so a small demo space
    still starts from the notebook's learning rates and schedules. If none of the notebook's
    values fit, nothing is enqueued: a trial named after it would be the sampler's.
    """
    if not study_file.study.warm_start or study.trials:
        return []
    space2 = stage2_space(study_file)
    kept, changed = notebook_fit(NOTEBOOK_STAGE1, stage_space(study_file.space, 1))
    if space2 is not None:
        kept2, changed2 = stage2_fit(space2, kept)
        kept, changed = {**kept, **kept2}, {**changed, **changed2}
    if not kept:
        return [f"warm start: {NOTEBOOK} skipped: none of its values ({', '.join(changed)}) is in the space"]
    # as Study.enqueue_trial does, with what it kept beside the trial's other attributes (trial_attrs)
    shown, hidden = user_attrs_for({WARM_START_ATTR: NOTEBOOK, KEPT_ATTR: sorted(kept), CHANGED_ATTR: sorted(changed),
                                    STAGES_RUN_ATTR: 1 if space2 is None else 2})
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, user_attrs=shown,
                                              system_attrs={"fixed_params": _enqueued(kept, study, study_file),
                                                            **hidden}))
    offered = cycle_budget(study_file.space, n_cycles_mode(study, study_file))
    budget = (budget_key(study_file.space), offered[-1]) if offered is not None else None
    return [f"warm start: {warm_start_text(kept, changed, space2, budget)}"]
