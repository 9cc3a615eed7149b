"""The search: Optuna studies of fine-tuning runs, driven from the `swipr` command line.

studyfile/  the study file, read once into typed sections
study/      the Optuna study: storage, sampler, pruner, data record, warm start, space record
running/    `study run`: the driver, one worker's loop, trial processes, the stop flag, failures
views/      what a person sees: progress, pictures and notes, the dashboard, the HTML report
fit/        `swipr fit`: replay a trial, write its bundle, link it to the study
cli.py      the command line; commands/ holds one module per command

search/ imports objectives/ and swipr_core/, never the other way (tests/test_layout.py).
"""

# The public surface: the modules other packages use; the rest are this package's own.
__all__ = ["cli"]
