"""One trial: an Optuna trial turned into one fine-tuning run, reported epoch by epoch.

trial.py composes it, read top to bottom: resume.py (checkpoints, retries) -> oom.py (the
GPU-memory policy) -> finetune.py (the run); space.py draws the params. optuna_compat.py holds
every use of Optuna's private API. Imports only swipr_core/ below it.
"""

# The public surface: the modules other packages use; the rest are this package's own.
__all__ = ["judging", "lr_finder", "lr_record", "oom", "optuna_compat", "pausing", "record", "resume", "space", "trial",
           "trial_attrs"]
