"""The Optuna study: storage, sampler and pruner factories, heartbeats and retries, the data
record and the warm start. (Optuna's private API is used only in objectives/optuna_compat.py.)"""
