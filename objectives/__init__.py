"""One trial: an Optuna trial turned into one fine-tuning run, reported epoch by epoch.

trial.py composes it, read top to bottom: resume.py (checkpoints, retries) -> oom.py (the
GPU-memory policy) -> finetune.py (the run); space.py draws the params. optuna_compat.py holds
every use of Optuna's private API. Imports only swipr_core/ below it.
"""
