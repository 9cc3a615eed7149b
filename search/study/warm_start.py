"""The notebook's hand-tuned runs as a new study's first trials."""
from __future__ import annotations

import optuna

from objectives.space import drawn, in_space
from search.study.schedule_record import n_cycles_mode
from search.studyfile import StudyFile

# user attr of a warm-start trial: which notebook run it is ("notebook run 1", ...); the
# end-of-run summary and `swipr study best` compare the best trial with these.
WARM_START_ATTR = "warm_start"
# ... and which of the notebook run's params it kept, which the space made the sampler choose
KEPT_ATTR, CHANGED_ATTR = "warm_start_kept", "warm_start_changed"

# The notebook's two runs: fit(1e-4, 3, cycle_len=1, cycle_mult=2) at 224 px, then
# fit(1e-3, 3, ...) frozen at 229 px.
NOTEBOOK_CONFIGS = (
    {"lr": 1e-4, "batch_size": 24, "image_size": 224, "freeze": "unfrozen",
     "n_cycles": 3, "cycle_len": 1, "cycle_mult": 2},
    {"lr": 1e-3, "batch_size": 24, "image_size": 229, "freeze": "frozen",
     "n_cycles": 3, "cycle_len": 1, "cycle_mult": 2},
)


def notebook_fit(config: dict, space: dict) -> tuple[dict, dict]:
    """(the notebook's values this space can run, the notebook's values it can't)."""
    kept = {name: value for name, value in config.items() if name in space and in_space(space[name], value)}
    return kept, {name: value for name, value in config.items() if name not in kept}


def warm_start_text(name: str, kept: dict, changed: dict) -> str:
    """How a warm-start trial relates to the notebook run it is named after, in one line."""
    kept_text = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kept.items())
    text = f"{name} keeps the notebook's {kept_text}"
    if changed:
        text += f"; the space changed {', '.join(changed)} (the sampler picks them)"
    return text


def enqueue_warm_start(study: optuna.Study, study_file: StudyFile) -> list[str]:
    """Enqueue the notebook's configurations as a new study's first trials; return lines that
    say what each one kept of the notebook's run.

    Params outside this study's space are left for the sampler to choose, so a small
    demo space still starts from the notebook's learning rate and schedule. A run none of
    whose values fit is not enqueued: a trial named after it would be the sampler's.
    """
    if not study_file.study.warm_start or study.trials:
        return []
    # The notebook's values as this space runs them: with n_cycles as a budget, the notebook's
    # cycle count is kept when the space offers it, but it is planned, not enqueued as a param.
    space = drawn(study_file.space, n_cycles_mode(study, study_file))
    lines = []
    for number, config in enumerate(NOTEBOOK_CONFIGS, start=1):
        name = f"notebook run {number}"
        kept, changed = notebook_fit(config, study_file.space)
        if not kept:
            lines.append(f"warm start: {name} skipped: none of its values ({', '.join(changed)}) is in [space]")
            continue
        params = {key: value for key, value in kept.items() if key in space}
        study.enqueue_trial(params, user_attrs={WARM_START_ATTR: name, KEPT_ATTR: sorted(kept),
                                                CHANGED_ATTR: sorted(changed)}, skip_if_exists=True)
        lines.append(f"warm start: {warm_start_text(name, kept, changed)}")
    return lines
