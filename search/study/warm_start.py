"""The notebook's hand-tuned runs as a new study's first trials."""
from __future__ import annotations

import optuna

from objectives.space import drawn, in_space
from search.study.schedule_record import n_cycles_mode
from search.studyfile import StudyFile

# user attr of a warm-start trial: which notebook run it is ("notebook run 1", ...); the
# end-of-run summary and `swipr study best` compare the best trial with these.
WARM_START_ATTR = "warm_start"

# The notebook's two runs: fit(1e-4, 3, cycle_len=1, cycle_mult=2) at 224 px, then
# fit(1e-3, 3, ...) frozen at 229 px.
NOTEBOOK_CONFIGS = (
    {"lr": 1e-4, "batch_size": 24, "image_size": 224, "freeze": "unfrozen",
     "n_cycles": 3, "cycle_len": 1, "cycle_mult": 2},
    {"lr": 1e-3, "batch_size": 24, "image_size": 229, "freeze": "frozen",
     "n_cycles": 3, "cycle_len": 1, "cycle_mult": 2},
)


def enqueue_warm_start(study: optuna.Study, study_file: StudyFile) -> int:
    """Enqueue the notebook's configurations as a new study's first trials; return how many.

    Params outside this study's space are left for the sampler to choose, so a small
    demo space still starts from the notebook's learning rate and schedule.
    """
    if not study_file.study.warm_start or study.trials:
        return 0
    space = drawn(study_file.space, n_cycles_mode(study, study_file))   # n_cycles as a budget is no param
    for number, config in enumerate(NOTEBOOK_CONFIGS, start=1):
        params = {name: value for name, value in config.items() if name in space and in_space(space[name], value)}
        study.enqueue_trial(params, user_attrs={WARM_START_ATTR: f"notebook run {number}"}, skip_if_exists=True)
    return len(NOTEBOOK_CONFIGS)
