"""From a pics database to a trained, exported model, in three layers that import downward only:
data (labels, split, image cache, loaders), train (model, schedule, runs, range tests, metrics)
and serve (bundle, export, predict). No Optuna here: the search is built on top of it."""

# The public surface: the sub-packages, and the one error type every layer raises.
__all__ = ["data", "errors", "serve", "train"]
