"""The Optuna study: storage, sampler and pruner factories, heartbeats and retries, the data
record, the warm start and learning from earlier studies. (Optuna's private API is used only in objectives/optuna_compat.py.)"""

# The public surface: the modules other packages use; the rest are this package's own.
__all__ = ["data_record", "guarded", "learn_from", "open", "orphans", "pruners", "samplers", "schedule_record", "space_record",
           "storage", "warm_start"]
